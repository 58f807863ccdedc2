//! Sans-IO Telnet client codec for serial consoles exposed over telnet
//! (QEMU's `-serial telnet:...,server` chardev, ser2net).
//!
//! [`TelnetCodec`] performs no I/O: the caller feeds it bytes read from the
//! server with [`TelnetCodec::decode`], which separates console data from
//! protocol replies that must be written back, and escapes console input with
//! [`TelnetCodec::encode`]. Option negotiation follows RFC 1143 (the "Q
//! method", without queueing): a reply is only sent for a request that changes
//! state, so the client can never enter a negotiation loop. The client accepts
//! BINARY, ECHO and SGA from the server, offers BINARY and SGA itself, and
//! refuses everything else. Subnegotiations are discarded as they arrive, so no
//! buffer grows with their length.

/// Interpret As Command: introduces every Telnet command.
pub const IAC: u8 = 255;
/// Negotiation: demand that the peer stop using an option.
pub const DONT: u8 = 254;
/// Negotiation: ask the peer to start using an option.
pub const DO: u8 = 253;
/// Negotiation: refuse to use (or stop using) an option.
pub const WONT: u8 = 252;
/// Negotiation: offer to use (or confirm using) an option.
pub const WILL: u8 = 251;
/// Start of a subnegotiation.
pub const SB: u8 = 250;
/// End of a subnegotiation.
pub const SE: u8 = 240;
/// The Telnet BREAK command.
pub const BRK: u8 = 243;
/// Option 0: 8-bit binary transmission (RFC 856).
pub const BINARY: u8 = 0;
/// Option 1: remote echo (RFC 857).
pub const ECHO: u8 = 1;
/// Option 3: suppress go-ahead (RFC 858).
pub const SGA: u8 = 3;

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NUL: u8 = 0;

/// RFC 1143 state of one side of one option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Q {
    No,
    Yes,
    /// We sent a request to enable it and await the answer.
    WantYes,
}

/// Position of the inbound parser; persists across `decode` calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Data,
    /// A CR was just emitted in non-binary mode; a following NUL is dropped.
    Cr,
    Iac,
    /// Saw `IAC <verb>`, waiting for the option byte.
    Verb(u8),
    Sb,
    SbIac,
}

/// Telnet client state machine: option negotiation plus data (un)escaping.
#[derive(Clone, Debug)]
pub struct TelnetCodec {
    state: State,
    /// Options we perform (answers to the server's DO/DONT).
    us: [Q; 256],
    /// Options the server performs (answers to the server's WILL/WONT).
    him: [Q; 256],
}

