//! The console's memory: the last output of an instance, kept whether or not
//! anyone is attached, and cut into what a session asked to see again.

use std::collections::VecDeque;

pub use crate::config::Replay;

/// A ring buffer of the most recent output.
#[derive(Debug)]
pub struct History {
    buf: VecDeque<u8>,
    capacity: usize,
}

impl History {
    /// Keeps at most `capacity` bytes.
    pub fn new(capacity: usize) -> History {
        History {
            buf: VecDeque::new(),
            capacity,
        }
    }

    /// Appends output, forgetting the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        self.buf.drain(..overflow.min(self.buf.len()));
        self.buf.extend(data);
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The part `replay` asks for, oldest first.
    pub fn select(&self, replay: Replay) -> Vec<u8> {
        let start = match replay {
            Replay::None => self.buf.len(),
            Replay::All => 0,
            Replay::Bytes(n) => self.buf.len().saturating_sub(n),
            Replay::Lines(n) => self.start_of_last_lines(n),
        };
        self.buf.range(start..).copied().collect()
    }

    /// Where the last `n` lines begin. A final line without its newline yet
    /// counts as a line (it is the prompt the user is looking at).
    fn start_of_last_lines(&self, n: usize) -> usize {
        if n == 0 {
            return self.buf.len();
        }
        let mut newlines = 0;
        // Ignore a newline at the very end: it closes the last line.
        let end = match self.buf.back() {
            Some(b'\n') => self.buf.len() - 1,
            _ => self.buf.len(),
        };
        for i in (0..end).rev() {
            if self.buf[i] == b'\n' {
                newlines += 1;
                if newlines == n {
                    return i + 1;
                }
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_selects_lines_bytes_all_none() {
        let mut h = History::new(1024);
        h.push(b"one\r\ntwo\r\nthree\r\nlogin: ");
        assert_eq!(h.select(Replay::Lines(1)), b"login: ");
        assert_eq!(h.select(Replay::Lines(2)), b"three\r\nlogin: ");
        assert_eq!(h.select(Replay::Lines(99)), h.select(Replay::All));
        assert_eq!(h.select(Replay::Bytes(7)), b"login: ");
        assert_eq!(h.select(Replay::None), b"");
        let mut h = History::new(1024);
        h.push(b"a\nb\n");
        assert_eq!(h.select(Replay::Lines(1)), b"b\n");
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let mut h = History::new(10);
        h.push(b"0123456789abc");
        assert_eq!(h.select(Replay::All), b"3456789abc");
        h.push(b"XY");
        assert_eq!(h.select(Replay::All), b"56789abcXY");
        assert_eq!(h.len(), 10);
    }

    #[test]
    fn replay_parses_from_config_and_user_names() {
        assert_eq!("none".parse::<Replay>().unwrap(), Replay::None);
        assert_eq!("all".parse::<Replay>().unwrap(), Replay::All);
        assert_eq!("50".parse::<Replay>().unwrap(), Replay::Lines(50));
        assert_eq!("50 lines".parse::<Replay>().unwrap(), Replay::Lines(50));
        assert_eq!("4096 bytes".parse::<Replay>().unwrap(), Replay::Bytes(4096));
        assert!("lots".parse::<Replay>().is_err());
        assert!("5 pages".parse::<Replay>().is_err());
    }
}
