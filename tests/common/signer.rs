//! An API user that signs raw HTTP requests the way the OCI SDKs do, for
//! tests that write requests to a socket themselves (the oci CLI is
//! [`super::oci`]).

use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use rsa::RsaPrivateKey;

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
