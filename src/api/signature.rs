//! OCI HTTP request signatures (the `Authorization: Signature ...` scheme of the
//! `oci` CLI and SDKs, a profile of draft-cavage-http-signatures).
//!
//! [`verify`] checks a request the way the OCI control plane does: the signing
//! string is one `name: value` line per name in the `headers` parameter, joined
//! by `\n`, where `(request-target)` is the lower-case method, a space and the
//! path with its query exactly as received; it is signed with RSA PKCS#1 v1.5
//! over SHA-256. `keyId` is `<tenancy>/<user>/<fingerprint>`, the fingerprint
//! being [`fingerprint`] of the API key. [`sign`] produces the same headers as
//! the SDK, for tests and tools. Replay protection beyond the date window is
//! not provided here.
//!
//! RUSTSEC-2023-0071 (the "Marvin" timing side channel in the `rsa` crate)
//! concerns private-key operations (decryption and signing). The server only
//! verifies with public keys; [`sign`] is meant for clients and tests.

use std::time::{Duration, SystemTime};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, DATE, HOST, HeaderValue};
use http::{HeaderMap, Method};
use md5::Md5;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest as _, Sha256};

/// Longest `Authorization` header value that is parsed at all, in bytes.
pub const MAX_AUTHORIZATION_LEN: usize = 8 * 1024;
/// Most names a signature may list in its `headers` parameter.
pub const MAX_SIGNED_HEADERS: usize = 20;
/// Smallest RSA modulus accepted by [`parse_public_key_pem`], in bits.
pub const MIN_KEY_BITS: u32 = 2048;
const MAX_PARAMS: usize = 16;
const REQUEST_TARGET: &str = "(request-target)";
const X_CONTENT_SHA256: &str = "x-content-sha256";
const X_DATE: &str = "x-date";

