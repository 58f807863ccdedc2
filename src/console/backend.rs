//! Serial backends: reaching a machine's serial line.
//!
//! [`BackendConnection::connect`] opens any [`SerialTarget`]; the connection
//! then reads console output, writes console input, and sends a break where
//! the transport can carry one:
//!
//! | target | transport | break |
//! |--------|-----------|-------|
//! | `unix:/path` | Unix socket (QEMU chardev) | no (raw byte stream) |
//! | `tcp:host:port` | raw TCP | no |
//! | `telnet:host:port` | telnet ([`super::telnet`]) | `IAC BRK` |
//! | `/dev/ttyX@baud` | serial line (tokio-serial) | line break (TIOCSBRK) |
//! | `pty:/dev/pts/N` | pseudo-terminal | no (a pty has no line to break) |
//! | `simulator` | in-process demo machine | yes |
//!
//! Input for the console is queued ([`BackendConnection::queue`]) and
//! written while the connection waits for output ([`BackendConnection::next_io`]):
//! a line that takes input slowly (a 9600-baud UART drains ~960 bytes a
//! second) never holds its output back.
//!
//! Also here: [`connect_vnc`], which opens an instance's VNC target.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use super::telnet::TelnetCodec;
use crate::config::{SerialTarget, VncTarget};

/// How long connecting to a backend may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a serial line is held in the break condition.
pub const BREAK_DURATION: Duration = Duration::from_millis(300);

/// A byte stream to a console or VNC server.
#[derive(Debug)]
pub enum BackendStream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
    /// Serial device or pty.
    Serial(SerialStream),
    /// The simulator's end of its line.
    Simulator(tokio::io::DuplexStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            BackendStream::Tcp($s) => $e,
            BackendStream::Unix($s) => $e,
            BackendStream::Serial($s) => $e,
            BackendStream::Simulator($s) => $e,
        }
    };
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Why a break could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum BreakError {
    /// The transport has no way to carry a break.
    #[error(
        "CG-BRK-001 this console's backend ({0}) cannot carry a serial break; a telnet: or serial device backend can"
    )]
    Unsupported(String),
    /// Sending failed.
    #[error("CG-BRK-003 sending the break failed: {0}")]
    Io(#[from] io::Error),
}

enum Protocol {
    Raw,
    /// Raw output; input with 0xFF doubled so that `IAC BRK` can mark a break
    /// in order with the data (the simulator's line).
    InBandBreak,
    Telnet(Box<TelnetCodec>),
}

enum BreakMethod {
    None,
    Telnet,
    LineBreak,
    InBandBreak,
}

/// Something queued for the console, written in order.
enum Outgoing {
    /// Bytes for the line (already encoded for its protocol), `at` of them
    /// written; `_permit` (the sender's share of the hub's input budget)
    /// is released once all are.
    Bytes {
        bytes: Vec<u8>,
        at: usize,
        _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// A break, due once everything queued before it is written.
    Break,
}

/// What [`BackendConnection::next_io`] has to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// This many bytes of output arrived (0: end of stream); hand the
    /// count to [`BackendConnection::decode`].
    Read(usize),
    /// Everything queued before a break is written: send it now with
    /// [`BackendConnection::send_break`].
    BreakDue,
}

/// An open connection to a serial console.
pub struct BackendConnection {
    target: SerialTarget,
    stream: BackendStream,
    protocol: Protocol,
    breaks: BreakMethod,
    read_buf: Vec<u8>,
    /// Input and protocol replies not yet written, in order.
    outgoing: VecDeque<Outgoing>,
    /// Written bytes not flushed yet.
    unflushed: bool,
    /// When the last queued bytes were written.
    last_written: Option<Instant>,
}

