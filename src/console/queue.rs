//! A bounded queue from one sender to one receiver in the same process:
//! the hub's queue of [`ConsoleEvent`](super::hub::ConsoleEvent)s for each
//! attached session, and a session's own queue of what its input side and
//! timer want shown.
//!
//! Not a tokio channel: tokio allocates a channel's first block of 32 slots
//! and a 512-byte shared part when the channel is made, 0.8–1.8 KB that
//! every attached session held per queue while idle. This queue's shared
//! part is a lock, a deque and two [`Notify`]s; the deque allocates while
//! it holds entries, and once the receiver has taken them all it is given
//! back unless it is small (room for up to [`KEPT`] entries: a session that
//! keeps up with steady output would otherwise allocate for every event).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// The most entries' room a drained queue keeps.
const KEPT: usize = 4;

/// Why an event was not queued.
#[derive(Debug)]
pub enum TrySendError<T> {
    /// The queue holds its bound; the entry is handed back.
    Full(T),
    /// The session is gone.
    Closed,
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued now.
    Empty,
    /// Nothing queued, and the hub is gone.
    Disconnected,
}

struct State<T> {
    events: VecDeque<T>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    bound: usize,
    /// Wakes the receiver: an event was queued, or the sender is gone.
    to_receiver: Notify,
    /// Wakes the sender waiting for room: a full queue gave up an event,
    /// or the receiver is gone.
    to_sender: Notify,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A queue holding at most `bound` entries.
pub fn queue<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            events: VecDeque::new(),
            sender_gone: false,
            receiver_gone: false,
        }),
        bound: bound.max(1),
        to_receiver: Notify::new(),
        to_sender: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The sending end.
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `event` now, or says why not.
    pub fn try_send(&self, event: T) -> Result<(), TrySendError<T>> {
        let mut state = self.0.state();
        if state.receiver_gone {
            return Err(TrySendError::Closed);
        }
        if state.events.len() >= self.0.bound {
            return Err(TrySendError::Full(event));
        }
        let was_empty = state.events.is_empty();
        state.events.push_back(event);
        drop(state);
        // The receiver waits only once it has found the queue empty.
        if was_empty {
            self.0.to_receiver.notify_one();
        }
        Ok(())
    }

    /// Queues `event` once there is room; hands it back if the receiver is
    /// gone. Dropping the future drops the entry.
    pub async fn send(&self, event: T) -> Result<(), T> {
        let mut event = Some(event);
        loop {
            {
                let mut state = self.0.state();
                if state.receiver_gone {
                    return Err(event.take().expect("held until sent"));
                }
                if state.events.len() < self.0.bound {
                    state.events.extend(event.take());
                    drop(state);
                    self.0.to_receiver.notify_one();
                    return Ok(());
                }
            }
            // A permit stored by a `notify_one` while no one waited wakes
            // this at once: room made in between is not missed.
            self.0.to_sender.notified().await;
        }
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.state().receiver_gone
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.state().sender_gone = true;
        self.0.to_receiver.notify_one();
    }
}

/// The receiving end.
pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

impl<T> Receiver<T> {
    /// Takes the next entry, or says why there is none.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.0.state();
        let was_full = state.events.len() >= self.0.bound;
        match state.events.pop_front() {
            Some(event) => {
                if state.events.is_empty() && state.events.capacity() > KEPT {
                    // An idle receiver holds no more than a small buffer.
                    state.events = VecDeque::new();
                }
                drop(state);
                if was_full {
                    self.0.to_sender.notify_one();
                }
                Ok(event)
            }
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next entry; `None` once the sender is gone and every entry
    /// queued before has been taken. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(event) => return Some(event),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.0.to_receiver.notified().await,
            }
        }
    }

    /// Whether the sender is gone.
    pub fn is_closed(&self) -> bool {
        self.0.state().sender_gone
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.receiver_gone = true;
        state.events = VecDeque::new();
        drop(state);
        self.0.to_sender.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::FutureExt;

    use super::*;
    use crate::console::hub::ConsoleEvent;

    fn output(n: usize) -> ConsoleEvent {
        ConsoleEvent::Output(Bytes::from(n.to_string()))
    }

    fn text(event: Option<ConsoleEvent>) -> String {
        match event {
            Some(ConsoleEvent::Output(b)) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("not output: {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_up_to_the_bound_and_a_large_buffer_is_given_back() {
        let (tx, mut rx) = queue(16);
        for n in 0..16 {
            tx.try_send(output(n)).unwrap();
        }
        assert!(matches!(
            tx.try_send(output(16)),
            Err(TrySendError::Full(_))
        ));
        for n in 0..16 {
            assert_eq!(text(rx.recv().await), n.to_string());
        }
        assert_eq!(
            rx.0.state().events.capacity(),
            0,
            "a drained queue kept its buffer"
        );
        // One event at a time: the small buffer stays.
        for n in 0..3 {
            tx.try_send(output(n)).unwrap();
            assert_eq!(text(rx.recv().await), n.to_string());
        }
        let kept = rx.0.state().events.capacity();
        assert!((1..=KEPT).contains(&kept), "{kept}");
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        assert!(
            rx.recv().now_or_never().is_none(),
            "recv returned from an empty queue"
        );
    }

    #[tokio::test]
    async fn the_session_reads_what_was_queued_before_the_hub_left_then_none() {
        let (tx, mut rx) = queue(4);
        tx.try_send(output(1)).unwrap();
        assert!(!rx.is_closed());
        drop(tx);
        assert!(rx.is_closed());
        assert_eq!(text(rx.recv().await), "1");
        assert!(rx.recv().await.is_none());
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    }

    #[tokio::test]
    async fn a_session_gone_closes_the_queue_and_frees_what_it_held() {
        let (tx, rx) = queue(4);
        tx.try_send(output(1)).unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.0.state().events.capacity(), 0);
        assert!(matches!(tx.try_send(output(2)), Err(TrySendError::Closed)));
        assert!(tx.send(output(3)).await.is_err());
    }

    /// Fills `tx`'s queue of two with `n` and `n + 1`, then sends `n + 2`
    /// from another task, which has had its turn when this returns.
    async fn fill_then_send(
        tx: &Arc<Sender<ConsoleEvent>>,
        n: usize,
    ) -> tokio::task::JoinHandle<bool> {
        tx.try_send(output(n)).unwrap();
        tx.try_send(output(n + 1)).unwrap();
        let tx = tx.clone();
        let sender = tokio::spawn(async move { tx.send(output(n + 2)).await.is_ok() });
        tokio::task::yield_now().await;
        sender
    }

    #[tokio::test]
    async fn a_send_into_a_full_queue_waits_for_room_or_for_the_session_to_go() {
        let (tx, mut rx) = queue(2);
        let tx = Arc::new(tx);
        let sender = fill_then_send(&tx, 0).await;
        assert!(!sender.is_finished(), "a send into a full queue returned");
        assert_eq!(text(rx.recv().await), "0");
        assert!(
            sender.await.unwrap(),
            "the send did not go through once there was room"
        );
        assert_eq!(text(rx.recv().await), "1");
        assert_eq!(text(rx.recv().await), "2");

        let sender = fill_then_send(&tx, 3).await;
        drop(rx);
        assert!(!sender.await.unwrap(), "a send to a session gone succeeded");
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_for_an_event_sent_from_another_task() {
        let (tx, mut rx) = queue(2);
        let receiver = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(output(7)).unwrap();
        assert_eq!(text(receiver.await.unwrap()), "7");
    }
}