/// Why a request signature was refused. Messages tell the client what to fix
/// and echo only non-secret, length-clipped values from the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Authorization` header.
    #[error("missing Authorization header: sign the request with an OCI API key")]
    MissingAuthorization,
    /// The `Authorization` header exceeds [`MAX_AUTHORIZATION_LEN`].
    #[error("Authorization header is longer than {0} bytes")]
    TooLong(usize),
    /// The header does not use the `Signature` scheme.
    #[error("Authorization is not an OCI request signature (`Signature keyId=\"...\",...`)")]
    NotSignature,
    /// The parameter list cannot be parsed.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// A required signature parameter is absent.
    #[error("Authorization header lacks the `{0}` parameter")]
    MissingParameter(&'static str),
    /// A signature parameter appears twice.
    #[error("Authorization header repeats the `{0}` parameter")]
    DuplicateParameter(String),
    /// `algorithm` is not `rsa-sha256`.
    #[error("unsupported signature algorithm `{0}`: only rsa-sha256 is accepted")]
    UnsupportedAlgorithm(String),
    /// `version` is not `1`.
    #[error("unsupported signature version `{0}`: only version \"1\" is accepted")]
    UnsupportedVersion(String),
    /// The `headers` parameter lists more than [`MAX_SIGNED_HEADERS`] names.
    #[error("the signature covers more than {0} headers")]
    TooManySignedHeaders(usize),
    /// No key is registered under `keyId`.
    #[error("unknown keyId `{0}`: use <tenancy>/<user>/<fingerprint> of an uploaded API key")]
    UnknownKeyId(String),
    /// A header the server requires is not listed in `headers`.
    #[error("the `{0}` header must be signed (listed in the `headers` parameter)")]
    HeaderNotSigned(&'static str),
    /// A header listed in `headers` is absent from the request.
    #[error("signed header `{0}` is missing from the request")]
    SignedHeaderMissing(String),
    /// A signed header occurs more than once (in the request or in `headers`).
    #[error("signed header `{0}` appears more than once")]
    SignedHeaderRepeated(String),
    /// The signed date header is not an HTTP date.
    #[error("the `{0}` header is not an HTTP date like `Tue, 02 Jun 2026 10:00:00 GMT`")]
    BadDate(&'static str),
    /// The signed date is too far from the server's clock.
    #[error("request date is over {max_skew_secs} s from server time {server_time}: fix the clock")]
    ClockSkew {
        /// Allowed skew in seconds.
        max_skew_secs: u64,
        /// The server's time as an HTTP date.
        server_time: String,
    },
    /// `x-content-sha256` is not base64(SHA-256(body)).
    #[error("x-content-sha256 does not match the SHA-256 of the request body")]
    BodyHashMismatch,
    /// `content-length` differs from the body length.
    #[error("content-length does not match the request body length ({0} bytes)")]
    ContentLengthMismatch(usize),
    /// The `signature` parameter is not base64.
    #[error("the `signature` parameter is not valid base64")]
    BadBase64,
    /// The RSA signature does not match the signing string and key.
    #[error("signature does not verify: check the private key, keyId and signed headers")]
    BadSignature,
}

/// Why [`sign`] could not sign a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// A header to sign is missing or repeated (e.g. no `host`).
    #[error("cannot sign the request: {0}")]
    Headers(#[from] SignatureError),
    /// A header value cannot be built: the key id contains `"` or control
    /// characters, or `now` is not representable as an HTTP date.
    #[error("cannot build a valid `{0}` header value")]
    InvalidHeader(&'static str),
    /// The RSA operation failed (e.g. the key is too small for SHA-256).
    #[error("RSA signing failed")]
    Rsa,
}

/// What a successful [`verify`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The `keyId` whose key verified the signature.
    pub key_id: String,
}

/// Parses an RSA public key from PEM: `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo)
/// or `BEGIN RSA PUBLIC KEY` (PKCS#1). Keys under [`MIN_KEY_BITS`] are refused.
pub fn parse_public_key_pem(pem: &str) -> Result<RsaPublicKey, String> {
    let pem = pem.trim();
    let key = if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        RsaPublicKey::from_pkcs1_pem(pem)
            .map_err(|e| format!("invalid PKCS#1 RSA public key: {e}"))?
    } else if pem.starts_with("-----BEGIN PUBLIC KEY-----") {
        RsaPublicKey::from_public_key_pem(pem)
            .map_err(|e| format!("invalid RSA public key: {e}"))?
    } else if pem.contains("PRIVATE KEY") {
        return Err("this is a private key: supply the public key (openssl rsa -pubout)".into());
    } else {
        return Err("expected a PEM `BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY` block".into());
    };
    let bits = key.n().bits();
    if bits < MIN_KEY_BITS {
        return Err(format!(
            "RSA key has {bits} bits; at least {MIN_KEY_BITS} are required"
        ));
    }
    Ok(key)
}

/// The OCI fingerprint of a key: MD5 of its DER SubjectPublicKeyInfo as
/// lower-case colon-separated hex (`openssl rsa -pubout -outform DER | openssl md5 -c`).
pub fn fingerprint(key: &RsaPublicKey) -> String {
    let digest = Md5::digest(spki_der(key));
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// DER SubjectPublicKeyInfo of an RSA key, built directly (infallible).
fn spki_der(key: &RsaPublicKey) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            let len = content.len().to_be_bytes();
            let len = &len[len.iter().take_while(|&&b| b == 0).count()..];
            out.push(0x80 | len.len() as u8);
            out.extend_from_slice(len);
        }
        out.extend_from_slice(content);
        out
    }
    fn uint(bytes: &[u8]) -> Vec<u8> {
        let bytes = &bytes[bytes.iter().take_while(|&&b| b == 0).count()..];
        let mut content = Vec::with_capacity(bytes.len() + 1);
        if bytes.first().is_none_or(|&b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend_from_slice(bytes);
        tlv(0x02, &content)
    }
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let rsa_key = tlv(0x30, &[uint(&key.n_bytes()), uint(&key.e_bytes())].concat());
    let bit_string = tlv(0x03, &[&[0u8][..], &rsa_key].concat());
    tlv(0x30, &[ALGORITHM, &bit_string].concat())
}

fn clip(s: &str) -> String {
    s.chars().take(128).collect()
}

fn has_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn body_sha256(body: &[u8]) -> String {
    STANDARD.encode(Sha256::digest(body))
}

