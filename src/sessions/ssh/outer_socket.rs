//! The outer hop's socket: reads ahead, and acknowledges short arrivals
//! without delay.
//!
//! **Reading ahead.** russh reads each packet as its 4-byte length and then
//! its body, each read a `recvfrom` of its own, and one more that finds the
//! socket empty. Reads shorter than [`DIRECT`] are served from a buffer
//! filled with whatever the socket holds: up to [`SHORT_READ`] bytes, or
//! [`AHEAD`] while a transfer is under way (the last arrival filled at
//! least [`SHORT_READ`]). A keystroke's packet then costs one `recvfrom`
//! instead of three: the fill takes it whole, and a fill shorter than its
//! room tells tokio the socket is drained, so the next read waits without
//! asking the kernel again. A transfer's 32 KiB packets cost about one
//! `recvfrom` per 64 KiB. The buffer is given back whenever a read has to
//! wait, so an idle session holds none.
//!
//! **Quick ACKs.** OpenSSH's client leaves Nagle's algorithm on for
//! connections without a terminal, which is exactly the outer hop (`ssh -W`
//! in the `connectionString`'s ProxyCommand). During the handshake it
//! writes its KEXINIT and, right behind it, its key exchange init: Nagle
//! holds the second message until the first is acknowledged, and Linux,
//! having just sent our own KEXINIT, delays that acknowledgement for 40 ms.
//! Three out of four connections paid that stall on the time to console.
//! Setting `TCP_QUICKACK` after a read acknowledges at once; the kernel
//! leaves quick-ACK mode on its own, hence after each read (one
//! `setsockopt`). Only after short arrivals, though ([`SHORT_READ`]): the
//! messages Nagle holds back are small (key exchange, authentication,
//! keystrokes), while a transfer's full segments are what delayed ACKs are
//! for (BENCHMARKS.md, "Second round").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads asking for at least this much go straight to the socket.
const DIRECT: usize = 16 * 1024;
/// The most one fill takes from the socket while a transfer is under way.
const AHEAD: usize = 64 * 1024;
/// Arrivals of fewer bytes than this are acknowledged at once: well above
/// any handshake or interactive message, well below a busy stream's fill.
/// It is also the most one fill takes while the stream is interactive: a
/// fill that takes all of it starts a transfer.
const SHORT_READ: usize = 4096;

/// Whether an arrival of `n` bytes should be acknowledged at once.
fn acknowledge_now(n: usize) -> bool {
    n > 0 && n < SHORT_READ
}

/// A [`TcpStream`] that reads ahead for short reads and acknowledges short
/// arrivals without delay.
pub struct OuterSocket {
    socket: TcpStream,
    /// Bytes read ahead and not yet handed out. Without capacity while the
    /// stream is idle.
    buffer: BytesMut,
    /// Whether the last arrival was long: a transfer is under way, and
    /// short reads are worth reading further ahead for.
    busy: bool,
}

impl OuterSocket {
    pub fn new(socket: TcpStream) -> OuterSocket {
        OuterSocket {
            socket,
            buffer: BytesMut::new(),
            busy: false,
        }
    }

    fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        {
            // Best effort: a failure only costs latency.
            let _ = socket2::SockRef::from(&self.socket).set_tcp_quickack(true);
        }
    }

    /// Hands out what was read ahead.
    fn serve(&mut self, dst: &mut ReadBuf<'_>) {
        let n = self.buffer.len().min(dst.remaining());
        dst.put_slice(&self.buffer[..n]);
        self.buffer.advance(n);
    }

    /// Gives the buffer's memory back (it holds nothing unread).
    fn release(&mut self) {
        self.buffer = BytesMut::new();
    }

    /// Fills the empty buffer with up to `room` bytes from the socket:
    /// `Ok(0)` at the end of the stream. tokio's read marks the socket
    /// drained when it returns less than the room, so the next fill waits
    /// for the next arrival without a `recvfrom` that finds nothing. While
    /// the socket is not readable, the buffer is given back: a read that
    /// waits holds no memory.
    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        self.buffer.clear();
        self.buffer.reserve(room);
        let polled = {
            // A window of exactly `room` bytes: `reserve` may give more.
            let mut window = (&mut self.buffer).limit(room);
            tokio_util::io::poll_read_buf(Pin::new(&mut self.socket), cx, &mut window)
        };
        match polled {
            Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(Ok(n)),
            Poll::Ready(other) => {
                self.release();
                Poll::Ready(other)
            }
            Poll::Pending => {
                self.release();
                Poll::Pending
            }
        }
    }
}

