//! Session recordings in asciicast v2, playable with `asciinema play`.
//!
//! A header line (`{"version": 2, "width", "height", "timestamp", …}`), then
//! one `[seconds, "o" | "i", text]` line per chunk. Text must be valid UTF-8
//! JSON strings, so an incomplete multi-byte sequence at the end of a chunk
//! is held back for the next chunk (and invalid bytes become U+FFFD).

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::{AsyncWriteExt, BufWriter};

/// An open recording.
#[derive(Debug)]
pub struct Recording {
    path: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    start: Instant,
    pending_output: Vec<u8>,
    pending_input: Vec<u8>,
    with_input: bool,
}

/// What the header says about the session.
#[derive(Debug, Clone)]
pub struct RecordingHeader<'a> {
    /// Terminal width.
    pub cols: u32,
    /// Terminal height.
    pub rows: u32,
    /// `TERM`, if the client said.
    pub term: Option<&'a str>,
    /// Title: instance and connection.
    pub title: String,
}

impl Recording {
    /// Creates `dir/<instance>/<time>-<session>.cast` and writes the header.
    pub async fn create(
        dir: &Path,
        instance: &str,
        session: &str,
        header: RecordingHeader<'_>,
        with_input: bool,
    ) -> std::io::Result<Recording> {
        let now = time::OffsetDateTime::now_utc();
        let dir = dir.join(instance);
        tokio::fs::create_dir_all(&dir).await?;
        let stamp = now.unix_timestamp();
        let path = dir.join(format!("{stamp}-{session}.cast"));
        let file = tokio::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .await?;
        let mut file = BufWriter::new(file);
        let mut env = serde_json::Map::new();
        if let Some(term) = header.term {
            env.insert("TERM".into(), term.into());
        }
        let head = serde_json::json!({
            "version": 2,
            "width": header.cols.clamp(1, 1000),
            "height": header.rows.clamp(1, 1000),
            "timestamp": stamp,
            "title": header.title,
            "env": env,
        });
        file.write_all(format!("{head}\n").as_bytes()).await?;
        Ok(Recording {
            path,
            file: Some(file),
            start: Instant::now(),
            pending_output: Vec::new(),
            pending_input: Vec::new(),
            with_input,
        })
    }

    /// Where it is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records output shown to the session.
    pub async fn output(&mut self, data: &[u8]) {
        let text = take_utf8(&mut self.pending_output, data);
        self.event("o", text).await;
    }

    /// Records what the session typed (if input recording is on).
    pub async fn input(&mut self, data: &[u8]) {
        if self.with_input {
            let text = take_utf8(&mut self.pending_input, data);
            self.event("i", text).await;
        }
    }

    async fn event(&mut self, kind: &str, text: String) {
        if text.is_empty() {
            return;
        }
        let Some(file) = &mut self.file else { return };
        let t = self.start.elapsed().as_secs_f64();
        let line = serde_json::json!([(t * 1e6).round() / 1e6, kind, text]);
        if let Err(e) = file.write_all(format!("{line}\n").as_bytes()).await {
            tracing::error!(code = "CG-REC-002", path = %self.path.display(), error = %e,
                "recording write failed; recording stops");
            self.file = None;
        }
    }

    /// Flushes what is held back and closes the file.
    pub async fn finish(mut self) {
        let rest = String::from_utf8_lossy(&std::mem::take(&mut self.pending_output)).into_owned();
        self.event("o", rest).await;
        if let Some(mut file) = self.file.take()
            && let Err(e) = file.flush().await
        {
            tracing::error!(code = "CG-REC-002", path = %self.path.display(), error = %e,
                "the end of a recording could not be written");
        }
    }
}

/// Appends `data` to `pending` and takes the longest valid UTF-8 prefix,
/// keeping an incomplete trailing sequence (at most 3 bytes) for later.
fn take_utf8(pending: &mut Vec<u8>, data: &[u8]) -> String {
    pending.extend_from_slice(data);
    let keep = incomplete_tail(pending);
    let complete: Vec<u8> = pending.drain(..pending.len() - keep).collect();
    String::from_utf8_lossy(&complete).into_owned()
}

/// Length of an incomplete UTF-8 sequence at the end of `bytes`.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: look further back
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_utf8_is_held_back() {
        let mut pending = Vec::new();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(take_utf8(&mut pending, &[b'a', euro[0]]), "a");
        assert_eq!(take_utf8(&mut pending, &euro[1..2]), "");
        assert_eq!(take_utf8(&mut pending, &euro[2..]), "€");
        assert!(pending.is_empty());
        assert_eq!(take_utf8(&mut pending, &[0xff, b'x']), "\u{fffd}x");
    }

    #[tokio::test]
    async fn writes_a_valid_asciicast() {
        let dir = tempfile::tempdir().unwrap();
        let header = RecordingHeader {
            cols: 80,
            rows: 24,
            term: Some("xterm"),
            title: "t".into(),
        };
        let mut r = Recording::create(dir.path(), "vm1", "s1", header, true)
            .await
            .unwrap();
        r.output(b"hello \xe2\x82").await;
        r.output(b"\xac\r\n").await;
        r.input(b"ls\r").await;
        let path = r.path().to_owned();
        r.finish().await;
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[0]["width"], 80);
        let output: String = lines[1..]
            .iter()
            .filter(|l| l[1] == "o")
            .map(|l| l[2].as_str().unwrap())
            .collect();
        assert_eq!(output, "hello €\r\n");
        assert!(lines.iter().any(|l| l[1] == "i" && l[2] == "ls\r"));
    }
}