impl Default for TelnetCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl TelnetCodec {
    /// Creates a codec with every option disabled.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: State::Data,
            us: [Q::No; 256],
            him: [Q::No; 256],
        }
    }

    /// Bytes the client sends right after connecting: offer binary both ways
    /// and ask the server to suppress go-ahead (`IAC WILL BINARY`,
    /// `IAC DO BINARY`, `IAC DO SGA`). The requests are recorded so that the
    /// server's answers are not answered again.
    #[must_use]
    pub fn initial_negotiation(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        for (verb, opt) in [(WILL, BINARY), (DO, BINARY), (DO, SGA)] {
            let table = if verb == WILL {
                &mut self.us
            } else {
                &mut self.him
            };
            let q = &mut table[usize::from(opt)];
            if *q == Q::No {
                *q = Q::WantYes;
                out.extend_from_slice(&[IAC, verb, opt]);
            }
        }
        out
    }

    /// Feeds bytes received from the server, in any chunking (parser state is
    /// kept between calls). Console data is appended to `data`; protocol
    /// replies that must be sent back to the server are appended to `reply`.
    /// Never emits more data bytes than it was given.
    pub fn decode(&mut self, input: &[u8], data: &mut Vec<u8>, reply: &mut Vec<u8>) {
        for &b in input {
            self.state = match self.state {
                State::Data | State::Cr => match b {
                    IAC => State::Iac,
                    NUL if self.state == State::Cr => State::Data,
                    CR if !self.binary_inbound() => {
                        data.push(b);
                        State::Cr
                    }
                    _ => {
                        data.push(b);
                        State::Data
                    }
                },
                State::Iac => Self::command(b, data),
                State::Verb(verb) => {
                    self.negotiate(verb, b, reply);
                    State::Data
                }
                State::Sb => match b {
                    IAC => State::SbIac,
                    _ => State::Sb,
                },
                State::SbIac => match b {
                    SE => State::Data,
                    IAC => State::Sb,
                    // Malformed: SB ended without SE. Recover by treating
                    // this as an ordinary command so data isn't swallowed.
                    _ => Self::command(b, data),
                },
            };
        }
    }

    /// Handles the byte following an `IAC` outside a subnegotiation.
    fn command(b: u8, data: &mut Vec<u8>) -> State {
        match b {
            IAC => {
                data.push(IAC);
                State::Data
            }
            WILL | WONT | DO | DONT => State::Verb(b),
            SB => State::Sb,
            // NOP, GA, DM, AYT, unknown junk...: dropped.
            _ => State::Data,
        }
    }

    /// Applies a negotiation command from the server, queueing any answer.
    fn negotiate(&mut self, verb: u8, opt: u8, reply: &mut Vec<u8>) {
        let (table, accept, yes, no) = match verb {
            WILL | WONT => (&mut self.him, matches!(opt, BINARY | ECHO | SGA), DO, DONT),
            _ => (&mut self.us, matches!(opt, BINARY | SGA), WILL, WONT),
        };
        let q = &mut table[usize::from(opt)];
        let answer = match (verb, *q) {
            // Enable request from the server.
            (WILL | DO, Q::No) if accept => {
                *q = Q::Yes;
                yes
            }
            (WILL | DO, Q::No) => no,
            (WILL | DO, _) => {
                *q = Q::Yes;
                return;
            }
            // Disable request (or refusal of our own request).
            (_, Q::Yes) => {
                *q = Q::No;
                no
            }
            _ => {
                *q = Q::No;
                return;
            }
        };
        reply.extend_from_slice(&[IAC, answer, opt]);
    }

    /// Escapes console input for the wire: 0xFF is doubled to `IAC IAC`, and
    /// unless the server agreed to binary from us, a CR not followed by LF is
    /// sent as CR NUL (RFC 854). A CR ending `input` is always sent as CR NUL
    /// in non-binary mode, even if the next call starts with LF.
    pub fn encode(&self, input: &[u8], out: &mut Vec<u8>) {
        let binary = self.binary_outbound();
        out.reserve(input.len());
        for (i, &b) in input.iter().enumerate() {
            out.push(b);
            if b == IAC {
                out.push(IAC);
            } else if b == CR && !binary && input.get(i + 1) != Some(&LF) {
                out.push(NUL);
            }
        }
    }

    /// The Telnet BREAK command: `[IAC, BRK]`.
    #[must_use]
    pub fn break_sequence() -> [u8; 2] {
        [IAC, BRK]
    }

    /// Whether we send binary data: the server accepted our `WILL BINARY`.
    #[must_use]
    pub fn binary_outbound(&self) -> bool {
        self.us[usize::from(BINARY)] == Q::Yes
    }

    /// Whether the server sends binary data: it agreed to `WILL BINARY`.
    #[must_use]
    pub fn binary_inbound(&self) -> bool {
        self.him[usize::from(BINARY)] == Q::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(c: &mut TelnetCodec, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut data, mut reply) = (Vec::new(), Vec::new());
        c.decode(input, &mut data, &mut reply);
        (data, reply)
    }

    fn encode(c: &TelnetCodec, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        c.encode(input, &mut out);
        out
    }

    const QEMU_GREETING: [u8; 12] = [
        IAC, WILL, ECHO, IAC, WILL, SGA, IAC, WILL, BINARY, IAC, DO, BINARY,
    ];

    #[test]
    fn qemu_greeting_without_loops() {
        let mut c = TelnetCodec::new();
        let init = c.initial_negotiation();
        assert_eq!(init, [IAC, WILL, BINARY, IAC, DO, BINARY, IAC, DO, SGA]);
        assert!(c.initial_negotiation().is_empty());
        let (data, reply) = decode(&mut c, &QEMU_GREETING);
        assert!(data.is_empty());
        assert_eq!(reply, [IAC, DO, ECHO]);
        assert!(c.binary_inbound() && c.binary_outbound());
        assert_eq!(decode(&mut c, &QEMU_GREETING), (vec![], vec![]));
    }

    #[test]
    fn refusal_of_our_request_is_not_answered() {
        let mut c = TelnetCodec::new();
        let _ = c.initial_negotiation();
        let (_, reply) = decode(&mut c, &[IAC, DONT, BINARY, IAC, WONT, BINARY]);
        assert!(reply.is_empty());
        assert!(!c.binary_inbound() && !c.binary_outbound());
    }

    #[test]
    fn disabling_enabled_options_is_acknowledged_once() {
        let mut c = TelnetCodec::new();
        decode(&mut c, &[IAC, WILL, BINARY, IAC, DO, BINARY]);
        let wont = [IAC, WONT, BINARY, IAC, DONT, BINARY];
        let (_, reply) = decode(&mut c, &wont);
        assert_eq!(reply, [IAC, DONT, BINARY, IAC, WONT, BINARY]);
        assert!(!c.binary_inbound() && !c.binary_outbound());
        assert_eq!(decode(&mut c, &wont), (vec![], vec![]));
    }

    #[test]
    fn unknown_options_refused() {
        let mut c = TelnetCodec::new();
        let (_, reply) = decode(&mut c, &[IAC, WILL, 24, IAC, DO, 31, IAC, DO, ECHO]);
        assert_eq!(reply, [IAC, DONT, 24, IAC, WONT, 31, IAC, WONT, ECHO]);
        let (_, reply) = decode(&mut c, &[IAC, WONT, 24, IAC, DONT, 31]);
        assert!(reply.is_empty());
    }

    #[test]
    fn split_sequences_match_single_chunk() {
        let mut stream = QEMU_GREETING.to_vec();
        stream.extend_from_slice(b"a\r\0b\r\nc");
        stream.extend_from_slice(&[IAC, IAC, IAC, SB, 24, 1, IAC, IAC, IAC, SE, b'd']);
        stream.extend_from_slice(&[IAC, 241, IAC, DO, 99, b'e', IAC, 7, b'f']);
        let mut whole = TelnetCodec::new();
        let expected = decode(&mut whole, &stream);
        assert_eq!(expected.0, b"a\r\0b\r\nc\xffdef");
        assert_eq!(
            expected.1,
            [
                IAC, DO, ECHO, IAC, DO, SGA, IAC, DO, BINARY, IAC, WILL, BINARY, IAC, WONT, 99
            ]
        );
        let mut split = TelnetCodec::new();
        let (mut data, mut reply) = (Vec::new(), Vec::new());
        for b in &stream {
            split.decode(std::slice::from_ref(b), &mut data, &mut reply);
        }
        assert_eq!((data, reply), expected);
    }

    #[test]
    fn iac_iac_both_directions() {
        let mut c = TelnetCodec::new();
        assert_eq!(decode(&mut c, &[1, IAC, IAC, 2]).0, [1, 255, 2]);
        assert_eq!(encode(&c, &[1, 255, 2, 255]), [1, IAC, IAC, 2, IAC, IAC]);
        assert_eq!(TelnetCodec::break_sequence(), [IAC, BRK]);
    }

    #[test]
    fn subnegotiation_dropped_even_when_oversized() {
        let mut c = TelnetCodec::new();
        let mut sb = vec![b'x', IAC, SB, 24, 0];
        sb.extend_from_slice(b"xterm");
        sb.extend_from_slice(&[IAC, SE, b'y', IAC, SB, 31]);
        // Oversized content, with escaped IACs (literal 255s) scattered in it.
        for i in 0..5000u32 {
            sb.extend_from_slice(if i % 7 == 0 { &[IAC, IAC] } else { b"q" });
        }
        sb.extend_from_slice(&[IAC, IAC, IAC, SE, b'z']);
        let (data, reply) = decode(&mut c, &sb);
        assert_eq!(data, b"xyz");
        assert!(reply.is_empty());
        // A malformed SB (IAC + non-SE) ends the subnegotiation instead of
        // swallowing the rest of the stream.
        assert_eq!(decode(&mut c, &[IAC, SB, 24, IAC, 241, b'w']).0, b"w");
    }

    #[test]
    fn cr_nul_handling_non_binary_and_binary() {
        let mut c = TelnetCodec::new();
        assert_eq!(decode(&mut c, b"a\r\0b\r\nc\r").0, b"a\rb\r\nc\r");
        assert_eq!(decode(&mut c, b"\0d").0, b"d");
        assert_eq!(encode(&c, b"a\rb\r\nc\r"), b"a\r\0b\r\nc\r\0");
        let _ = c.initial_negotiation();
        decode(&mut c, &QEMU_GREETING);
        assert_eq!(decode(&mut c, b"a\r\0b\r\n").0, b"a\r\0b\r\n");
        assert_eq!(encode(&c, b"a\rb\r\nc\r"), b"a\rb\r\nc\r");
    }

    #[test]
    fn fuzz_never_panics_or_grows_data() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20 {
            let mut c = TelnetCodec::new();
            let _ = c.initial_negotiation();
            // Bias towards the interesting bytes so commands actually occur.
            let input: Vec<u8> = (0..4000)
                .map(|_| match next() % 4 {
                    0 => IAC,
                    1 => [SB, SE, WILL, WONT, DO, DONT, CR, NUL][(next() % 8) as usize],
                    _ => next() as u8,
                })
                .collect();
            let (mut data, mut reply, mut pos) = (Vec::new(), Vec::new(), 0);
            while pos < input.len() {
                let end = (pos + 1 + (next() % 64) as usize).min(input.len());
                c.decode(&input[pos..end], &mut data, &mut reply);
                pos = end;
            }
            assert!(data.len() <= input.len());
            let mut out = Vec::new();
            c.encode(&input, &mut out);
            assert!(out.len() <= 2 * input.len());
        }
    }
}