/// Parses `Signature k="v",k="v"` into pairs: any order, optional spaces
/// after commas, no duplicates.
fn parse_authorization(value: &str) -> Result<Vec<(&str, &str)>, SignatureError> {
    use SignatureError::Malformed;
    let (scheme, rest) = value.split_once(' ').ok_or(SignatureError::NotSignature)?;
    if !scheme.eq_ignore_ascii_case("Signature") {
        return Err(SignatureError::NotSignature);
    }
    let mut params: Vec<(&str, &str)> = Vec::new();
    let mut rest = rest.trim_start_matches([' ', '\t']);
    loop {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or(Malformed("expected name=\"value\""))?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if name.is_empty() || !name.bytes().all(token) {
            return Err(Malformed("invalid parameter name"));
        }
        let (val, after) = after
            .split_once('"')
            .ok_or(Malformed("unterminated value"))?;
        if params.iter().any(|(n, _)| *n == name) {
            return Err(SignatureError::DuplicateParameter(clip(name)));
        }
        if params.len() == MAX_PARAMS {
            return Err(Malformed("too many parameters"));
        }
        params.push((name, val));
        let after = after.trim_start_matches([' ', '\t']);
        if after.is_empty() {
            return Ok(params);
        }
        rest = after
            .strip_prefix(',')
            .ok_or(Malformed("expected ',' between parameters"))?;
        rest = rest.trim_start_matches([' ', '\t']);
    }
}

/// The single value of a signed header; absent or repeated is an error.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h HeaderValue, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let value = values
        .next()
        .ok_or_else(|| SignatureError::SignedHeaderMissing(clip(name)))?;
    if values.next().is_some() {
        return Err(SignatureError::SignedHeaderRepeated(clip(name)));
    }
    Ok(value)
}

/// `name: value` lines joined by `\n`, as the SDK signs them.
fn signing_string<S: AsRef<str>>(
    method: &Method,
    path_and_query: &str,
    names: &[S],
    headers: &HeaderMap,
) -> Result<Vec<u8>, SignatureError> {
    let mut out = Vec::new();
    for (i, name) in names.iter().map(AsRef::as_ref).enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        if name == REQUEST_TARGET {
            out.extend_from_slice(method.as_str().to_ascii_lowercase().as_bytes());
            out.push(b' ');
            out.extend_from_slice(path_and_query.as_bytes());
        } else {
            out.extend_from_slice(single(headers, name)?.as_bytes());
        }
    }
    Ok(out)
}

/// `t` as an HTTP date, or `None` outside 1970..9999 (where `httpdate` panics).
fn http_date(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    (secs < 253_402_300_800).then(|| httpdate::fmt_http_date(t))
}

fn check_date(
    headers: &HeaderMap,
    name: &'static str,
    now: SystemTime,
    max_skew: Duration,
) -> Result<(), SignatureError> {
    let value = single(headers, name)?.to_str().ok();
    let date = value.and_then(|v| httpdate::parse_http_date(v).ok());
    let date = date.ok_or(SignatureError::BadDate(name))?;
    let skew = now.duration_since(date).unwrap_or_else(|e| e.duration());
    if skew > max_skew {
        return Err(SignatureError::ClockSkew {
            max_skew_secs: max_skew.as_secs(),
            server_time: http_date(now).unwrap_or_else(|| "(unrepresentable)".into()),
        });
    }
    Ok(())
}

