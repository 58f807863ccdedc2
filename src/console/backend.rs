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
//! Also here: [`connect_vnc`], which opens an instance's VNC target.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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

/// An open connection to a serial console.
pub struct BackendConnection {
    target: SerialTarget,
    stream: BackendStream,
    protocol: Protocol,
    breaks: BreakMethod,
    read_buf: Vec<u8>,
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
        };
        if let Protocol::Telnet(codec) = &mut conn.protocol {
            let hello = codec.initial_negotiation();
            conn.stream.write_all(&hello).await?;
        }
        Ok(conn)
    }

    /// Waits for bytes from the backend and returns how many arrived (0 at
    /// end of stream). Cancel-safe: use it in `select!`, then hand the count
    /// to [`BackendConnection::decode`].
    pub async fn read_raw(&mut self) -> io::Result<usize> {
        self.stream.read(&mut self.read_buf).await
    }

    /// Turns the `n` bytes just read into console output in `out` (cleared
    /// first), answering any telnet negotiation they carried. `out` may be
    /// empty when the bytes were all protocol.
    pub async fn decode(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        let raw = &self.read_buf[..n.min(self.read_buf.len())];
        match &mut self.protocol {
            Protocol::Raw | Protocol::InBandBreak => out.extend_from_slice(raw),
            Protocol::Telnet(codec) => {
                let mut reply = Vec::new();
                codec.decode(raw, out, &mut reply);
                if !reply.is_empty() {
                    self.stream.write_all(&reply).await?;
                }
            }
        }
        Ok(())
    }

    /// Reads the next console output into `out`; `false` at end of stream.
    /// Not cancel-safe (see [`BackendConnection::read_raw`]).
    pub async fn read(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            let n = self.read_raw().await?;
            if n == 0 {
                return Ok(false);
            }
            self.decode(n, out).await?;
            if !out.is_empty() {
                return Ok(true);
            }
        }
    }

    /// Writes console input.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &self.protocol {
            Protocol::Raw => self.stream.write_all(data).await,
            Protocol::InBandBreak => {
                let mut escaped = Vec::with_capacity(data.len() + 4);
                for &b in data {
                    escaped.push(b);
                    if b == super::telnet::IAC {
                        escaped.push(b);
                    }
                }
                self.stream.write_all(&escaped).await
            }
            Protocol::Telnet(codec) => {
                let mut encoded = Vec::with_capacity(data.len() + 8);
                codec.encode(data, &mut encoded);
                self.stream.write_all(&encoded).await
            }
        }?;
        self.stream.flush().await
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
