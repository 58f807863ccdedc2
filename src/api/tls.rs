//! HTTPS on the HTTP listener: the certificate chain and key of `[api]
//! tls_cert_file` / `tls_key_file` (PEM), served with rustls (ring
//! provider, TLS 1.2 and 1.3, ALPN `http/1.1`).
//!
//! The files are read at start; a reload reads them again, so a renewed
//! certificate is served without a restart (a pair that does not load
//! leaves the running one in place). A client that speaks plain HTTP to
//! the TLS port is answered one plain `400` naming the code
//! (`CG-HTTP-005`), then closed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::config::ApiConfig;

/// Largest certificate or key file read, in bytes.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Why the TLS certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("CG-HTTP-006 cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("CG-HTTP-006 {0} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")]
    NoCertificate(PathBuf),
    /// The key file holds no usable private key.
    #[error(
        "CG-HTTP-006 {path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519): {reason}"
    )]
    Key {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("CG-HTTP-006 the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// A certificate and key read from the files, ready to serve.
#[derive(Debug)]
pub struct Certificate(Arc<CertifiedKey>);

/// The listener's TLS: its files, the certificate in force, and the
/// acceptor that serves it.
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<CurrentCertificate>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// The certificate handshakes are answered with; replaced by a reload.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

impl Tls {
    /// The TLS of `[api]`, if it names a certificate and key; reads them.
    pub fn load(api: &ApiConfig) -> Result<Option<Arc<Tls>>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&api.tls_cert_file, &api.tls_key_file) else {
            return Ok(None);
        };
        // ring, not aws-lc-rs (which needs cmake to build). rustls marks
        // ring's provider deprecated for lacking the post-quantum hybrid
        // key exchange; X25519, P-256 and P-384 are offered.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let first = read_pair(cert_file, key_file, &provider)?;
        let current = Arc::new(CurrentCertificate(RwLock::new(first)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Key {
                path: key_file.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(Tls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            provider,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })))
    }

    /// Reads the files again (a reload validates this before it changes
    /// anything).
    pub fn read_files(&self) -> Result<Certificate, TlsError> {
        read_pair(&self.cert_file, &self.key_file, &self.provider).map(Certificate)
    }

    /// Serves `certificate` from the next handshake on.
    pub fn install(&self, certificate: Certificate) {
        *self
            .current
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = certificate.0;
    }

    /// The acceptor for new connections.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = || -> std::io::Result<Vec<u8>> {
        use std::io::Read as _;
        let mut text = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_PEM_FILE)
            .read_to_end(&mut text)?;
        Ok(text)
    };
    read().map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read_file(cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_owned()));
    }
    let key_pem = read_file(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_file.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

/// What the first byte of a connection on the TLS port says it is.
pub(crate) enum Greeting {
    /// A TLS handshake record.
    Tls,
    /// Letters: a plain HTTP request.
    PlainHttp,
    /// Anything else, or nothing.
    Junk,
}

/// Looks at the first byte the client sent, without consuming it.
pub(crate) async fn greeting(stream: &TcpStream) -> Greeting {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] == 0x16 => Greeting::Tls,
        Ok(1) if first[0].is_ascii_uppercase() => Greeting::PlainHttp,
        _ => Greeting::Junk,
    }
}

/// Answers a plain HTTP request on the TLS port with one plain `400`
/// (after reading its head, so that closing does not reset the answer
/// away), then closes. The caller bounds the time this takes.
pub(crate) async fn refuse_plain_http(mut stream: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = "CG-HTTP-005 this port speaks HTTPS only: use an https:// URL\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         {}: CG-HTTP-005\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::codes::CODE_HEADER,
        body.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
        // Let the client read the answer before the socket goes.
        let mut sink = [0u8; 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    }
}
