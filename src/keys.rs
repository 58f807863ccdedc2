//! SSH keys: the client keys users register, and the gateway's host keys.
//!
//! [`ClientKey`] is the only way a user-supplied public key enters the
//! gateway: it accepts one OpenSSH `authorized_keys`-style line of an allowed
//! type and size, and remembers its `SHA256:` fingerprint (the form
//! `ssh-keygen -l` prints), which is what sessions compare.
//!
//! [`HostKeys`] are the outer hop's keys, kept as OpenSSH private-key files in
//! the data directory and generated on first use; per-instance (inner hop)
//! keys live in the store and are made with [`generate_instance_key`].

use std::io::Write;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey, PublicKey};

/// Largest public key text accepted (a 16384-bit RSA key is about 2.8 KiB).
pub const MAX_PUBLIC_KEY_LEN: usize = 16 * 1024;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;
/// Size of the RSA host key the gateway generates.
pub const HOST_RSA_BITS: usize = 3072;

/// Why a public key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Nothing was given.
    #[error(
        "the public key is empty; give the contents of a .pub file such as ~/.ssh/id_ed25519.pub"
    )]
    Empty,
    /// Too much text to be a key.
    #[error(
        "the public key is {0} bytes, more than the {MAX_PUBLIC_KEY_LEN} bytes any supported key needs"
    )]
    TooLong(usize),
    /// A private key was given where the public key belongs.
    #[error(
        "this is a private key; give the public key (the .pub file) and keep the private key to yourself"
    )]
    PrivateKey,
    /// More than one line.
    #[error("the public key must be a single line (one key), but it has {0} lines")]
    MultipleLines(usize),
    /// Not an OpenSSH public key line.
    #[error(
        "the public key is not in OpenSSH format (`<type> <base64> [comment]`, as in a .pub file): {0}"
    )]
    Malformed(String),
    /// A key type consolegate does not accept.
    #[error(
        "key type {0} is not accepted; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa of at least {MIN_RSA_BITS} bits"
    )]
    UnsupportedType(String),
    /// An RSA key that is too short.
    #[error(
        "the RSA key has {0} bits; at least {MIN_RSA_BITS} are required (make one with `ssh-keygen -t ed25519`)"
    )]
    RsaTooShort(u32),
}

/// A validated client public key.
#[derive(Debug, Clone)]
pub struct ClientKey {
    key: PublicKey,
    fingerprint: String,
}

