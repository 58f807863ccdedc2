//! What the benches share about the machine and the gateway's host keys:
//! the machine line of a report, and a russh client (its settings, and a
//! handler that accepts only the host keys it was given). Included by each
//! bench (`#[path]`).

use std::sync::Arc;

use russh::keys::PublicKey;

/// `N cores, <cpu model>, ` and the kernel release, as a report starts.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: kernel.trim().to_owned(),
        }
    }
}

/// The benches' russh client settings: Nagle off, and OpenSSH's
/// curve25519 key exchange (the one the benches use for every system).
pub fn client_config() -> Arc<russh::client::Config> {
    Arc::new(russh::client::Config {
        nodelay: true,
        preferred: russh::Preferred {
            kex: std::borrow::Cow::Borrowed(&[
                russh::kex::CURVE25519,
                russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
                russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            ]),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// A russh client handler that trusts only `host_keys` (the gateway's).
pub struct PinnedHost {
    pub host_keys: Arc<Vec<PublicKey>>,
}

impl russh::client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self
                .host_keys
                .iter()
                .any(|k| k.key_data() == key.key_data()),
            _ => false,
        })
    }
}
