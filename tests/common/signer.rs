//! An API user that signs raw HTTP requests the way the OCI SDKs do, for
//! tests that write requests to a socket themselves (the oci CLI is
//! [`super::oci`]).

use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use rsa::RsaPrivateKey;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::oci::TENANCY;

/// The signer's user OCID.
const USER: &str = "ocid1.user.oc1..aaaaaaaarawsigner";

/// An API user with a fresh RSA signing key.
pub struct Signer {
    key: RsaPrivateKey,
    key_id: String,
}

impl Signer {
    pub fn new() -> Signer {
        let key = RsaPrivateKey::new(&mut rand::rng(), 2048).unwrap();
        let fingerprint = consolegate::api::signature::fingerprint(&key.to_public_key());
        Signer {
            key_id: format!("{TENANCY}/{USER}/{fingerprint}"),
            key,
        }
    }

    /// Its `[[api_user]]`, allowed into compartment `test`.
    pub fn toml(&self) -> String {
        super::oci::api_user_toml(USER, &self.key)
    }

    /// A signed request for `host`, ready to write (`Connection: close`).
    pub fn request(&self, method: Method, target: &str, host: &str, body: &[u8]) -> Vec<u8> {
        self.request_with(method, target, host, body, &[])
    }

    /// [`Signer::request`] with `extra` headers (signed too).
    pub fn request_with(
        &self,
        method: Method,
        target: &str,
        host: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Vec<u8> {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_str(host).unwrap());
        for (name, value) in extra {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        consolegate::api::signature::sign(
            &method,
            target,
            &mut headers,
            body,
            &self.key_id,
            &self.key,
            SystemTime::now(),
        )
        .unwrap();
        let lines: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap()))
            .collect();
        let mut out =
            format!("{method} {target} HTTP/1.1\r\n{lines}connection: close\r\n\r\n").into_bytes();
        out.extend_from_slice(body);
        out
    }
}

/// An answer the gateway gave in full.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    /// Parses what came; `None` unless it is a whole answer (`ended`: the
    /// gateway closed the connection after it).
    pub fn whole(raw: &[u8], ended: bool) -> Option<Answer> {
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..at]).into_owned();
        let status = head.get(9..12)?.parse().ok()?;
        let body = &raw[at + 4..];
        let length = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(": ")?;
                n.eq_ignore_ascii_case("content-length").then_some(v)
            })
            .and_then(|l| l.trim().parse::<usize>().ok());
        let body = match length {
            Some(n) if body.len() >= n => &body[..n],
            Some(_) => return None,
            None if status == 204 || ended => body,
            None => return None,
        };
        Some(Answer {
            status,
            head,
            body: String::from_utf8_lossy(body).into_owned(),
        })
    }
}

/// Sends `request` to `port` on a new connection: the answer, if one came
/// in full (`None`: refused, cut, or short: the gateway died first). An
/// answer that takes longer than [`super::GUARD`] fails the test.
pub async fn exchange(port: u16, request: &[u8]) -> Option<Answer> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    if stream.write_all(request).await.is_err() {
        return None;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let ended = loop {
        match tokio::time::timeout(super::GUARD, stream.read(&mut buf))
            .await
            .expect("an API answer hung")
        {
            Ok(0) => break true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Answer::whole(&raw, ended)
}

/// A create body for `instance` with a new key.
pub fn create_body(instance: &str) -> Vec<u8> {
    let key = consolegate::keys::generate_instance_key().unwrap();
    let public_key = consolegate::keys::public_key_line(key.public_key());
    serde_json::to_vec(&json!({"instanceId": instance, "publicKey": public_key})).unwrap()
}