impl ClientKey {
    /// Parses one OpenSSH public key line (a trailing newline is fine).
    pub fn parse(text: &str) -> Result<ClientKey, KeyError> {
        if text.len() > MAX_PUBLIC_KEY_LEN {
            return Err(KeyError::TooLong(text.len()));
        }
        let line = text.trim();
        if line.is_empty() {
            return Err(KeyError::Empty);
        }
        if line.contains("PRIVATE KEY") {
            return Err(KeyError::PrivateKey);
        }
        let lines = line.lines().filter(|l| !l.trim().is_empty()).count();
        if lines > 1 {
            return Err(KeyError::MultipleLines(lines));
        }
        let key = PublicKey::from_openssh(line).map_err(|e| {
            let kind = line.split_whitespace().next().unwrap_or_default();
            if kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-") {
                KeyError::Malformed(e.to_string())
            } else {
                KeyError::Malformed(format!("`{}` is not a key type", truncate(kind, 40)))
            }
        })?;
        check_key_type(&key)?;
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        Ok(ClientKey { key, fingerprint })
    }

    /// The key as one line, `<type> <base64>`, without its comment.
    pub fn to_openssh(&self) -> String {
        public_key_line(&self.key)
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

fn check_key_type(key: &PublicKey) -> Result<(), KeyError> {
    match key.algorithm() {
        Algorithm::Ed25519 => Ok(()),
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256 | EcdsaCurve::NistP384 | EcdsaCurve::NistP521,
        } => Ok(()),
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map_or(0, |k| k.key_size());
            if bits < MIN_RSA_BITS {
                Err(KeyError::RsaTooShort(bits))
            } else {
                Ok(())
            }
        }
        other => Err(KeyError::UnsupportedType(other.to_string())),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The `SHA256:` fingerprint of any public key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// `<type> <base64>` with no comment, as used in `known_hosts`.
pub fn public_key_line(key: &PublicKey) -> String {
    let bare = PublicKey::new(key.key_data().clone(), "");
    bare.to_openssh()
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// A `known_hosts` line pinning `key` for `host` on `port`.
pub fn known_hosts_line(host: &str, port: u16, key: &PublicKey) -> String {
    if port == 22 {
        format!("{host} {}", public_key_line(key))
    } else {
        format!("[{host}]:{port} {}", public_key_line(key))
    }
}

/// Errors reading or creating host keys.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// A file could not be read or written.
    #[error("host key file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A file exists but is not a usable OpenSSH private key.
    #[error("host key file {path} is not a valid OpenSSH private key: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Key generation failed.
    #[error("could not generate a host key: {0}")]
    Generate(String),
}

/// The outer hop's host keys: Ed25519 first, then RSA (offered only with SHA-2).
#[derive(Debug, Clone)]
pub struct HostKeys {
    /// Ed25519 key.
    pub ed25519: PrivateKey,
    /// RSA 3072 key.
    pub rsa: PrivateKey,
}

impl HostKeys {
    /// Loads the host keys from `data_dir`, generating any that are missing.
    ///
    /// Safe against two processes starting at once: a key file is created
    /// under a temporary name and linked into place only if no file is there
    /// yet, and whatever is in place afterwards is what both use.
    pub fn load_or_generate(data_dir: &Path) -> Result<HostKeys, HostKeyError> {
        create_private_dir(data_dir)?;
        let ed25519 = load_or_generate_file(&data_dir.join("ssh_host_ed25519_key"), || {
            generate_key(Algorithm::Ed25519)
        })?;
        let rsa = load_or_generate_file(&data_dir.join("ssh_host_rsa_key"), || {
            let keypair = RsaKeypair::random(&mut rand::rng(), HOST_RSA_BITS)
                .map_err(|e| HostKeyError::Generate(e.to_string()))?;
            PrivateKey::new(KeypairData::from(keypair), "consolegate")
                .map_err(|e| HostKeyError::Generate(e.to_string()))
        })?;
        Ok(HostKeys { ed25519, rsa })
    }

    /// The fingerprint users are told to expect (the Ed25519 key's).
    pub fn fingerprint(&self) -> String {
        fingerprint(self.ed25519.public_key())
    }
}

/// This node's key for the node-to-node link of a fleet (`node_link_key`
/// in `data_dir`), generated on first use; the other nodes know it by the
/// public half the node registers in the store.
pub fn load_or_generate_link_key(data_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    create_private_dir(data_dir)?;
    load_or_generate_file(&data_dir.join("node_link_key"), || {
        generate_key(Algorithm::Ed25519)
    })
}

/// A new Ed25519 key for an instance's inner hop.
pub fn generate_instance_key() -> Result<PrivateKey, HostKeyError> {
    generate_key(Algorithm::Ed25519)
}

fn generate_key(algorithm: Algorithm) -> Result<PrivateKey, HostKeyError> {
    let mut key = PrivateKey::random(&mut rand::rng(), algorithm)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    key.set_comment("consolegate");
    Ok(key)
}

/// Encodes a private key as OpenSSH PEM text.
pub fn encode_private_key(key: &PrivateKey) -> Result<String, HostKeyError> {
    key.to_openssh(LineEnding::LF)
        .map(|s| s.to_string())
        .map_err(|e| HostKeyError::Generate(e.to_string()))
}

/// Decodes OpenSSH PEM text.
pub fn decode_private_key(text: &str) -> Result<PrivateKey, String> {
    PrivateKey::from_openssh(text).map_err(|e| e.to_string())
}

/// Creates a directory readable by its owner only (if it does not exist).
pub fn create_private_dir(dir: &Path) -> Result<(), HostKeyError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(error) => Err(HostKeyError::Io {
            path: dir.to_owned(),
            error,
        }),
    }
}

