//! The on-disk console log of an instance: everything the console printed,
//! appended to one file, rotated by size (`log.1` … `log.N`, oldest last).
//!
//! A write error is logged once and the console goes on without its log:
//! a full disk must not take the console away.
//!
//! The log holds whatever the console printed (passwords echoed by a
//! careless program included): a new log file is created owner-only
//! (`0600`), and so is a missing directory for it (`0700`).

use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::AsyncWriteExt;

/// An open, rotating console log.
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl ConsoleLog {
    /// Opens (appending to) `path`, rotating at `max_bytes`, keeping `keep` old files.
    pub async fn open(path: PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<ConsoleLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::files::create_private_dir_all(dir).await?;
        }
        let file = append(&path).await?;
        let size = file.metadata().await?.len();
        Ok(ConsoleLog {
            path,
            file: Some(file),
            size,
            max_bytes,
            keep,
        })
    }

    /// Appends console output, rotating first if it would overflow.
    pub async fn write(&mut self, data: &[u8]) {
        if self.file.is_none() {
            return;
        }
        if self.size > 0
            && self.size + data.len() as u64 > self.max_bytes
            && let Err(e) = self.rotate().await
        {
            self.fail(e);
            return;
        }
        let Some(file) = &mut self.file else { return };
        // Flushed each time: tokio's File hands writes to a thread, and the
        // log must hold everything up to a crash.
        match file.write_all(data).await {
            Ok(()) => match file.flush().await {
                Ok(()) => self.size += data.len() as u64,
                Err(e) => self.fail(e),
            },
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        tracing::error!(code = "CG-LOG-002", path = %self.path.display(), error = %e,
            "console log write failed; logging stops");
        self.file = None;
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
        }
        if self.keep == 0 {
            tokio::fs::remove_file(&self.path).await?;
        } else {
            for n in (1..self.keep).rev() {
                let from = numbered(&self.path, n);
                if tokio::fs::try_exists(&from).await.unwrap_or(false) {
                    tokio::fs::rename(&from, numbered(&self.path, n + 1)).await?;
                }
            }
            tokio::fs::rename(&self.path, numbered(&self.path, 1)).await?;
        }
        self.file = Some(append(&self.path).await?);
        self.size = 0;
        Ok(())
    }
}

async fn append(path: &Path) -> std::io::Result<File> {
    crate::files::private_open_options()
        .create(true)
        .append(true)
        .open(path)
        .await
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm1.log");
        let mut log = ConsoleLog::open(path.clone(), 1000, 2).await.unwrap();
        for i in 0..5u8 {
            log.write(&[b'a' + i; 600]).await;
        }
        drop(log);
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        assert_eq!(read(path.clone()), vec![b'e'; 600]);
        assert_eq!(read(numbered(&path, 1)), vec![b'd'; 600]);
        assert_eq!(read(numbered(&path, 2)), vec![b'c'; 600]);
        assert!(!numbered(&path, 3).exists());
        // Reopening appends.
        let mut log = ConsoleLog::open(path.clone(), 1000, 2).await.unwrap();
        log.write(b"f").await;
        drop(log);
        assert_eq!(read(path).len(), 601);
    }

    #[tokio::test]
    async fn new_logs_and_their_directory_are_owner_only() {
        use crate::files::mode_of as mode;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/vm1.log");
        let mut log = ConsoleLog::open(path.clone(), 10, 1).await.unwrap();
        assert_eq!(mode(&dir.path().join("logs")), 0o700);
        assert_eq!(mode(&path), 0o600);
        log.write(&[b'a'; 8]).await;
        log.write(&[b'b'; 8]).await;
        // Rotated: the new file too.
        assert_eq!(read_len(&numbered(&path, 1)), 8);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&numbered(&path, 1)), 0o600);
    }

    fn read_len(path: &Path) -> usize {
        std::fs::read(path).unwrap().len()
    }
}
