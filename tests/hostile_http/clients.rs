//! The HTTP clients of tests/hostile_http.rs, honest and hostile: raw
//! HTTP/1.1 over a socket from any loopback
//! address, clients that dribble headers or bodies or sit idle, and TLS
//! (test certificates, a rustls client, WebSocket frames over it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::GUARD;

/// A TCP connection to `port` from `source`.
pub async fn connect_from(source: &str, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// An HTTP answer, read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn parse(raw: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
        Answer {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }

    pub fn code(&self) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix("x-consolegate-code: "))
    }
}

/// Writes `request` on `stream` and reads the answer to its end.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Answer {
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut raw))
        .await
        .expect("the answer never ended")
        .unwrap();
    Answer::parse(&raw)
}

/// Whether the gateway closes `stream` before GUARD without answering.
pub async fn closed_unanswered(stream: &mut TcpStream) -> Result<(), String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(GUARD, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match (closed, got.is_empty()) {
        (Err(_), _) => Err("kept open".into()),
        (Ok(()), false) => Err(format!("answered {:?}", String::from_utf8_lossy(&got))),
        (Ok(()), true) => Ok(()),
    }
}

/// Whether the gateway has kept `stream` open (an idle connection it has
/// sent nothing more on). Panics if it sent something.
pub fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
        Ok(0) | Err(_) => false,
        Ok(n) => panic!(
            "an idle connection was sent {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// A client that sends a request's headers a line at a time, one every
/// 300 ms, forever; returns what it received before the gateway closed it
/// (`None` if it was kept open for GUARD).
pub async fn header_slowloris(stream: TcpStream) -> Option<Vec<u8>> {
    let (mut read, mut write) = stream.into_split();
    let drip = async move {
        let _ = write.write_all(b"GET /healthz HTTP/1.1\r\n").await;
        while write.write_all(b"x-slow: 1\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        std::future::pending::<()>().await;
    };
    let seen = async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(GUARD, async {
        tokio::select! {
            got = seen => got,
            () = drip => unreachable!(),
        }
    })
    .await
    .ok()
}

/// An idle keep-alive connection from `source`: one request (`/healthz`)
/// answered and read to its end.
pub async fn idle_keepalive(source: &str, port: u16) -> Option<TcpStream> {
    let mut s = connect_from(source, port).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = tokio::time::timeout(GUARD, s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got.starts_with(b"HTTP/1.1 200").then_some(s)
}

/// Sends a chunked request's head and `bytes` of body in 4 KiB chunks,
/// never the last chunk, reading meanwhile: the answer must come before
/// the body ends.
pub async fn chunked_over(stream: TcpStream, head: &str, bytes: usize) -> Answer {
    let (mut read, mut write) = stream.into_split();
    let head = format!("{head}transfer-encoding: chunked\r\n\r\n");
    let send = async move {
        let chunk = format!("1000\r\n{}\r\n", "a".repeat(4096));
        if write.write_all(head.as_bytes()).await.is_ok() {
            let mut sent = 0;
            while sent < bytes && write.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 4096;
            }
        }
        // Never the last chunk: hold the request open.
        std::future::pending::<()>().await;
    };
    let answer = async move {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return raw,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    let raw = tokio::time::timeout(GUARD, async {
        tokio::select! {
            raw = answer => raw,
            () = send => unreachable!(),
        }
    })
    .await
    .expect("an unfinished chunked body was never answered");
    Answer::parse(&raw)
}

/// Reads a web console's frames until `needle` has appeared.
pub async fn web_expect<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut tokio_tungstenite::WebSocketStream<S>,
    needle: &str,
) {
    use futures_util::StreamExt as _;
    let mut seen = String::new();
    let found = tokio::time::timeout(GUARD, async {
        while let Some(Ok(frame)) = socket.next().await {
            seen.push_str(&String::from_utf8_lossy(&frame.into_data()));
            if seen.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "never received {needle:?} over TLS; got {seen:?}"
    );
}

/// A test CA.
pub type TestCa = rcgen::Issuer<'static, rcgen::KeyPair>;

/// Test certificates: a CA, and a server certificate it signed for
/// 127.0.0.1 and localhost. Returns the CA's PEM and the CA, and writes the
/// server's chain and key into `dir` (`cert.pem`, `key.pem`).
pub fn certificates(dir: &std::path::Path) -> (String, TestCa) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "consolegate test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    server_certificate(dir, &issuer, "consolegate test gateway");
    (ca_pem, issuer)
}

/// Writes a server certificate for 127.0.0.1 and localhost, named `name`
/// and signed by `ca`, with a fresh key, into `dir`; returns its DER.
pub fn server_certificate(dir: &std::path::Path, ca: &TestCa, name: &str) -> Vec<u8> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, name);
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

/// The certificate the gateway presents now.
pub async fn presented(client: &tokio_rustls::TlsConnector, port: u16) -> Vec<u8> {
    let stream = tls_connect(client, port).await;
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A TLS client trusting only `ca_pem`.
pub fn tls_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every handshake a full one: the certificate presented is the one in
    // force, not a resumed session's.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub async fn tls_connect(
    client: &tokio_rustls::TlsConnector,
    port: u16,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = connect_from("127.0.0.1", port).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    client.connect(name, tcp).await.unwrap()
}
