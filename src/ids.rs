//! Unguessable identifiers.
//!
//! Connection ids are OCI-shaped (`ocid1.instanceconsoleconnection.<realm>..<unique>`)
//! whose unique part is 160 random bits from the operating system's generator,
//! written in lower-case base32 so that it is safe as an SSH user name and in
//! shell command lines.

use rand::Rng;

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// `bytes` random bytes as lower-case base32 (8 characters per 5 bytes).
pub fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    base32(&raw)
}

/// `bytes` random bytes as lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new console connection id carrying 160 random bits.
pub fn new_connection_id() -> String {
    format!("ocid1.instanceconsoleconnection.oc1..{}", random_token(20))
}

fn base32(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Whether `s` could be a connection id (cheap check before touching the store).
pub fn looks_like_connection_id(s: &str) -> bool {
    s.len() <= 255
        && !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b""), "");
    }

    #[test]
    fn connection_ids_are_long_and_distinct() {
        let a = new_connection_id();
        let b = new_connection_id();
        assert_ne!(a, b);
        let unique = a.rsplit("..").next().unwrap();
        assert_eq!(unique.len(), 32); // 160 bits / 5 bits per character
        assert!(looks_like_connection_id(&a));
        assert!(!looks_like_connection_id("x y"));
    }
}
