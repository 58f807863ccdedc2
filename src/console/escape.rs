//! In-band escape commands on the console.
//!
//! OpenSSH claims `~` at the start of a line for its own escapes (and in the
//! nested ProxyCommand setup only the inner `ssh` has a terminal, so only it
//! sees them). consolegate uses `&`, as ConMan does: typed as the first
//! character of a line it starts a command instead of reaching the console.
//!
//! | keys | action |
//! |------|--------|
//! | `&.` | disconnect |
//! | `&B` | send a serial break (SysRq on a Linux guest) |
//! | `&F` | take write access (force) |
//! | `&W` | who is attached (`&I` too) |
//! | `&L` | replay the last lines of output |
//! | `&?` | help |
//! | `&&` | type a literal `&` |
//!
//! Any other character after `&` is passed through together with the `&`.
//! [`EscapeParser`] is sans-IO: it turns typed bytes into console input and
//! actions, in order.

/// The escape character.
pub const ESCAPE_CHAR: u8 = b'&';

/// The help text shown by `&?` (CRLF line ends, for a raw terminal).
pub const HELP: &str = "\r\n[consolegate escape commands, typed at the start of a line:\r\n \
     &.  disconnect\r\n \
     &B  send a serial break (on Linux guests: Magic SysRq, then the command key)\r\n \
     &F  take write access\r\n \
     &W  who is attached\r\n \
     &L  replay the last 50 lines of output\r\n \
     &?  this help\r\n \
     &&  type a literal &\r\n\
     session options go in the inner hop's user name, e.g. replay-lines=50,ro@<instance>:\r\n \
     replay-lines=N replay-bytes=N replay=none|all ro force lag=skip|disconnect]\r\n";

/// What an escape command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeAction {
    /// Leave the console.
    Disconnect,
    /// Send a serial break.
    Break,
    /// Show the help text.
    Help,
    /// Take write access.
    Force,
    /// List who is attached.
    Who,
    /// Replay recent output.
    Replay,
}

/// A piece of parsed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes for the console.
    Data(Vec<u8>),
    /// An escape command.
    Action(EscapeAction),
}

/// Splits typed bytes into console input and escape commands.
#[derive(Debug, Clone)]
pub struct EscapeParser {
    at_line_start: bool,
    pending_escape: bool,
}

impl Default for EscapeParser {
    fn default() -> Self {
        EscapeParser {
            at_line_start: true,
            pending_escape: false,
        }
    }
}

impl EscapeParser {
    /// A parser at the start of a line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `input`; segments are returned in the order they were typed.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut data = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                let action = match b {
                    b'.' => Some(EscapeAction::Disconnect),
                    b'B' | b'b' => Some(EscapeAction::Break),
                    b'?' => Some(EscapeAction::Help),
                    b'F' | b'f' => Some(EscapeAction::Force),
                    b'W' | b'w' | b'I' | b'i' => Some(EscapeAction::Who),
                    b'L' | b'l' => Some(EscapeAction::Replay),
                    _ => None,
                };
                match action {
                    Some(action) => {
                        if !data.is_empty() {
                            out.push(Segment::Data(std::mem::take(&mut data)));
                        }
                        out.push(Segment::Action(action));
                        // Still at the start of a line: another command may follow.
                        self.at_line_start = true;
                    }
                    None if b == ESCAPE_CHAR => {
                        data.push(ESCAPE_CHAR);
                        self.at_line_start = false;
                    }
                    None => {
                        data.push(ESCAPE_CHAR);
                        data.push(b);
                        self.at_line_start = matches!(b, b'\r' | b'\n');
                    }
                }
                continue;
            }
            if self.at_line_start && b == ESCAPE_CHAR {
                self.pending_escape = true;
                continue;
            }
            data.push(b);
            self.at_line_start = matches!(b, b'\r' | b'\n');
        }
        if !data.is_empty() {
            out.push(Segment::Data(data));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &[u8]) -> Segment {
        Segment::Data(s.to_vec())
    }

    #[test]
    fn commands_only_at_line_start() {
        let mut p = EscapeParser::new();
        assert_eq!(
            p.feed(b"&."),
            vec![Segment::Action(EscapeAction::Disconnect)]
        );
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(b"a&."), vec![data(b"a&.")]);
        assert_eq!(
            p.feed(b"\r&Bh"),
            vec![
                data(b"\r"),
                Segment::Action(EscapeAction::Break),
                data(b"h")
            ]
        );
    }

    #[test]
    fn split_across_reads() {
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(b"ls\r"), vec![data(b"ls\r")]);
        assert_eq!(p.feed(b"&"), vec![]);
        assert_eq!(p.feed(b"?"), vec![Segment::Action(EscapeAction::Help)]);
        assert_eq!(
            p.feed(b"&b"),
            vec![Segment::Action(EscapeAction::Break)],
            "still at line start after a command"
        );
    }

    #[test]
    fn literal_and_unknown() {
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(b"&&x"), vec![data(b"&x")]);
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(b"&x&."), vec![data(b"&x&.")]);
        let mut p = EscapeParser::new();
        assert_eq!(
            p.feed(b"~.\n"),
            vec![data(b"~.\n")],
            "OpenSSH's escape passes through"
        );
        let mut p = EscapeParser::new();
        assert_eq!(
            p.feed(b"&\r&."),
            vec![data(b"&\r"), Segment::Action(EscapeAction::Disconnect)]
        );
    }

    #[test]
    fn junk_never_panics_and_never_grows() {
        let mut p = EscapeParser::new();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let chunk: Vec<u8> = (0..(x % 64))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 7) as u8 + b'%' // lots of '&', '.', and friends
                })
                .collect();
            let n: usize = p
                .feed(&chunk)
                .iter()
                .map(|s| match s {
                    Segment::Data(d) => d.len(),
                    Segment::Action(_) => 0,
                })
                .sum();
            assert!(n <= chunk.len() + 1);
        }
    }
}