/// Verifies the `Authorization` header of a request.
///
/// `path_and_query` is the request target exactly as received; `lookup` maps a
/// `keyId` to its public key; the signed date (`date` or `x-date`) must lie
/// within `max_skew` of `now`. The signature must cover `(request-target)`,
/// `host` and `date` (or `x-date`); for POST, PUT and PATCH also
/// `content-length`, `content-type` and `x-content-sha256`, and any other
/// method with a non-empty body must sign `x-content-sha256`. A signed
/// `x-content-sha256` must equal base64(SHA-256(`body`)) and a signed
/// `content-length` must equal `body.len()`. Cheap checks run first; the key
/// is looked up and the RSA signature checked last.
///
/// Signed headers are read from `headers` (one value each); over HTTP/2 the
/// caller should insert `host` from the URI authority before calling.
pub fn verify(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    max_skew: Duration,
    lookup: impl Fn(&str) -> Option<RsaPublicKey>,
) -> Result<Verification, SignatureError> {
    use SignatureError as E;
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let auth = values.next().ok_or(E::MissingAuthorization)?;
    if values.next().is_some() {
        return Err(E::Malformed("more than one Authorization header"));
    }
    if auth.len() > MAX_AUTHORIZATION_LEN {
        return Err(E::TooLong(MAX_AUTHORIZATION_LEN));
    }
    let auth = auth
        .to_str()
        .map_err(|_| E::Malformed("non-ASCII characters"))?;
    let params = parse_authorization(auth)?;
    let param = |name| params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let required = |name| param(name).ok_or(E::MissingParameter(name));
    let (key_id, algorithm) = (required("keyId")?, required("algorithm")?);
    let (list, signature) = (required("headers")?, required("signature")?);
    if algorithm != "rsa-sha256" {
        return Err(E::UnsupportedAlgorithm(clip(algorithm)));
    }
    // Optional (draft-cavage); the OCI SDKs always send version="1".
    if let Some(version) = param("version")
        && version != "1"
    {
        return Err(E::UnsupportedVersion(clip(version)));
    }

    let mut names: Vec<String> = Vec::new();
    for name in list.split_ascii_whitespace() {
        if names.len() == MAX_SIGNED_HEADERS {
            return Err(E::TooManySignedHeaders(MAX_SIGNED_HEADERS));
        }
        let name = name.to_ascii_lowercase();
        if names.contains(&name) {
            return Err(E::SignedHeaderRepeated(clip(&name)));
        }
        names.push(name);
    }
    let signed = |name: &str| names.iter().any(|n| n == name);
    if !signed("date") && !signed(X_DATE) {
        return Err(E::HeaderNotSigned("date"));
    }
    let mut must_sign = vec![REQUEST_TARGET, "host"];
    if has_body(method) {
        must_sign.extend(["content-length", "content-type", X_CONTENT_SHA256]);
    } else if !body.is_empty() {
        must_sign.push(X_CONTENT_SHA256);
    }
    if let Some(name) = must_sign.into_iter().find(|name| !signed(name)) {
        return Err(E::HeaderNotSigned(name));
    }

    let message = signing_string(method, path_and_query, &names, headers)?;
    for name in ["date", X_DATE] {
        if signed(name) {
            check_date(headers, name, now, max_skew)?;
        }
    }
    if signed(X_CONTENT_SHA256)
        && single(headers, X_CONTENT_SHA256)?.as_bytes() != body_sha256(body).as_bytes()
    {
        return Err(E::BodyHashMismatch);
    }
    if signed("content-length") {
        let declared = single(headers, "content-length")?.to_str().ok();
        if declared.and_then(|v| v.parse::<u64>().ok()) != Some(body.len() as u64) {
            return Err(E::ContentLengthMismatch(body.len()));
        }
    }

    let key = lookup(key_id).ok_or_else(|| E::UnknownKeyId(clip(key_id)))?;
    let raw = STANDARD.decode(signature).map_err(|_| E::BadBase64)?;
    if raw.len() != key.size() {
        return Err(E::BadSignature);
    }
    let sig = Signature::try_from(raw.as_slice()).map_err(|_| E::BadSignature)?;
    VerifyingKey::<Sha256>::new(key)
        .verify(&message, &sig)
        .map_err(|_| E::BadSignature)?;
    Ok(Verification {
        key_id: key_id.to_owned(),
    })
}

/// Signs a request the way the OCI SDK does. `host` must already be set;
/// `date` is set from `now` unless present; for POST, PUT and PATCH
/// `content-length` and `x-content-sha256` are set from `body` and
/// `content-type` defaults to `application/json`. Then sets `Authorization`
/// for `key_id` (`<tenancy>/<user>/<fingerprint>`).
pub fn sign(
    method: &Method,
    path_and_query: &str,
    headers: &mut HeaderMap,
    body: &[u8],
    key_id: &str,
    key: &RsaPrivateKey,
    now: SystemTime,
) -> Result<(), SignError> {
    single(headers, HOST.as_str())?;
    if !headers.contains_key(DATE) {
        let date = http_date(now).ok_or(SignError::InvalidHeader("date"))?;
        let date = HeaderValue::try_from(date).map_err(|_| SignError::InvalidHeader("date"))?;
        headers.insert(DATE, date);
    }
    let mut names = vec!["date", REQUEST_TARGET, "host"];
    if has_body(method) {
        let hash = HeaderValue::try_from(body_sha256(body))
            .map_err(|_| SignError::InvalidHeader(X_CONTENT_SHA256))?;
        headers.insert(X_CONTENT_SHA256, hash);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        names.extend(["content-length", "content-type", X_CONTENT_SHA256]);
    }
    let auth = authorization(method, path_and_query, headers, &names, key_id, key)?;
    headers.insert(AUTHORIZATION, auth);
    Ok(())
}

