//! Consoles: what sits between an SSH session and a machine's serial line.
//!
//! - [`backend`]: connecting to a serial target (unix, tcp, telnet, serial
//!   device, pty, the simulator) and sending a break over it.
//! - [`hub`]: one [`hub::ConsoleHub`] per instance owns the backend connection
//!   and fans its output out to every attached session.
//! - [`history`]: recent output and what a session replays.
//! - [`logfile`]: the optional on-disk console log, rotated by size.
//! - [`options`]: session options chosen in the inner hop's user name.
//! - [`queue`]: the bounded queues from the hub to each session, and within
//!   a session.
//! - [`recording`]: asciicast v2 recordings of sessions.
//! - [`escape`]: the in-band escape commands typed at the start of a line.
//! - [`telnet`]: the telnet protocol state machine used by `telnet:` targets.
//! - [`timeouts`]: when idle and over-long sessions are warned and cut.
//! - [`simulator`]: the built-in demo machine (`serial = "simulator"`).
//!
//! Nothing here knows about SSH: sessions see a hub as a stream of
//! [`hub::ConsoleEvent`]s and a sender for input.

pub mod backend;
pub mod escape;
pub mod history;
pub mod hub;
pub mod logfile;
pub mod options;
pub mod queue;
pub mod recording;
pub mod simulator;
pub mod telnet;
pub mod timeouts;
