//! TLS to dependencies: rustls with the ring provider.
//!
//! Certificate checks follow libpq's `sslmode`; trusted authorities are the dependency's `CA_FILE`
//! (a PEM bundle, as RDS, Cloud SQL and Azure hand out), else the system roots.

use crate::config::{DatabaseSettings, SslMode};
use anyhow::Context;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::Path;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server's certificate is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Encrypt only (libpq `prefer` and `require` without a CA file): any certificate is taken.
    EncryptOnly,
    /// The chain up to a trusted authority, not the host name (libpq `verify-ca`).
    Chain,
    /// The chain and the host name (libpq `verify-full`).
    Full,
}

impl Verification {
    /// What `mode` verifies; a CA file given with `prefer` or `require` asks for full
    /// verification (a bundle nobody checks against would be a false sense of safety).
    ///
    /// ```
    /// use bootstrap::config::SslMode;
    /// use bootstrap::tls::Verification;
    /// assert_eq!(Verification::for_postgres(SslMode::Require, false), Verification::EncryptOnly);
    /// assert_eq!(Verification::for_postgres(SslMode::Require, true), Verification::Full);
    /// assert_eq!(Verification::for_postgres(SslMode::VerifyCa, true), Verification::Chain);
    /// ```
    pub fn for_postgres(mode: SslMode, has_ca_file: bool) -> Self {
        match mode {
            SslMode::VerifyFull => Self::Full,
            SslMode::VerifyCa => Self::Chain,
            SslMode::Disable | SslMode::Prefer | SslMode::Require if has_ca_file => Self::Full,
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Self::EncryptOnly,
        }
    }
}

/// The certificates of a PEM bundle; an error when the file is unreadable or holds none.
pub(crate) fn read_ca_file(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the PEM certificates of {}", path.display()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{} holds no PEM certificate",
        path.display()
    );
    Ok(certificates)
}

fn trust_anchors(ca_file: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(read_ca_file(path)?);
            anyhow::ensure!(
                added > 0,
                "{} holds no usable CA certificate",
                path.display()
            );
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if let Some(error) = found.errors.first() {
                tracing::debug!(%error, "some system certificates could not be read");
            }
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// A rustls client configuration trusting `ca_file` (or the system roots), per `verification`.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    verification: Verification,
) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?;
    let algorithms = provider.signature_verification_algorithms;
    let chain = match verification {
        Verification::EncryptOnly => None,
        Verification::Chain | Verification::Full => {
            let roots = Arc::new(trust_anchors(ca_file)?);
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider).build();
            Some(chain.context("building the certificate verifier")?)
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = match chain {
        Some(full) if verification == Verification::Full => full,
        chain => Arc::new(Relaxed { chain, algorithms }),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The PostgreSQL connection parameters and TLS connector of `settings`.
///
/// ```
/// let settings = bootstrap::config::DatabaseSettings::from_url(
///     "postgres://app@db.internal/app?sslmode=verify-full",
/// )?;
/// let (config, _tls) = bootstrap::tls::postgres(&settings)?;
/// assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn postgres(
    settings: &DatabaseSettings,
) -> anyhow::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    // `sslmode` is read here too, so settings that skipped `validate` cannot lose it.
    let mut settings = settings.clone();
    settings.take_ssl_mode()?;
    let mut config: tokio_postgres::Config = settings.url.expose().parse().map_err(|e| {
        anyhow::anyhow!(
            "APP__DATABASE__URL ({}) is not a PostgreSQL URL: {e}",
            settings.url
        )
    })?;
    let verification = Verification::for_postgres(settings.ssl_mode, settings.ca_file.is_some());
    config.ssl_mode(match (settings.ssl_mode, verification) {
        (SslMode::Disable, _) => tokio_postgres::config::SslMode::Disable,
        // A CA file asks for verification (not EncryptOnly), and `prefer` would fall back to
        // plain TCP when the server (or somebody in between) declines TLS: then TLS is required.
        (SslMode::Prefer, Verification::EncryptOnly) => tokio_postgres::config::SslMode::Prefer,
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull, _) => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let tls = client_config(settings.ca_file.as_deref(), verification)
        .context("APP__DATABASE__CA_FILE")?;
    Ok((config, MakeRustlsConnect::new(tls)))
}

/// What libpq's weaker modes check: with `chain`, the chain as [`WebPkiServerVerifier`] does
/// but any host name (`verify-ca`); without, any certificate (`prefer`, `require`). Either way
/// the handshake signatures are checked: the server holds the certificate's key.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
