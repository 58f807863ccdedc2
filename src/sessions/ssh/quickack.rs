//! The outer hop's socket, with delayed ACKs turned off after every read.
//!
//! OpenSSH's client leaves Nagle's algorithm on for connections without a
//! terminal, which is exactly the outer hop (`ssh -W` in the
//! `connectionString`'s ProxyCommand). During the handshake it writes its
//! KEXINIT and, right behind it, its key exchange init: Nagle holds the
//! second message until the first is acknowledged, and Linux, having just
//! sent our own KEXINIT, delays that acknowledgement for 40 ms. Three out of
//! four connections paid that stall on the time to console. Setting
//! `TCP_QUICKACK` after each read acknowledges at once; the kernel leaves
//! quick-ACK mode on its own, hence once per read (one `setsockopt`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A [`TcpStream`] that acknowledges what it reads without delay.
pub struct QuickAck(TcpStream);

impl QuickAck {
    pub fn new(socket: TcpStream) -> QuickAck {
        QuickAck(socket)
    }

    fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        {
            // Best effort: a failure only costs latency.
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.ack_now();
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