/// The `Authorization` value signing `names` of a request.
fn authorization(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    names: &[&str],
    key_id: &str,
    key: &RsaPrivateKey,
) -> Result<HeaderValue, SignError> {
    if key_id.contains('"') {
        return Err(SignError::InvalidHeader("authorization"));
    }
    let message = signing_string(method, path_and_query, names, headers)?;
    let sig = SigningKey::<Sha256>::new(key.clone())
        .try_sign(&message)
        .map_err(|_| SignError::Rsa)?;
    let value = format!(
        "Signature algorithm=\"rsa-sha256\",headers=\"{}\",keyId=\"{key_id}\",signature=\"{}\",version=\"1\"",
        names.join(" "),
        STANDARD.encode(sig.to_vec()),
    );
    HeaderValue::try_from(value).map_err(|_| SignError::InvalidHeader("authorization"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
    use std::sync::OnceLock;
    use std::time::UNIX_EPOCH;

    /// Public half of a key made with `openssl genrsa 2048`; the fingerprint
    /// was computed with `openssl rsa -pubout -outform DER | openssl md5 -c`.
    const KAT_SPKI: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAl5ZoV0+qYUK/qPhhl77J
4QvqSn0rRMwCrDn5Zw1j7DzGzj3IrCepuSXiDY2sc8yzt3OgIcKskqd9m0NbKfv9
aOp7ThuCZu0/MrsGOBcSXshhpDt7Mb4fcC24BsPFnA+IzvSmcyS2TMQnZngA8R3R
hoM4o1ngm3vlrfYyDoS+FEtRIZ/iTatuUI0y+99EPE7SsHItRaIDApF6NC668Pxy
xTsGl0RF3y7fXPhb/JPbS6LRBK3qaI9opAyksS0WH7rnJnh6J9dQBrOlK8agJCeG
Ezy6EWBZzeatP/z6c9htm8YDM2STGXlKJ09dRubFSxnS2ysK+HTdqqwDlRNTFbd7
xwIDAQAB
-----END PUBLIC KEY-----
";
    const KAT_FP: &str = "f8:37:41:20:cc:76:33:c2:e2:e0:80:e5:80:45:d5:24";
    /// Headers produced by the OCI Python SDK 2.189.0 (`oci.Signer`) with the
    /// key above, for requests to https://127.0.0.1:8443 with a preset date.
    const KAT_DATE: &str = "Tue, 02 Jun 2026 10:00:00 GMT";
    const KAT_GET: &str = "Signature algorithm=\"rsa-sha256\",headers=\"date (request-target) host\",keyId=\"ocid1.tenancy.oc1..aaaa/ocid1.user.oc1..bbbb/f8:37:41:20:cc:76:33:c2:e2:e0:80:e5:80:45:d5:24\",signature=\"aW0sV1ZjIvycfgE1w4F3yg+p5rALWef7QhORYc2qMpYmWtHqBMU9DQnQBq5xLb0jgUaHixyLl6rQwrtkuWb4SXlRdFsP4rSWJAk2O4pIe0/I8paynWJiYEcWR31fe3NOKlWiwE+pTby5VzT5L05eewbUpS7dDGozvY+/8mVHxKHcyNuw14RegbysDxHtFoCHiaYRlG72/tmoCh8zOVyzkswv0LTHYX5nyM40gMQI977qdCb66CbpL6rq/K3J+kcRpO87fyroHUZMu0aVFHjvVNiZQ/KqFJv9+EsEFC44TnMQVaGo2w8orkoW1xcIyekV04CLHanruLi41KsvgY5ECQ==\",version=\"1\"";
    const KAT_POST: &str = "Signature algorithm=\"rsa-sha256\",headers=\"date (request-target) host content-length content-type x-content-sha256\",keyId=\"ocid1.tenancy.oc1..aaaa/ocid1.user.oc1..bbbb/f8:37:41:20:cc:76:33:c2:e2:e0:80:e5:80:45:d5:24\",signature=\"PTo0yKb3FhS9XwhsnHU8vqMNxxRU1Ue8TPGzMSmwTKNy/Bfu5rHGmHzue5t+L9XJVz3g2u1A5q8IpmnNkiL373OejvA0DAVPIgpb/qh8GOW2PuEjBCFN2nOLOrhkVs1ZqSIvgIzmRa59g8i8mjOewZHjxFu1oRSWrmG8BpA8B3KrwF2wLfb2lDsej5bEZgyCPm3bNuHjeqdNIrDb7tfDj1MZTF/HhBptBmFfjwwacmJ+q7vxye7yCV1AWKCGDnn6IwznkbKUJKtSCleXDUlOOEKUzWQoUGEgkI0YxhRbtKwGvKy6skUFHp+72nd9QquqgGHETQugJVYiqNiSbFcWuA==\",version=\"1\"";
    const KAT_BODY: &str =
        r#"{"instanceId": "ocid1.instance.oc1..i", "publicKey": "ssh-ed25519 AAAA test"}"#;
    const PATH: &str = "/20160918/instanceConsoleConnections";
    const KEY_ID: &str = "ocid1.tenancy.oc1..t/ocid1.user.oc1..u/fp";
    const SKEW: Duration = Duration::from_secs(300);

    fn key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut rand::rng(), 2048).unwrap())
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_780_000_000)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn signed(method: &Method, pq: &str, body: &[u8]) -> HeaderMap {
        let mut h = headers(&[("host", "127.0.0.1:8443")]);
        sign(method, pq, &mut h, body, KEY_ID, key(), t0()).unwrap();
        h
    }

    type Outcome = Result<Verification, SignatureError>;

    fn check(m: &Method, pq: &str, h: &HeaderMap, body: &[u8], now: SystemTime) -> Outcome {
        verify(m, pq, h, body, now, SKEW, |id| {
            (id == KEY_ID).then(|| key().to_public_key())
        })
    }

    /// Verifies `GET /x` with an empty body at `t0`.
    fn get(h: &HeaderMap) -> Outcome {
        check(&Method::GET, "/x", h, b"", t0())
    }

    /// Verifies `POST PATH` with `body` at `t0`.
    fn post(h: &HeaderMap, body: &[u8]) -> Outcome {
        check(&Method::POST, PATH, h, body, t0())
    }

    fn with(h: &HeaderMap, name: HeaderName, value: &str) -> HeaderMap {
        let mut h = h.clone();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn fingerprint_known_answer_and_pem_forms() {
        let spki = parse_public_key_pem(KAT_SPKI).unwrap();
        assert_eq!(fingerprint(&spki), KAT_FP);
        let pkcs1 = spki.to_pkcs1_pem(LineEnding::CRLF).unwrap();
        assert_eq!(parse_public_key_pem(&pkcs1).unwrap(), spki);
        let public = key().to_public_key();
        let der = public.to_public_key_der().unwrap();
        assert_eq!(spki_der(&public), der.as_bytes());
        let small = RsaPrivateKey::new(&mut rand::rng(), 1024).unwrap();
        let small = small.to_public_key().to_public_key_pem(LineEnding::LF);
        let err = parse_public_key_pem(&small.unwrap()).unwrap_err();
        assert!(err.contains("1024 bits"), "{err}");
        let err = parse_public_key_pem("-----BEGIN PRIVATE KEY-----\nAAAA").unwrap_err();
        assert!(err.contains("private key"), "{err}");
        assert!(parse_public_key_pem("ssh-rsa AAAA").is_err());
        assert!(parse_public_key_pem("-----BEGIN PUBLIC KEY-----\n!!").is_err());
    }

    #[test]
    fn verifies_requests_signed_by_the_oci_sdk() {
        let kat = parse_public_key_pem(KAT_SPKI).unwrap();
        let now = httpdate::parse_http_date(KAT_DATE).unwrap() + Duration::from_secs(42);
        let check = |m: &Method, pq: &str, h: &HeaderMap, body: &[u8]| {
            verify(m, pq, h, body, now, SKEW, |id| {
                id.ends_with(KAT_FP).then(|| kat.clone())
            })
        };
        let query = format!("{PATH}?compartmentId=ocid1.compartment.oc1..x&limit=2");
        let common = [("date", KAT_DATE), ("host", "127.0.0.1:8443")];
        let h = headers(&[common[0], common[1], ("authorization", KAT_GET)]);
        let ok = check(&Method::GET, &query, &h, b"").unwrap();
        let user = "ocid1.tenancy.oc1..aaaa/ocid1.user.oc1..bbbb";
        assert_eq!(ok.key_id, format!("{user}/{KAT_FP}"));
        let unsigned_query = check(&Method::GET, PATH, &h, b"");
        assert_eq!(unsigned_query, Err(SignatureError::BadSignature));
        // Parameters in reverse order with spaces after the commas.
        let params = KAT_GET["Signature ".len()..].split(',');
        let mut params: Vec<_> = params.map(|p| p.trim_end_matches('"')).collect();
        params.reverse();
        let reordered = format!("Signature {}\"", params.join("\", "));
        let h = headers(&[common[0], common[1], ("authorization", &reordered)]);
        check(&Method::GET, &query, &h, b"").unwrap();
        let h = headers(&[
            common[0],
            common[1],
            ("content-length", "77"),
            ("content-type", "application/json"),
            (
                X_CONTENT_SHA256,
                "HetHzFviGkXR1z4UYQbkYZFYGmuSkDX5fZhW8/+gCFM=",
            ),
            ("authorization", KAT_POST),
        ]);
        check(&Method::POST, PATH, &h, KAT_BODY.as_bytes()).unwrap();
    }

    #[test]
    fn sign_then_verify() {
        let h = signed(&Method::GET, "/x?limit=2", b"");
        let value = h[AUTHORIZATION].to_str().unwrap();
        assert!(
            value.contains("headers=\"date (request-target) host\""),
            "{value}"
        );
        let ok = check(&Method::GET, "/x?limit=2", &h, b"", t0()).unwrap();
        assert_eq!(ok.key_id, KEY_ID);
        let altered = check(&Method::GET, "/x?limit=3", &h, b"", t0());
        assert_eq!(altered, Err(SignatureError::BadSignature));
        let h = signed(&Method::DELETE, "/x", b"");
        check(&Method::DELETE, "/x", &h, b"", t0()).unwrap();
        let h = signed(&Method::POST, PATH, b"{}");
        assert_eq!(h[CONTENT_TYPE], "application/json");
        post(&h, b"{}").unwrap();
        // x-date may stand in for date.
        let mut h = headers(&[("host", "h"), ("x-date", &httpdate::fmt_http_date(t0()))]);
        let names = ["x-date", REQUEST_TARGET, "host"];
        let value = authorization(&Method::GET, "/x", &h, &names, KEY_ID, key()).unwrap();
        h.insert(AUTHORIZATION, value);
        get(&h).unwrap();
        let mut no_host = HeaderMap::new();
        let no_host = sign(&Method::GET, "/", &mut no_host, b"", KEY_ID, key(), t0());
        let missing = SignatureError::SignedHeaderMissing("host".into());
        assert_eq!(no_host, Err(SignError::Headers(missing)));
    }

    #[test]
    fn rejects_tampering_and_bad_keys() {
        use SignatureError as E;
        let body = b"{\"a\":1}";
        let h = signed(&Method::POST, PATH, body);
        assert_eq!(post(&HeaderMap::new(), b""), Err(E::MissingAuthorization));
        let other = parse_public_key_pem(KAT_SPKI).unwrap();
        let wrong = verify(&Method::POST, PATH, &h, body, t0(), SKEW, |_| {
            Some(other.clone())
        });
        assert_eq!(wrong, Err(E::BadSignature));
        let unknown = verify(&Method::POST, PATH, &h, body, t0(), SKEW, |_| None);
        assert_eq!(unknown, Err(E::UnknownKeyId(KEY_ID.into())));
        // Body changed with the hash header kept, then with it updated too.
        assert_eq!(post(&h, b"{\"a\":2}"), Err(E::BodyHashMismatch));
        let name = HeaderName::from_static(X_CONTENT_SHA256);
        let rehashed = with(&h, name, &body_sha256(b"{\"a\":2}"));
        assert_eq!(post(&rehashed, b"{\"a\":2}"), Err(E::BadSignature));
        let longer = with(&h, CONTENT_LENGTH, "99");
        assert_eq!(post(&longer, body), Err(E::ContentLengthMismatch(7)));
        // A POST signing only what a GET signs.
        let names = ["date", REQUEST_TARGET, "host"];
        let value = authorization(&Method::POST, PATH, &h, &names, KEY_ID, key()).unwrap();
        let short = with(&h, AUTHORIZATION, value.to_str().unwrap());
        let not_signed = E::HeaderNotSigned("content-length");
        assert_eq!(post(&short, body), Err(not_signed));

        let h = signed(&Method::GET, "/x", b"");
        let with_body = check(&Method::GET, "/x", &h, b"x", t0());
        assert_eq!(with_body, Err(E::HeaderNotSigned(X_CONTENT_SHA256)));
        let mut no_host = h.clone();
        no_host.remove(HOST);
        assert_eq!(get(&no_host), Err(E::SignedHeaderMissing("host".into())));
        let mut two_dates = h.clone();
        two_dates.append(DATE, HeaderValue::from_static("x"));
        assert_eq!(get(&two_dates), Err(E::SignedHeaderRepeated("date".into())));
        let just = Duration::from_secs(1);
        let late = check(&Method::GET, "/x", &h, b"", t0() + SKEW + just).unwrap_err();
        let msg = late.to_string();
        assert!(msg.contains("300 s") && msg.contains("GMT"), "{msg}");
        let early = check(&Method::GET, "/x", &h, b"", t0() - SKEW - just);
        assert!(matches!(early, Err(E::ClockSkew { .. })), "{early:?}");
        check(&Method::GET, "/x", &h, b"", t0() - SKEW).unwrap();
        assert_eq!(get(&with(&h, DATE, "yesterday")), Err(E::BadDate("date")));
    }

    #[test]
    fn rejects_malformed_authorization() {
        use SignatureError as E;
        let h = signed(&Method::GET, "/x", b"");
        let good = h[AUTHORIZATION].to_str().unwrap();
        let many: Vec<String> = (0..=MAX_SIGNED_HEADERS).map(|i| format!("h{i}")).collect();
        let many = good.replace("headers=\"", &format!("headers=\"{} ", many.join(" ")));
        let cases = [
            ("Basic dXNlcjpwYXNz".into(), E::NotSignature),
            (
                good.replace("rsa-sha256", "hs2019"),
                E::UnsupportedAlgorithm("hs2019".into()),
            ),
            (
                good.replace("version=\"1", "version=\"2"),
                E::UnsupportedVersion("2".into()),
            ),
            (
                format!("{good},keyId=\"x\""),
                E::DuplicateParameter("keyId".into()),
            ),
            (good.replace("keyId", "kid"), E::MissingParameter("keyId")),
            (good.replace("signature=\"", "signature=\"!"), E::BadBase64),
            (
                good.replace("signature=\"", "signature=\"AAAA"),
                E::BadSignature,
            ),
            (
                good.replace("host\"", "host host\""),
                E::SignedHeaderRepeated("host".into()),
            ),
            (good.replace("date ", ""), E::HeaderNotSigned("date")),
            (format!("{good},"), E::Malformed("expected name=\"value\"")),
            (many, E::TooManySignedHeaders(MAX_SIGNED_HEADERS)),
            (
                "a".repeat(MAX_AUTHORIZATION_LEN + 1),
                E::TooLong(MAX_AUTHORIZATION_LEN),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                get(&with(&h, AUTHORIZATION, &value)),
                Err(expected),
                "{value}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let h = signed(&Method::GET, "/x", b"");
        let good = h[AUTHORIZATION].as_bytes().to_vec();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        for i in 0..3000 {
            let mut bytes = match i % 3 {
                0 => good.clone(),
                1 => b"Signature ".to_vec(),
                _ => (0..next() % 64).map(|_| next() as u8).collect(),
            };
            for _ in 0..next() % 8 {
                let pos = next() % (bytes.len() + 1);
                let byte = b" ,=\"aZ09-(/)+\x01\xff"[next() % 15];
                match next() % 3 {
                    0 => bytes.insert(pos, byte),
                    1 if pos < bytes.len() => bytes[pos] = byte,
                    _ => bytes.truncate(pos),
                }
            }
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            let mut h = h.clone();
            h.insert(AUTHORIZATION, value);
            let _ = get(&h);
            let _ = check(&Method::POST, "/x", &h, &bytes, t0());
        }
    }
}
