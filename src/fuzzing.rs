//! Entry points for the fuzz targets in `fuzz/`: one function per parser
//! that takes bytes from outside, each calling the code the gateway runs on
//! those bytes and checking what must hold whatever they are. A broken
//! property is a panic, which the fuzzer reports as a crash.
//!
//! `tests/fuzz_corpus.rs` runs every input in `fuzz/corpus/` and
//! `fuzz/regressions/` through these functions on each `cargo test`, so the
//! seeds, and every crash ever found, stay regression tests on the stable
//! toolchain. This is not an API: it exists for those two users.

use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use rsa::RsaPublicKey;

use crate::api::nova;
use crate::api::oci::{
    self, CreateInstanceConsoleConnectionDetails, UpdateInstanceConsoleConnectionDetails,
};
use crate::api::signature;
use crate::config::Config;
use crate::config::{SerialTarget, VncTarget};
use crate::console::escape::{EscapeParser, Segment};
use crate::console::options::SessionOptions;
use crate::console::telnet::TelnetCodec;
use crate::keys::ClientKey;

/// The public key `oci_signature` checks signatures with. Its private half
/// signed the seeds in `fuzz/corpus/oci_signature` and is kept nowhere.
const SIGNING_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAkZwGi0oAL9J7tMaDWz2i
dr3dpycGGAgYMSiUN3Lfv77QZGJWwHoZ28hrjscceuDowKj9QRdZmJpa9XGu699P
1vu8qBPWTOeRB3R4mPwlKxUpBQUCxSJYHswoiSSC8LDVKObGLuSwFgORm7KIqnz8
obOEzaUT2xYRddFZjY6o0lbOmRkbrPY+oobO1sREzcJnGOJZbCNFtFh+KSvH27X6
3opB6EAW3WVAKAFyoJ+qGmJr2QxXFkZHxaeOYiCxB0McRG7sJFLvjKATKt4xK4lY
SX5dYaOvohV+Ilm92G3jlLS4i/ydGHj9mBEwzOwJjVag1Pmk78YYBDAn+jW2PaYp
AwIDAQAB
-----END PUBLIC KEY-----
";

/// The clock `oci_signature` verifies at: Tue, 14 Nov 2023 22:13:20 GMT, the
/// `date` the seeds carry.
const SIGNING_TIME_SECS: u64 = 1_700_000_000;

/// Bytes as text, the way the gateway's callers get them: configs and
/// headers that are not UTF-8 never reach these parsers.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Splits input into chunks whose sizes the input's first byte picks, so
/// the fuzzer also explores how a stream is cut into reads.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (size, rest) = match data.split_first() {
        Some((first, rest)) => (usize::from(*first % 64) + 1, rest),
        None => (1, data),
    };
    rest.chunks(size)
}

/// `gateway.toml`. Inputs that name a `public_key_file` are skipped: the
/// parser would read whatever file they name (`/dev/zero` never ends).
pub fn config(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if text.contains("public_key_file") {
        return;
    }
    if let Ok(config) = Config::from_toml(text, Path::new("fuzz.toml"), Path::new("/nonexistent")) {
        for instance in &config.instances {
            assert!(crate::config::validate_instance_id(&instance.id).is_ok());
        }
    }
}

/// A registered public key (`ClientKey::parse`): a key it accepts prints
/// as a line that parses to the same key.
pub fn client_key(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(key) = ClientKey::parse(text) {
        let again = ClientKey::parse(&key.to_openssh()).expect("a key's own line parses");
        assert_eq!(again.fingerprint(), key.fingerprint());
    }
}

/// The SSH user name, which carries session options (`replay-lines=50,ro`).
pub fn session_user(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(options) = SessionOptions::from_user_name(text) {
        assert!(!(options.read_only && options.force));
    }
}

/// Typed console input through the escape parser, in reads of any size:
/// the console never gets more bytes than were typed.
pub fn escape(data: &[u8]) {
    let mut parser = EscapeParser::new();
    let (mut typed, mut passed) = (0, 0);
    for chunk in chunks(data) {
        typed += chunk.len();
        for segment in parser.feed(chunk) {
            if let Segment::Data(bytes) = segment {
                passed += bytes.len();
            }
        }
        assert!(passed <= typed, "{passed} bytes out of {typed} typed");
    }
}