fn load_or_generate_file(
    path: &Path,
    generate: impl FnOnce() -> Result<PrivateKey, HostKeyError>,
) -> Result<PrivateKey, HostKeyError> {
    let io = |error| HostKeyError::Io {
        path: path.to_owned(),
        error,
    };
    if !path.exists() {
        let key = generate()?;
        let pem = encode_private_key(&key)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile_in(dir).map_err(io)?;
        tmp.1.write_all(pem.as_bytes()).map_err(io)?;
        tmp.1.sync_all().map_err(io)?;
        // `hard_link` fails if the name is taken: whoever linked first wins.
        let linked = std::fs::hard_link(&tmp.0, path);
        let _ = std::fs::remove_file(&tmp.0);
        match linked {
            Ok(()) => {
                // The key's bytes are on disk, but its name is an entry in
                // the directory: without this a crash could lose the name,
                // and the next start would make a new host key.
                sync_dir(dir).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    decode_private_key(&text).map_err(|message| HostKeyError::Invalid {
        path: path.to_owned(),
        message,
    })
}

/// Makes the entries of `dir` (a new name linked into it) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    tests::SYNCED_DIRS.with(|d| d.borrow_mut().push(dir.to_owned()));
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        // A file system that cannot sync a directory (EINVAL) has nothing
        // more to make durable.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = format!(".tmp-{}", crate::ids::random_token(8));
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// The directories `sync_dir` synced on this thread.
        pub(super) static SYNCED_DIRS: std::cell::RefCell<Vec<PathBuf>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    #[test]
    fn a_new_key_file_is_owner_only_and_its_directory_synced_once_linked() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        create_private_dir(&dir).unwrap();
        SYNCED_DIRS.with(|d| d.borrow_mut().clear());
        let key = load_or_generate_link_key(&dir).unwrap();
        let path = dir.join("node_link_key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(SYNCED_DIRS.with(|d| d.borrow().clone()), vec![dir.clone()]);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node_link_key")]);
        // Loading it again links nothing, so syncs nothing.
        SYNCED_DIRS.with(|d| d.borrow_mut().clear());
        let again = load_or_generate_link_key(&dir).unwrap();
        assert_eq!(
            fingerprint(key.public_key()),
            fingerprint(again.public_key())
        );
        assert!(SYNCED_DIRS.with(|d| d.borrow().is_empty()));
    }

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@example\n";

    #[test]
    fn accepts_ed25519_with_comment_and_newline() {
        let k = ClientKey::parse(ED25519).unwrap();
        assert!(k.fingerprint().starts_with("SHA256:"));
        assert_eq!(
            k.to_openssh(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        );
    }

    #[test]
    fn refuses_bad_input_with_clear_messages() {
        assert_eq!(ClientKey::parse("  \n").unwrap_err(), KeyError::Empty);
        assert!(matches!(
            ClientKey::parse(&format!("{ED25519}{ED25519}")).unwrap_err(),
            KeyError::MultipleLines(2)
        ));
        assert!(matches!(
            ClientKey::parse("hello world").unwrap_err(),
            KeyError::Malformed(_)
        ));
        assert!(matches!(
            ClientKey::parse("ssh-ed25519 AAAA!!!notbase64").unwrap_err(),
            KeyError::Malformed(_)
        ));
        assert!(matches!(
            ClientKey::parse(&"A".repeat(MAX_PUBLIC_KEY_LEN + 1)).unwrap_err(),
            KeyError::TooLong(_)
        ));
        // Truncated key material.
        assert!(ClientKey::parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkV").is_err());
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        let key = generate_instance_key().unwrap();
        let pem = encode_private_key(&key).unwrap();
        let back = decode_private_key(&pem).unwrap();
        assert_eq!(
            fingerprint(key.public_key()),
            fingerprint(back.public_key())
        );
        let line = known_hosts_line("vm1", 22, key.public_key());
        assert!(line.starts_with("vm1 ssh-ed25519 "), "{line}");
        let line = known_hosts_line("gw", 2222, key.public_key());
        assert!(line.starts_with("[gw]:2222 ssh-ed25519 "), "{line}");
    }
}
