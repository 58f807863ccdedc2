//! The part of russh-util 0.52's API that russh 0.65 uses, for native
//! targets: `runtime::{spawn, JoinHandle, JoinError}` and `time::Instant`.
//!
//! The published `runtime::spawn` runs the future inside another `async`
//! block that awaits it and sends the result through a oneshot channel.
//! rustc keeps the awaited future and the block's captured copy of it in
//! separate places of the block's state, so every russh connection task
//! (`Session::run`, about 12.6 KB) takes twice its size in memory for as
//! long as the connection lives. Here the future is handed to
//! `tokio::spawn` as it is, and the handle is tokio's own.

pub mod runtime {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// The task ended without a result: it panicked or its runtime shut
    /// down first.
    #[derive(Debug)]
    pub struct JoinError;

    impl std::fmt::Display for JoinError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JoinError")
        }
    }

    impl std::error::Error for JoinError {}

    /// Resolves to the spawned future's output. Dropping it leaves the task
    /// running, as with russh-util's handle.
    pub struct JoinHandle<T>
    where
        T: Send,
    {
        task: tokio::task::JoinHandle<T>,
    }

    /// Runs `future` on the current tokio runtime, stored once.
    pub fn spawn<F, T>(future: F) -> JoinHandle<T>
    where
        F: Future<Output = T> + 'static + Send,
        T: Send + 'static,
    {
        JoinHandle {
            task: tokio::spawn(future),
        }
    }

    impl<T> Future for JoinHandle<T>
    where
        T: Send,
    {
        type Output = Result<T, JoinError>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            Pin::new(&mut self.task)
                .poll(cx)
                .map(|result| result.map_err(|_| JoinError))
        }
    }
}

pub mod time {
    pub use std::time::Instant;
}

#[cfg(test)]
mod tests {
    use super::runtime::{JoinError, spawn};
    use std::mem::size_of_val;

    /// A future with a large state, like russh's connection task.
    async fn big() -> u8 {
        let block = [7u8; 4096];
        tokio::task::yield_now().await;
        block[4095]
    }

    #[tokio::test]
    async fn the_handle_resolves_to_the_output() {
        assert_eq!(spawn(big()).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panicking_task_gives_a_join_error() {
        let handle = spawn(async { panic!("the task fails") });
        let result: Result<(), JoinError> = handle.await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn a_dropped_handle_leaves_the_task_running() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(spawn(async move {
            tokio::task::yield_now().await;
            tx.send(1u8).unwrap();
        }));
        assert_eq!(rx.await.unwrap(), 1);
    }

    /// The reason for this crate: the wrapping `async` block of the published
    /// `spawn` is at least twice the size of the future it wraps.
    #[test]
    fn an_awaiting_wrapper_stores_the_future_twice() {
        let future = big();
        let inner = size_of_val(&future);
        let wrapper = async move {
            let _ = future.await;
        };
        assert!(inner >= 4096);
        assert!(
            size_of_val(&wrapper) >= 2 * inner,
            "rustc now overlaps the two copies: this crate can go"
        );
    }
}