/// A telnet backend's byte stream: the console never gets more bytes than
/// the backend sent, and replies stay in proportion.
pub fn telnet(data: &[u8]) {
    let mut codec = TelnetCodec::new();
    let _ = codec.initial_negotiation();
    let (mut input, mut out, mut reply) = (0, Vec::new(), Vec::new());
    for chunk in chunks(data) {
        input += chunk.len();
        codec.decode(chunk, &mut out, &mut reply);
        assert!(out.len() <= input, "{} bytes out of {input}", out.len());
        assert!(
            reply.len() <= 2 * input + 64,
            "{} reply bytes to {input}",
            reply.len()
        );
    }
    let mut encoded = Vec::new();
    codec.encode(&out, &mut encoded);
    assert!(encoded.len() <= 2 * out.len());
}

/// A `serial` or `vnc` target in the config: what parses prints as text
/// that parses to the same target.
pub fn serial_target(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(target) = SerialTarget::from_str(text) {
        assert_eq!(SerialTarget::from_str(&target.to_string()), Ok(target));
    }
    if let Ok(target) = VncTarget::from_str(text) {
        assert_eq!(VncTarget::from_str(&target.to_string()), Ok(target));
    }
}

/// A list's `page` token: a token it accepts is one it could have issued.
pub fn page_token(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(key) = oci::decode_page(text) {
        assert_eq!(oci::decode_page(&oci::encode_page(&key)).ok(), Some(key));
    }
}

/// Request headers from `name: value` lines; lines that are not valid
/// headers are dropped, as hyper would refuse them.
fn headers(lines: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    headers
}

/// Nova's microversion headers (`OpenStack-API-Version`,
/// `X-OpenStack-Nova-API-Version`), as `name: value` lines.
pub fn nova_microversion(data: &[u8]) {
    if let Ok(version) = nova::microversion(&headers(data)) {
        assert!((nova::MIN_VERSION..=nova::MAX_VERSION).contains(&version));
    }
}

/// A signed OCI request: `METHOD target`, header lines, an empty line,
/// then the body. Verified with the seeds' key at the seeds' time; true if
/// the signature holds (the signed seeds must, or the fuzzer would explore
/// only the refusals).
pub fn oci_signature(data: &[u8]) -> bool {
    static KEY: OnceLock<RsaPublicKey> = OnceLock::new();
    let key = KEY.get_or_init(|| signature::parse_public_key_pem(SIGNING_KEY).unwrap());
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let (request_line, header_lines) = match head.iter().position(|b| *b == b'\n') {
        Some(at) => (&head[..at], &head[at + 1..]),
        None => (head, &[][..]),
    };
    let Some((method, target)) = text(request_line).and_then(|l| l.split_once(' ')) else {
        return false;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return false;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(SIGNING_TIME_SECS);
    let verified = signature::verify(
        &method,
        target,
        &headers(header_lines),
        body,
        now,
        Duration::from_secs(300),
        |id| (id == "fuzz").then(|| key.clone()),
    );
    match verified {
        Ok(verification) => {
            assert_eq!(verification.key_id, "fuzz");
            true
        }
        Err(_) => false,
    }
}

/// OCI request bodies (create and update details) and a list's query
/// string, each read as its handler reads it. The first byte picks which.
pub fn oci_json(data: &[u8]) {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(details) = oci::parse_body::<CreateInstanceConsoleConnectionDetails>(
                body,
                "CreateInstanceConsoleConnectionDetails",
            ) {
                let _ = crate::connections::check_tags(
                    &details.freeform_tags.unwrap_or_default(),
                    &details.defined_tags.unwrap_or_default(),
                );
                if let Some(key) = details.public_key {
                    let _ = ClientKey::parse(&key);
                }
            }
        }
        1 => {
            if let Ok(details) = oci::parse_body::<UpdateInstanceConsoleConnectionDetails>(
                body,
                "UpdateInstanceConsoleConnectionDetails",
            ) {
                let _ = crate::connections::check_tags(
                    &details.freeform_tags.unwrap_or_default(),
                    &details.defined_tags.unwrap_or_default(),
                );
            }
        }
        _ => {
            if let Some(query) = text(body)
                && let Ok(params) = oci::serde_urlencoded_params(query)
                && let Some(page) = params.page
            {
                let _ = oci::decode_page(&page);
            }
        }
    }
}

/// Nova request bodies: `remote-consoles` and the console server actions.
/// The first byte picks which.
pub fn nova_json(data: &[u8]) {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        let _ = nova::remote_console_request(body);
    } else {
        let _ = nova::console_action(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_key_parses() {
        signature::parse_public_key_pem(SIGNING_KEY).unwrap();
    }

    #[test]
    fn chunks_cover_the_input_after_its_first_byte() {
        let data: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let joined: Vec<u8> = chunks(&data).flatten().copied().collect();
        assert_eq!(joined, data[1..]);
        assert!(chunks(&data).all(|c| c.len() <= 1));
        assert_eq!(chunks(&[]).count(), 0);
    }
}
