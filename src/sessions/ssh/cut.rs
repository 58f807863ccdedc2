//! A stream the gateway can cut from outside.
//!
//! russh runs each SSH session in a task of its own, holding the stream,
//! and a disconnect sent through its handle waits for the session loop,
//! which a client stalled in the middle of a key exchange never lets run.
//! Once a deadline has passed and a goodbye has had its time, the
//! connection's supervisor cancels the token: every read and write of the
//! stream then fails, the session task ends, and the socket (or, on the
//! inner hop, the outer channel) is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// `S`, until its token is cancelled.
pub(super) struct Cuttable<S> {
    inner: S,
    token: CancellationToken,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Cuttable<S> {
    /// Wraps `inner`; cancelling `token` cuts it.
    pub fn new(inner: S, token: CancellationToken) -> Self {
        Cuttable {
            inner,
            cut: Box::pin(token.clone().cancelled_owned()),
            token,
        }
    }

    /// `op` on the inner stream, unless the stream is cut: an error once
    /// the token is cancelled, also while `op` is pending (the cut wakes
    /// the task).
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(cut_error()));
        }
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Pending if self.cut.as_mut().poll(cx).is_ready() => Poll::Ready(Err(cut_error())),
            other => other,
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "cut by the gateway")
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, |s, cx| s.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().guard(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_ends_a_pending_read_and_every_write() {
        let (a, mut b) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        let mut a = Cuttable::new(a, token.clone());
        b.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"before");
        // A read waiting for bytes that never come ends at the cut.
        let cutter = tokio::spawn(async move {
            tokio::task::yield_now().await;
            token.cancel();
        });
        let err = a.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        cutter.await.unwrap();
        assert!(a.write_all(b"after").await.is_err());
    }
}
