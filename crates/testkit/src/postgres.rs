//! A throwaway PostgreSQL cluster on a free port, to kill, pause and restart at will.

use crate::net::{free_port, port_open, wait_until};
use crate::system::{command_as, give_to, kill, processes_using, run};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The newest installed PostgreSQL's binaries (Debian and Ubuntu keep one folder per major
/// version: 15 on Debian 12, 16 on GitHub's Ubuntu runner).
fn bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (Debian package postgresql)")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let major = path.file_name()?.to_str()?.parse().ok()?;
            let bin = path.join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

/// One PostgreSQL cluster in a temporary directory, owned by the `postgres` user.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    max_connections: u32,
}

/// A stock server's `max_connections`.
const STOCK_MAX_CONNECTIONS: u32 = 100;

impl Postgres {
    /// initdb + start (about 1.5 s).
    pub fn start() -> Postgres {
        Self::init(None, STOCK_MAX_CONNECTIONS)
    }

    /// A cluster that admits at most `max_connections` sessions (superusers included).
    pub fn start_with_max_connections(max_connections: u32) -> Postgres {
        Self::init(None, max_connections)
    }

    /// A cluster that accepts TCP connections only over TLS (`hostssl`; `hostnossl` is
    /// rejected), with a server certificate for 127.0.0.1 signed by `authority`.
    pub fn start_tls_only(authority: &crate::Authority) -> Postgres {
        Self::init(
            Some((authority, "IP:127.0.0.1,DNS:localhost")),
            STOCK_MAX_CONNECTIONS,
        )
    }

    /// Like [`Postgres::start_tls_only`], its certificate naming only `names` (a server whose
    /// certificate does not name the host the client dialled).
    pub fn start_tls_only_named(authority: &crate::Authority, names: &str) -> Postgres {
        Self::init(Some((authority, names)), STOCK_MAX_CONNECTIONS)
    }

    fn init(authority: Option<(&crate::Authority, &str)>, max_connections: u32) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("testkit-pg-")
            .tempdir()
            .unwrap();
        give_to("postgres", dir.path());
        let data = dir.path().join("data");
        run(
            command_as("postgres", bin().join("initdb").to_str().unwrap()).args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
            "initdb",
        );
        if let Some((authority, names)) = authority {
            let (crt, key) = authority.issue_certificate_for(dir.path(), names);
            std::fs::copy(crt, data.join("server.crt")).unwrap();
            std::fs::copy(key, data.join("server.key")).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
            )
            .unwrap();
            // PostgreSQL refuses a key others can read.
            run(
                std::process::Command::new("chmod")
                    .args(["600", data.join("server.key").to_str().unwrap()]),
                "chmod server.key",
            );
            give_to("postgres", dir.path());
        }
        let postgres = Postgres {
            dir,
            port: free_port(),
            tls: authority.is_some(),
            max_connections,
        };
        postgres.start_again();
        postgres
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL with psql; returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        psql(self.port, database, sql)
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let data = self.data();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections={} -c ssl={}",
            self.port,
            data.display(),
            self.max_connections,
            if self.tls { "on" } else { "off" },
        );
        run(
            command_as("postgres", bin().join("pg_ctl").to_str().unwrap()).args([
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "-l",
                data.join("log").to_str().unwrap(),
                "-o",
                &options,
                "start",
            ]),
            "pg_ctl start",
        );
        wait_until(
            "postgres accepting connections",
            Duration::from_secs(30),
            || port_open(self.port),
        );
    }

    /// `kill -9` of the postmaster; then waits for every backend to die and clears the stale
    /// lock files, so [`Postgres::start_again`] works.
    pub fn kill9(&self) {
        let data = self.data();
        if let Some(pid) = postmaster_pid(&data) {
            kill(pid, Signal::SIGKILL);
        }
        for pid in processes_using(&data) {
            kill(pid, Signal::SIGKILL);
        }
        wait_until("postgres processes gone", Duration::from_secs(30), || {
            processes_using(&data).is_empty()
        });
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        let _ = std::fs::remove_file(data.join(format!(".s.PGSQL.{}.lock", self.port)));
        let _ = std::fs::remove_file(data.join(format!(".s.PGSQL.{}", self.port)));
    }

    /// A clean, fast stop (`pg_ctl stop -m fast`).
    pub fn stop(&self) {
        let data = self.data();
        run(
            command_as("postgres", bin().join("pg_ctl").to_str().unwrap()).args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ]),
            "pg_ctl stop",
        );
    }

    /// Freezes every process of the cluster (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        for pid in processes_using(&self.data()) {
            kill(pid, Signal::SIGSTOP);
        }
    }

    /// Undoes [`Postgres::pause`].
    pub fn resume(&self) {
        for pid in processes_using(&self.data()) {
            kill(pid, Signal::SIGCONT);
        }
    }

    /// `xact_commit + xact_rollback` of `database`: every query a client ran there.
    pub fn transactions(&self, database: &str) -> i64 {
        self.psql("postgres", &format!("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{database}'"))
            .parse()
            .unwrap()
    }
}

/// Runs SQL with psql against the PostgreSQL on `127.0.0.1:port` as `postgres`; returns the
/// unaligned output. Panics with psql's message when the statement fails.
pub fn psql(port: u16, database: &str, sql: &str) -> String {
    let port = port.to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        database,
        "-XAtq",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ];
    run(std::process::Command::new("psql").args(args), "psql")
        .trim()
        .to_owned()
}

fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        for pid in processes_using(&data) {
            kill(pid, Signal::SIGCONT);
            kill(pid, Signal::SIGKILL);
        }
    }
}
