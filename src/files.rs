//! Files the gateway keeps to itself.
//!
//! Everything the gateway writes may hold secrets: host keys, the database
//! (with the instances' private host keys, in its `-wal` and `-shm` files
//! too), recordings and console logs (whatever was typed or shown on a
//! console, passwords included). Each is created owner-only, [`FILE_MODE`]
//! in directories it creates [`DIR_MODE`], whatever the process umask.
//!
//! A data directory made by an older version, restored from a backup or
//! copied by hand may be open to other users: [`secure_data_dir`] makes it
//! and its secret files owner-only when the gateway starts, warning with
//! `CG-DISK-002` for each one it fixes, and refuses to go on if it cannot.
//! (OpenSSH refuses such a key outright; fixing it and saying so keeps the
//! consoles up after a careless restore, and the warning says to replace
//! keys other users may have read.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of the files the gateway creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories the gateway creates.
pub const DIR_MODE: u32 = 0o700;

/// The files in the data directory that hold secrets (the SQLite database
/// and its sidecars hold the instances' private host keys).
pub const DATA_DIR_SECRETS: &[&str] = &[
    "ssh_host_ed25519_key",
    "ssh_host_rsa_key",
    "node_link_key",
    "consolegate.db",
    "consolegate.db-wal",
    "consolegate.db-shm",
    "consolegate.db-journal",
];

/// A file or directory open to other users that could not be made
/// owner-only.
#[derive(Debug, thiserror::Error)]
#[error(
    "CG-DISK-002 {path} is open to other users (mode {mode:04o}) and cannot be made owner-only: {error}; \
     chown it to the gateway's user, or chmod go= it"
)]
pub struct ExposedError {
    /// The file or directory.
    pub path: PathBuf,
    /// Its mode.
    pub mode: u32,
    /// Why it could not be changed.
    pub error: std::io::Error,
}

/// Makes `path` owner-only if it exists and its group or others have any
/// access, with a `CG-DISK-002` warning. `Ok(true)` if it was changed;
/// `Ok(false)` if it was already owner-only or does not exist.
pub fn make_owner_only(path: &Path) -> Result<bool, ExposedError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(false);
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    let tightened = mode & !0o077;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened)).map_err(
        |error| ExposedError {
            path: path.to_owned(),
            mode,
            error,
        },
    )?;
    tracing::warn!(code = "CG-DISK-002", path = %path.display(),
        was = %format!("{mode:04o}"), now = %format!("{tightened:04o}"),
        "a gateway file or directory was open to other users; made owner-only \
         (replace keys others may have read)");
    Ok(true)
}

/// Makes the data directory and the secret files in it owner-only (see
/// [`make_owner_only`]); the paths it changed.
pub fn secure_data_dir(data_dir: &Path) -> Result<Vec<PathBuf>, ExposedError> {
    let mut changed = Vec::new();
    for path in std::iter::once(data_dir.to_owned())
        .chain(DATA_DIR_SECRETS.iter().map(|name| data_dir.join(name)))
    {
        if make_owner_only(&path)? {
            changed.push(path);
        }
    }
    Ok(changed)
}

/// Creates `dir` and any missing parents, [`DIR_MODE`] (directories that
/// exist are left as they are).
pub async fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .await
}

/// Options to open a file that is created [`FILE_MODE`].
pub fn private_open_options() -> tokio::fs::OpenOptions {
    let mut options = tokio::fs::OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// The permission bits of `path` (tests of owner-only files).
#[cfg(test)]
pub(crate) fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        mode_of(path)
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_data_dir_open_to_others_is_made_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        set_mode(&data, 0o755);
        for (name, m) in [
            ("ssh_host_ed25519_key", 0o644),
            ("ssh_host_rsa_key", 0o600),
            ("consolegate.db", 0o640),
            ("consolegate.db-wal", 0o604),
            ("unrelated.txt", 0o644),
        ] {
            std::fs::write(data.join(name), b"x").unwrap();
            set_mode(&data.join(name), m);
        }
        let changed = secure_data_dir(&data).unwrap();
        assert_eq!(
            changed,
            vec![
                data.clone(),
                data.join("ssh_host_ed25519_key"),
                data.join("consolegate.db"),
                data.join("consolegate.db-wal"),
            ]
        );
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("ssh_host_ed25519_key")), 0o600);
        assert_eq!(mode(&data.join("ssh_host_rsa_key")), 0o600);
        assert_eq!(mode(&data.join("consolegate.db")), 0o600);
        assert_eq!(mode(&data.join("consolegate.db-wal")), 0o600);
        // Not the gateway's secret: left alone.
        assert_eq!(mode(&data.join("unrelated.txt")), 0o644);
        // Once owner-only, nothing more to do.
        assert!(secure_data_dir(&data).unwrap().is_empty());
    }

    #[tokio::test]
    async fn created_files_and_directories_are_owner_only_whatever_the_umask() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_private_dir_all(&dir).await.unwrap();
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        private_open_options()
            .create_new(true)
            .write(true)
            .open(&file)
            .await
            .unwrap();
        assert_eq!(mode(&file), 0o600);
    }
}
