//! TLS on both listeners, with rustls (ring).
//!
//! - The certificate and key are read from files at start, and again on a handshake
//!   after either file changed (checked at most once a second), so a renewed
//!   certificate is served without a restart. A renewal that does not parse is logged
//!   and the previous certificate stays.
//! - Client certificates (mTLS) are asked for per listener: not at all, optionally (a
//!   client without one may still use a token), or required (the handshake fails
//!   without one). They must chain to `client_ca_file`; the names in a verified one (its
//!   subject CN, DNS and URI SANs) are what `auth.identities.*.certificates` match.
//! - A handshake must finish within the header read timeout; a peer that opens a
//!   socket and says nothing holds its slot no longer than a silent plain one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::auth::PeerCertificate;

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCerts {
    #[default]
    None,
    Optional,
    Required,
}

/// TLS settings for both listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub grpc_client_certs: ClientCerts,
    pub http_client_certs: ClientCerts,
}

/// What went wrong loading TLS material, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TlsError {
    pub path: PathBuf,
    pub message: String,
}

fn tls_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| tls_error(cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(cert_file, e))?;
    if chain.is_empty() {
        return Err(tls_error(cert_file, "holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        tls_error(
            key_file,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| tls_error(key_file, e))?;
    let certified = CertifiedKey::new(chain, key);
    certified.keys_match().map_err(|e| {
        tls_error(
            key_file,
            format!("does not match {}: {e}", cert_file.display()),
        )
    })?;
    Ok(certified)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The server's certificate, re-read when its files change.
#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// When the files were last looked at, and their modification times then.
    checked: Mutex<(Instant, Option<SystemTime>, Option<SystemTime>)>,
    /// How often the files are looked at (on a handshake).
    check_every: Duration,
}

impl Reloading {
    fn open(
        cert_file: &Path,
        key_file: &Path,
        check_every: Duration,
    ) -> Result<Reloading, TlsError> {
        let current = load_certified_key(cert_file, key_file)?;
        Ok(Reloading {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: ArcSwap::from_pointee(current),
            checked: Mutex::new((Instant::now(), modified(cert_file), modified(key_file))),
            check_every,
        })
    }

    fn refresh(&self) {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.0.elapsed() < self.check_every {
            return;
        }
        let (cert, key) = (modified(&self.cert_file), modified(&self.key_file));
        let changed = (cert, key) != (checked.1, checked.2);
        *checked = (Instant::now(), cert, key);
        drop(checked);
        if changed {
            match load_certified_key(&self.cert_file, &self.key_file) {
                Ok(renewed) => {
                    self.current.store(Arc::new(renewed));
                    tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    tracing::error!(%error, "TLS certificate not reloaded; serving the previous one");
                }
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        Some(self.current.load_full())
    }
}

/// The acceptors of both listeners.
#[derive(Clone)]
pub(crate) struct Acceptors {
    pub(crate) grpc: TlsAcceptor,
    pub(crate) http: TlsAcceptor,
}

impl std::fmt::Debug for Acceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptors")
    }
}

impl Acceptors {
    /// Loads the certificate, the key and the client CA, or says which file is wrong.
    pub(crate) fn new(options: &TlsOptions) -> Result<Acceptors, TlsError> {
        let certificate = Arc::new(Reloading::open(
            &options.cert_file,
            &options.key_file,
            Duration::from_secs(1),
        )?);
        let roots = match &options.client_ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| tls_error(path, e))? {
                    roots
                        .add(cert.map_err(|e| tls_error(path, e))?)
                        .map_err(|e| tls_error(path, e))?;
                }
                if roots.is_empty() {
                    return Err(tls_error(path, "holds no PEM certificate"));
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let config = |client_certs: ClientCerts, alpn: &[u8]| -> Result<TlsAcceptor, TlsError> {
            let builder = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error(&options.cert_file, e))?;
            let builder = match (client_certs, &roots) {
                (ClientCerts::None, _) => builder.with_no_client_auth(),
                (_, None) => {
                    return Err(tls_error(
                        Path::new("server.tls.client_ca_file"),
                        "is needed to verify client certificates",
                    ));
                }
                (required, Some(roots)) => {
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
                    let verifier = if required == ClientCerts::Optional {
                        verifier.allow_unauthenticated()
                    } else {
                        verifier
                    };
                    builder.with_client_cert_verifier(verifier.build().map_err(|e| {
                        tls_error(
                            options.client_ca_file.as_deref().unwrap_or(Path::new("")),
                            e,
                        )
                    })?)
                }
            };
            let mut config = builder.with_cert_resolver(certificate.clone());
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Acceptors {
            grpc: config(options.grpc_client_certs, b"h2")?,
            http: config(options.http_client_certs, b"http/1.1")?,
        })
    }
}

/// Completes the server side of a handshake within `timeout`; the stream, and the names
/// in the client's certificate if it sent one (it was verified).
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> std::io::Result<(TlsStream<TcpStream>, Option<PeerCertificate>)> {
    let stream = tokio::time::timeout(timeout, acceptor.accept(stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let names = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| PeerCertificate(certificate_names(leaf).into()));
    Ok((stream, names))
}

/// The names a certificate gives its subject: the CN, then DNS and URI SANs.
pub(crate) fn certificate_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_certificate(dir: &Path, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn served(reloading: &Reloading) -> Vec<u8> {
        reloading.refresh();
        reloading.current.load().cert[0].to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_certificate(dir.path(), "first");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let reloading = Reloading::open(&cert, &key, Duration::ZERO).unwrap();
        assert_eq!(served(&reloading), first);

        let second = write_certificate(dir.path(), "second");
        assert_eq!(served(&reloading), second);

        // Half a renewal (a key that is not the certificate's) keeps the last good one.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        assert_eq!(served(&reloading), second);
        std::fs::write(&cert, "not a certificate").unwrap();
        assert_eq!(served(&reloading), second);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_certificate(dir.path(), "x");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&key, "garbage").unwrap();
        let error = Reloading::open(&cert, &key, Duration::ZERO).unwrap_err();
        assert_eq!(error.path, key);
        let missing = dir.path().join("missing.pem");
        let error = Reloading::open(&missing, &key, Duration::ZERO).unwrap_err();
        assert_eq!(error.path, missing);
    }
}
