//! The stock `oci` CLI (PyPI `oci-cli`, installed by `.ci/run` into
//! `.venv`), and an API user for it: the `[[api_user]]` a gateway trusts and
//! the config file `oci setup config` would write.

use std::path::{Path, PathBuf};

use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::Value;

use super::GUARD;

pub const TENANCY: &str = "ocid1.tenancy.oc1..aaaaaaaaconsolegatetest";
pub const USER: &str = "ocid1.user.oc1..aaaaaaaaconsolegateoperator";

/// The CLI, at `$OCI_CLI` or `.venv/bin/oci`. Without it a test says so
/// and passes, except under CI (`CI` set), where a missing CLI fails.
pub fn oci_cli() -> Option<PathBuf> {
    let path = std::env::var_os("OCI_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/oci"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the oci CLI is missing at {} (.ci/run installs it)",
        path.display()
    );
    eprintln!(
        "SKIPPED: no oci CLI at {}; run .ci/run or set OCI_CLI",
        path.display()
    );
    None
}

/// An API user with a fresh RSA signing key.
pub struct ApiUser {
    key: RsaPrivateKey,
}

impl ApiUser {
    pub fn new() -> ApiUser {
        ApiUser {
            key: RsaPrivateKey::new(&mut rand::rng(), 2048).unwrap(),
        }
    }

    /// The `[[api_user]]` entry a gateway's config needs for it, allowed
    /// into compartment `test`.
    pub fn toml(&self) -> String {
        api_user_toml(USER, &self.key)
    }

    /// The CLI `bin` as this user against `endpoint`, its key and config
    /// files written into `dir`.
    pub fn oci(&self, bin: PathBuf, dir: &Path, endpoint: String) -> Oci {
        let key_file = dir.join("oci_api_key.pem");
        std::fs::write(
            &key_file,
            self.key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        let fingerprint = consolegate::api::signature::fingerprint(&self.key.to_public_key());
        let config = dir.join("oci_config");
        std::fs::write(
            &config,
            format!(
                "[DEFAULT]\nuser={USER}\nfingerprint={fingerprint}\nkey_file={}\ntenancy={TENANCY}\nregion=us-ashburn-1\n",
                key_file.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [&key_file, &config] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Oci {
            bin,
            config,
            endpoint,
        }
    }
}

/// The CLI, configured for one user and one endpoint.
pub struct Oci {
    bin: PathBuf,
    config: PathBuf,
    endpoint: String,
}

impl Oci {
    /// Creates a console connection to `instance` for the public key in
    /// `public_key_file`; returns the CLI's JSON.
    pub async fn create(&self, instance: &str, public_key_file: &Path) -> Value {
        self.run(&[
            "create",
            "--instance-id",
            instance,
            "--ssh-public-key-file",
            public_key_file.to_str().unwrap(),
        ])
        .await
    }

    /// Runs `oci compute instance-console-connection <args>`; returns its JSON.
    pub async fn run(&self, args: &[&str]) -> Value {
        let out = tokio::time::timeout(
            GUARD * 4,
            tokio::process::Command::new(&self.bin)
                .args(["compute", "instance-console-connection"])
                .args(args)
                .arg("--endpoint")
                .arg(&self.endpoint)
                .arg("--config-file")
                .arg(&self.config)
                .args(["--no-retry"])
                .env("OCI_CLI_SUPPRESS_FILE_PERMISSIONS_WARNING", "True")
                .env("SUPPRESS_LABEL_WARNING", "True")
                .output(),
        )
        .await
        .expect("oci CLI hung")
        .expect("cannot run the oci CLI");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "oci {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
        }
    }
}

/// The `[[api_user]]` entry for `user` (of [`TENANCY`]) signing with
/// `key`, allowed into compartment `test`.
pub fn api_user_toml(user: &str, key: &RsaPrivateKey) -> String {
    let public_pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    format!(
        "[[api_user]]\ntenancy = \"{TENANCY}\"\nuser = \"{user}\"\n\
         public_key = \"\"\"{public_pem}\"\"\"\ncompartments = [\"test\"]\n\n"
    )
}
