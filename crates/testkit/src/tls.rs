//! A private certificate authority made with `openssl`, for TLS-only throwaway servers.

use crate::system::run;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA key and certificate in a temporary directory, able to sign server certificates for
/// `127.0.0.1` and `localhost`.
pub struct Authority {
    dir: tempfile::TempDir,
}

impl Authority {
    /// A fresh CA (RSA 2048, valid two days) named `name`.
    pub fn new(name: &str) -> Authority {
        let dir = tempfile::Builder::new()
            .prefix("testkit-ca-")
            .tempdir()
            .unwrap();
        let authority = Authority { dir };
        run(
            Command::new("openssl").args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                authority.file("ca.key").to_str().unwrap(),
                "-out",
                authority.file("ca.pem").to_str().unwrap(),
            ]),
            "openssl req (CA)",
        );
        authority
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate (PEM): what a client trusts.
    pub fn certificate(&self) -> PathBuf {
        self.file("ca.pem")
    }

    /// Writes `server.crt` and `server.key` into `dir`: a certificate for `127.0.0.1` and
    /// `localhost` signed by this CA.
    pub fn issue_server_certificate(&self, dir: &Path) -> (PathBuf, PathBuf) {
        self.issue_certificate_for(dir, "IP:127.0.0.1,DNS:localhost")
    }

    /// Like [`Authority::issue_server_certificate`], for the subject alternative names `names`
    /// (`DNS:db.example,IP:10.0.0.1`).
    pub fn issue_certificate_for(&self, dir: &Path, names: &str) -> (PathBuf, PathBuf) {
        let (crt, key, csr) = (
            dir.join("server.crt"),
            dir.join("server.key"),
            dir.join("server.csr"),
        );
        let extensions = dir.join("server.ext");
        std::fs::write(&extensions, format!("subjectAltName={names}\n")).unwrap();
        run(
            Command::new("openssl").args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                csr.to_str().unwrap(),
            ]),
            "openssl req (server)",
        );
        run(
            Command::new("openssl").args([
                "x509",
                "-req",
                "-in",
                csr.to_str().unwrap(),
                "-CA",
                self.certificate().to_str().unwrap(),
                "-CAkey",
                self.file("ca.key").to_str().unwrap(),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                extensions.to_str().unwrap(),
                "-out",
                crt.to_str().unwrap(),
            ]),
            "openssl x509 (sign)",
        );
        (crt, key)
    }
}