impl std::fmt::Debug for BackendConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConnection")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl BackendConnection {
    /// Connects to `target`; `hostname` names the simulated machine.
    pub async fn connect(target: &SerialTarget, hostname: &str) -> io::Result<BackendConnection> {
        let (stream, protocol, breaks) = match target {
            SerialTarget::Unix(path) => (
                BackendStream::Unix(timeout(UnixStream::connect(path)).await?),
                Protocol::Raw,
                BreakMethod::None,
            ),
            SerialTarget::Tcp(host, port) => (
                BackendStream::Tcp(tcp(host, *port).await?),
                Protocol::Raw,
                BreakMethod::None,
            ),
            SerialTarget::Telnet(host, port) => (
                BackendStream::Tcp(tcp(host, *port).await?),
                Protocol::Telnet(Box::default()),
                BreakMethod::Telnet,
            ),
            SerialTarget::Device(path, baud) => (
                BackendStream::Serial(open_serial(path, *baud)?),
                Protocol::Raw,
                BreakMethod::LineBreak,
            ),
            SerialTarget::Pty(path) => (
                BackendStream::Serial(open_serial(path, 115_200)?),
                Protocol::Raw,
                BreakMethod::None,
            ),
            SerialTarget::Simulator => {
                let sim = super::simulator::spawn(hostname);
                (
                    BackendStream::Simulator(sim.io),
                    Protocol::InBandBreak,
                    BreakMethod::InBandBreak,
                )
            }
        };
        let mut conn = BackendConnection {
            target: target.clone(),
            stream,
            protocol,
            breaks,
            read_buf: vec![0; 16 * 1024],
            outgoing: VecDeque::new(),
            unflushed: false,
            last_written: None,
        };
        if let Protocol::Telnet(codec) = &mut conn.protocol {
            let hello = codec.initial_negotiation();
            conn.stream.write_all(&hello).await?;
        }
        Ok(conn)
    }

    /// Waits for bytes from the backend, writing what is queued for it
    /// meanwhile (as fast as the backend takes it, never holding output
    /// back), until output arrives or a queued break is due. Cancel-safe:
    /// use it in `select!`; what was written stays written.
    pub async fn next_io(&mut self) -> io::Result<Io> {
        std::future::poll_fn(|cx| self.poll_io(cx)).await
    }

    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Io>> {
        if let Poll::Ready(Err(e)) = self.poll_write_queued(cx) {
            return Poll::Ready(Err(e));
        }
        if !self.unflushed && matches!(self.outgoing.front(), Some(Outgoing::Break)) {
            self.outgoing.pop_front();
            return Poll::Ready(Ok(Io::BreakDue));
        }
        let mut buf = ReadBuf::new(&mut self.read_buf);
        match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(Io::Read(buf.filled().len()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes and flushes queued bytes, in order, as far as the backend
    /// takes them now; ready once all before the next break (or all) are.
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(Outgoing::Bytes { bytes, at, .. }) = self.outgoing.front_mut() {
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *at += n;
                    self.unflushed = true;
                    if *at == bytes.len() {
                        self.outgoing.pop_front();
                        self.last_written = Some(Instant::now());
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.unflushed {
            std::task::ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Turns the `n` bytes just read into console output in `out` (cleared
    /// first), queueing answers to any telnet negotiation they carried.
    /// `out` may be empty when the bytes were all protocol.
    pub fn decode(&mut self, n: usize, out: &mut Vec<u8>) {
        out.clear();
        let raw = &self.read_buf[..n.min(self.read_buf.len())];
        match &mut self.protocol {
            Protocol::Raw | Protocol::InBandBreak => out.extend_from_slice(raw),
            Protocol::Telnet(codec) => {
                let mut reply = Vec::new();
                codec.decode(raw, out, &mut reply);
                if !reply.is_empty() {
                    self.outgoing.push_back(Outgoing::Bytes {
                        bytes: reply,
                        at: 0,
                        _permit: None,
                    });
                }
            }
        }
    }

    /// Reads the next console output into `out`; `false` at end of stream.
    /// Not cancel-safe (see [`BackendConnection::next_io`]).
    pub async fn read(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            match self.next_io().await? {
                Io::Read(0) => return Ok(false),
                Io::Read(n) => {
                    self.decode(n, out);
                    if !out.is_empty() {
                        return Ok(true);
                    }
                }
                Io::BreakDue => {
                    let _ = self.send_break().await;
                }
            }
        }
    }

    /// Queues console input, written by [`BackendConnection::next_io`];
    /// `permit` is held until it is written.
    pub fn queue(&mut self, data: &[u8], permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        let bytes = match &self.protocol {
            Protocol::Raw => data.to_vec(),
            Protocol::InBandBreak => {
                let mut escaped = Vec::with_capacity(data.len() + 4);
                for &b in data {
                    escaped.push(b);
                    if b == super::telnet::IAC {
                        escaped.push(b);
                    }
                }
                escaped
            }
            Protocol::Telnet(codec) => {
                let mut encoded = Vec::with_capacity(data.len() + 8);
                codec.encode(data, &mut encoded);
                encoded
            }
        };
        self.outgoing.push_back(Outgoing::Bytes {
            bytes,
            at: 0,
            _permit: permit,
        });
    }

    /// Queues a break after the input queued so far: [`BackendConnection::next_io`]
    /// says [`Io::BreakDue`] once that is written.
    pub fn queue_break(&mut self) {
        self.outgoing.push_back(Outgoing::Break);
    }

    /// When queued input was last written to the line.
    pub fn last_written(&self) -> Option<Instant> {
        self.last_written
    }

    /// Writes console input, and everything queued before it (up to a
    /// queued break).
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.queue(data, None);
        std::future::poll_fn(|cx| self.poll_write_queued(cx)).await
    }

    /// Sends a serial break, if the transport can carry one.
    pub async fn send_break(&mut self) -> Result<(), BreakError> {
        match &self.breaks {
            BreakMethod::Telnet | BreakMethod::InBandBreak => {
                self.stream
                    .write_all(&TelnetCodec::break_sequence())
                    .await?;
                self.stream.flush().await?;
            }
            BreakMethod::LineBreak => {
                if let BackendStream::Serial(port) = &self.stream {
                    port.set_break().map_err(io::Error::from)?;
                    tokio::time::sleep(BREAK_DURATION).await;
                    port.clear_break().map_err(io::Error::from)?;
                }
            }
            BreakMethod::None => return Err(BreakError::Unsupported(self.target.to_string())),
        }
        Ok(())
    }
}

async fn timeout<T>(f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(CONNECT_TIMEOUT, f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out connecting"))?
}

async fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let stream = timeout(TcpStream::connect((host, port))).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn open_serial(path: &std::path::Path, baud: u32) -> io::Result<SerialStream> {
    let path = path.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "device path is not valid UTF-8",
        )
    })?;
    tokio_serial::new(path, baud)
        .open_native_async()
        .map_err(io::Error::from)
}

/// Opens an instance's VNC target.
pub async fn connect_vnc(target: &VncTarget) -> io::Result<BackendStream> {
    Ok(match target {
        VncTarget::Tcp(host, port) => BackendStream::Tcp(tcp(host, *port).await?),
        VncTarget::Unix(path) => BackendStream::Unix(timeout(UnixStream::connect(path)).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, UnixListener};

    #[tokio::test]
    async fn raw_tcp_passes_bytes_both_ways_and_refuses_break() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"login: ").await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            buf
        });
        let target = SerialTarget::Tcp("127.0.0.1".into(), port);
        let mut conn = BackendConnection::connect(&target, "t").await.unwrap();
        let mut out = Vec::new();
        assert!(conn.read(&mut out).await.unwrap());
        assert_eq!(out, b"login: ");
        conn.write(b"root\r").await.unwrap();
        assert_eq!(&peer.await.unwrap(), b"root\r");
        let e = conn.send_break().await.unwrap_err();
        assert!(e.to_string().contains("cannot carry a serial break"), "{e}");
    }

    #[tokio::test]
    async fn unix_socket_end_of_stream_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"bye").await.unwrap();
        });
        let mut conn = BackendConnection::connect(&SerialTarget::Unix(path), "t")
            .await
            .unwrap();
        let mut out = Vec::new();
        assert!(conn.read(&mut out).await.unwrap());
        assert_eq!(out, b"bye");
        assert!(!conn.read(&mut out).await.unwrap());
    }

    #[tokio::test]
    async fn missing_backend_is_a_clear_error() {
        let e = BackendConnection::connect(&SerialTarget::Unix("/nonexistent/x.sock".into()), "t")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