impl AsyncRead for OuterSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buffer.is_empty() {
            this.serve(dst);
            return Poll::Ready(Ok(()));
        }
        let n = if dst.remaining() < DIRECT {
            let room = if this.busy { AHEAD } else { SHORT_READ };
            let n = ready!(this.poll_fill(cx, room))?;
            this.serve(dst);
            n
        } else {
            let before = dst.filled().len();
            let polled = Pin::new(&mut this.socket).poll_read(cx, dst);
            if polled.is_pending() {
                this.release();
            }
            ready!(polled)?;
            dst.filled().len() - before
        };
        this.busy = n >= SHORT_READ;
        if acknowledge_now(n) {
            this.ack_now();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for OuterSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (OuterSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (OuterSocket::new(server), client)
    }

    #[test]
    fn handshake_and_keystroke_arrivals_are_acknowledged_at_once_transfers_are_not() {
        // A keystroke in a chacha20-poly1305 packet, a KEXINIT, an RSA
        // public key authentication request.
        for n in [76, 1_500, 1_100] {
            assert!(acknowledge_now(n), "{n} bytes");
        }
        // What a busy stream's fill or direct read takes.
        for n in [SHORT_READ, DIRECT, AHEAD] {
            assert!(!acknowledge_now(n), "{n} bytes");
        }
        // End of stream: nothing to acknowledge.
        assert!(!acknowledge_now(0));
    }

    #[tokio::test]
    async fn packets_read_as_length_then_body_come_out_whole_and_in_order() {
        let (mut ours, mut peer) = pair().await;
        // Packets of every size around the thresholds, as russh reads them:
        // a 4-byte length, then exactly that many bytes.
        let sizes = [
            1usize, 72, 4095, 4096, 16_383, 16_384, 32_768, 65_536, 70_000, 3,
        ];
        let mut sent = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            sent.extend_from_slice(&(size as u32).to_be_bytes());
            sent.extend((0..size).map(|j| (i * 31 + j) as u8));
        }
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                peer.write_all(&sent).await.unwrap();
                peer
            }
        });
        let mut got = Vec::new();
        for _ in sizes {
            let mut len = [0u8; 4];
            ours.read_exact(&mut len).await.unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            ours.read_exact(&mut body).await.unwrap();
            got.extend_from_slice(&len);
            got.extend_from_slice(&body);
        }
        assert_eq!(got, sent);
        // The end of the stream reads as such, and holds nothing either.
        drop(writer.await.unwrap());
        let mut rest = [0u8; 4];
        assert_eq!(ours.read(&mut rest).await.unwrap(), 0);
        assert_eq!(ours.buffer.capacity(), 0);
    }

    #[tokio::test]
    async fn after_a_long_arrival_short_reads_come_from_one_fill() {
        let (mut ours, mut peer) = pair().await;
        let mut sent = vec![7u8; 32 * 1024];
        for k in 0..3u8 {
            sent.extend_from_slice(&[0, 0, 0, 1, k]);
        }
        peer.write_all(&sent).await.unwrap();
        peer.flush().await.unwrap();
        // Loopback has queued all of it: the long read takes 32 KiB at once.
        let mut body = vec![0u8; 32 * 1024];
        ours.read_exact(&mut body).await.unwrap();
        assert!(ours.busy);
        // The next length read fills the buffer with the three packets.
        let mut len = [0u8; 4];
        ours.read_exact(&mut len).await.unwrap();
        assert_eq!(len, [0, 0, 0, 1]);
        assert_eq!(ours.buffer.len(), 11, "read ahead");
        let mut rest = vec![0u8; 11];
        ours.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 2]);
        assert!(!ours.busy, "a short fill ends the transfer");
        // Drained, the next short read waits without a buffer.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            ours.read_exact(&mut len),
        )
        .await;
        assert!(waiting.is_err());
        assert_eq!(ours.buffer.capacity(), 0);
    }

    #[tokio::test]
    async fn a_keystroke_packet_is_taken_whole_by_the_length_read() {
        let (mut ours, mut peer) = pair().await;
        // A chacha20-poly1305 packet carrying one keystroke: 4 + 32 bytes.
        let mut packet = vec![0, 0, 0, 32];
        packet.extend(1..=32u8);
        peer.write_all(&packet).await.unwrap();
        let mut len = [0u8; 4];
        ours.read_exact(&mut len).await.unwrap();
        assert_eq!(len, [0, 0, 0, 32]);
        // One fill took the body too: the body read asks the socket nothing.
        assert_eq!(&ours.buffer[..], &packet[4..]);
        assert!(!ours.busy);
        let mut body = [0u8; 32];
        ours.read_exact(&mut body).await.unwrap();
        assert_eq!(&body[..], &packet[4..]);
        // An interactive fill takes at most SHORT_READ, and one that takes
        // all of it starts a transfer.
        peer.write_all(&vec![5u8; 3 * SHORT_READ]).await.unwrap();
        let mut first = [0u8; 4];
        ours.read_exact(&mut first).await.unwrap();
        assert_eq!(ours.buffer.len(), SHORT_READ - 4);
        assert!(ours.busy);
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer_while_a_read_waits() {
        let (mut ours, mut peer) = pair().await;
        peer.write_all(b"SSH-2.0-x\r\n").await.unwrap();
        let mut id = [0u8; 11];
        ours.read_exact(&mut id).await.unwrap();
        assert_eq!(&id, b"SSH-2.0-x\r\n");
        // A read that waits for bytes that do not come yet.
        let mut len = [0u8; 4];
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            ours.read_exact(&mut len),
        )
        .await;
        assert!(waiting.is_err(), "nothing was sent");
        assert_eq!(ours.buffer.capacity(), 0);
        // And it still reads what comes later.
        peer.write_all(&[0, 0, 0, 9]).await.unwrap();
        ours.read_exact(&mut len).await.unwrap();
        assert_eq!(len, [0, 0, 0, 9]);
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"SSH-2.0-consolegate\r\n").await.unwrap();
        ours.flush().await.unwrap();
        let mut got = [0u8; 21];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"SSH-2.0-consolegate\r\n");
    }
}
