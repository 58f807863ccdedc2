//! The outer hop's socket, with delayed ACKs turned off after short reads.
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
//!
//! Only after short reads, though: the messages Nagle holds back are small
//! (key exchange, authentication, keystrokes), and russh reads each packet
//! as its 4-byte length and then its body, so a short read is always seen
//! at the start of a packet. A bulk transfer's long bodies (a VNC tunnel, a
//! paste) no longer pay a second `setsockopt` each: one per packet instead
//! of two (BENCHMARKS.md, "Second round").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads of fewer bytes than this are acknowledged at once: well above any
/// handshake or interactive message, well below a transfer's packet body.
const SHORT_READ: usize = 4096;

/// Whether a read of `n` bytes should be acknowledged at once.
fn acknowledge_now(n: usize) -> bool {
    n > 0 && n < SHORT_READ
}

/// A [`TcpStream`] that acknowledges short reads without delay.
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
        if matches!(polled, Poll::Ready(Ok(()))) && acknowledge_now(buf.filled().len() - before) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_and_keystroke_reads_are_acknowledged_at_once_transfers_are_not() {
        // A keystroke in a chacha20-poly1305 packet, a KEXINIT, an RSA
        // public key authentication request.
        for n in [36, 1_500, 1_100] {
            assert!(acknowledge_now(n), "{n} bytes");
        }
        // Bodies of a transfer's packets (russh sends up to 32 KiB).
        for n in [SHORT_READ, 16 * 1024, 32 * 1024 + 28] {
            assert!(!acknowledge_now(n), "{n} bytes");
        }
        // End of stream: nothing to acknowledge.
        assert!(!acknowledge_now(0));
    }
}
