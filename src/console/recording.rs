//! Session recordings in asciicast v2, playable with `asciinema play`.
//!
//! A header line (`{"version": 2, "width", "height", "timestamp", …}`), then
//! one `[seconds, "o" | "i", text]` line per chunk. Text must be valid UTF-8
//! JSON strings, so an incomplete multi-byte sequence at the end of a chunk
//! is held back for the next chunk (and invalid bytes become U+FFFD).
//!
//! Recordings are created owner-only (`0600`, in `0700` directories): they
//! hold whatever the console showed or was typed. A recording stops at a
//! size limit (an instance's `record_max_bytes`, 100 MiB by default) with a marker event
//! (`[t, "m", "…"]`) saying so and a `CG-REC-003` warning; the session
//! goes on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::{AsyncWriteExt, BufWriter};

/// The default size at which a session's recording stops (the session
/// goes on): a console printing flat out for hours must not fill the disk.
#[cfg(test)]
const MAX_RECORDING_BYTES: u64 = 100 * 1024 * 1024;

/// An open recording.
#[derive(Debug)]
pub struct Recording {
    path: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    start: Instant,
    pending_output: Vec<u8>,
    pending_input: Vec<u8>,
    with_input: bool,
    written: u64,
    max_bytes: u64,
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
    /// Creates `dir/<instance>/<time>-<session>.cast` and writes the
    /// header; the recording stops when the file would grow past
    /// `max_bytes` (the header is always written).
    pub async fn create(
        dir: &Path,
        instance: &str,
        session: &str,
        header: RecordingHeader<'_>,
        with_input: bool,
        max_bytes: u64,
    ) -> std::io::Result<Recording> {
        let now = time::OffsetDateTime::now_utc();
        let dir = dir.join(instance);
        crate::files::create_private_dir_all(&dir).await?;
        let stamp = now.unix_timestamp();
        let path = dir.join(format!("{stamp}-{session}.cast"));
        let file = crate::files::private_open_options()
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
        let head = format!("{head}\n");
        file.write_all(head.as_bytes()).await?;
        Ok(Recording {
            path,
            file: Some(file),
            start: Instant::now(),
            pending_output: Vec::new(),
            pending_input: Vec::new(),
            with_input,
            written: head.len() as u64,
            max_bytes,
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
        if self.file.is_none() {
            return;
        }
        let line = self.line(kind, &text);
        if self.written + line.len() as u64 > self.max_bytes {
            self.stop_at_limit().await;
            return;
        }
        self.write(&line).await;
    }

    fn line(&self, kind: &str, text: &str) -> String {
        let t = self.start.elapsed().as_secs_f64();
        let line = serde_json::json!([(t * 1e6).round() / 1e6, kind, text]);
        format!("{line}\n")
    }

    async fn write(&mut self, line: &str) {
        let Some(file) = &mut self.file else { return };
        match file.write_all(line.as_bytes()).await {
            Ok(()) => self.written += line.len() as u64,
            Err(e) => {
                tracing::error!(code = "CG-REC-002", path = %self.path.display(), error = %e,
                    "recording write failed; recording stops");
                self.file = None;
            }
        }
    }

    /// Ends the recording at its size limit: a marker says so in the file
    /// (it may take the file just past the limit), the log says so, and
    /// nothing more is written. The session goes on.
    async fn stop_at_limit(&mut self) {
        let note = format!(
            "CG-REC-003 recording stopped: it reached its size limit of {} bytes; the session went on unrecorded",
            self.max_bytes
        );
        let line = self.line("m", &note);
        self.write(&line).await;
        tracing::warn!(code = "CG-REC-003", path = %self.path.display(), max_bytes = self.max_bytes,
            "recording reached its size limit; recording stops, the session goes on");
        if let Some(mut file) = self.file.take()
            && let Err(e) = file.flush().await
        {
            tracing::error!(code = "CG-REC-002", path = %self.path.display(), error = %e,
                "the end of a recording could not be written");
        }
    }

    /// Whether it is still being written (not stopped by its size limit
    /// or a write error).
    pub fn is_open(&self) -> bool {
        self.file.is_some()
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
        let header = header(Some("xterm"));
        let mut r = Recording::create(dir.path(), "vm1", "s1", header, true, MAX_RECORDING_BYTES)
            .await
            .unwrap();
        r.output(b"hello \xe2\x82").await;
        r.output(b"\xac\r\n").await;
        r.input(b"ls\r").await;
        let path = r.path().to_owned();
        r.finish().await;
        let lines = events(&path);
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

    fn header(term: Option<&str>) -> RecordingHeader<'_> {
        RecordingHeader {
            cols: 80,
            rows: 24,
            term,
            title: "t".into(),
        }
    }

    use crate::files::mode_of as mode;

    /// The lines of a recording, as JSON.
    fn events(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_recording_and_its_directory_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let header = header(None);
        let r = Recording::create(dir.path(), "vm1", "s1", header, false, 1 << 20)
            .await
            .unwrap();
        let path = r.path().to_owned();
        r.finish().await;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("vm1")), 0o700);
    }

    #[tokio::test]
    async fn a_recording_stops_at_its_size_limit_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let header = header(None);
        let max = 4096;
        let mut r = Recording::create(dir.path(), "vm1", "s1", header, true, max)
            .await
            .unwrap();
        for i in 0..200 {
            r.output(format!("line {i:04} of console output\r\n").as_bytes())
                .await;
            r.input(b"typed").await;
        }
        assert!(!r.is_open());
        let path = r.path().to_owned();
        r.finish().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = events(&path);
        let last = lines.last().unwrap();
        assert_eq!(last[1], "m");
        assert!(last[2].as_str().unwrap().contains("CG-REC-003"), "{last}");
        // Everything before the marker fits in the limit; the output up to
        // there is all there, in order.
        let marker_len = text.lines().last().unwrap().len() as u64 + 1;
        assert!(text.len() as u64 - marker_len <= max, "{}", text.len());
        assert!(text.len() as u64 > max - 100);
        let output: String = lines[1..]
            .iter()
            .filter(|l| l[1] == "o")
            .map(|l| l[2].as_str().unwrap())
            .collect();
        assert!(output.starts_with("line 0000 of console output\r\nline 0001"));
        assert_eq!(lines.iter().filter(|l| l[1] == "m").count(), 1);
    }
}
