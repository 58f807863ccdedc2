//! Why a web console session must end, decided once by whichever of its
//! watchers sees it first: the token re-check (revoked, expired, store
//! lost), the socket itself (silent peer, refused frame), or the gateway
//! cutting every session. The serial console hands [`Ending::cut`] to the
//! attach core in place of the gateway-wide cut, so the session ends there
//! with the reason (shown, recorded, in its Detach row); the VNC copy
//! stops on [`Ending::ended`]. The socket's close frame carries the code.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

/// Longest close reason a close frame carries (125 bytes less the code).
const MAX_CLOSE_REASON: usize = 123;

/// Why a session ends, and how its socket's close frame says so.
#[derive(Debug, Clone)]
pub(super) struct Verdict {
    /// The WebSocket close code (RFC 6455 7.4).
    pub code: u16,
    /// What the user is told, the log and the audit trail say (it starts
    /// with a runbook code).
    pub reason: Arc<str>,
}

impl Verdict {
    /// A session ended with close `code` for `reason`.
    pub fn new(code: u16, reason: impl Into<Arc<str>>) -> Verdict {
        Verdict {
            code,
            reason: reason.into(),
        }
    }

    /// The reason as a close frame can carry it: cut to 123 bytes, on a
    /// character boundary.
    pub fn close_reason(&self) -> &str {
        let mut end = self.reason.len().min(MAX_CLOSE_REASON);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        &self.reason[..end]
    }
}

/// One session's ending; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Ending {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    verdict: OnceLock<Verdict>,
    /// Set with the reason once the verdict is in (the attach core's cut).
    cut: watch::Sender<Option<Arc<str>>>,
}

impl Ending {
    /// A session that has no reason to end yet.
    pub fn new() -> Ending {
        Ending {
            shared: Arc::new(Shared {
                verdict: OnceLock::new(),
                cut: watch::channel(None).0,
            }),
        }
    }

    /// Ends the session for `verdict`, unless it is ending already (the
    /// first reason stands); whether this one was the first.
    pub fn end(&self, verdict: Verdict) -> bool {
        let reason = verdict.reason.clone();
        if self.shared.verdict.set(verdict).is_err() {
            return false;
        }
        self.shared.cut.send_replace(Some(reason));
        true
    }

    /// Why the session ends, once it must.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.shared.verdict.get()
    }

    /// Set with the reason once the session must end: the attach core's
    /// `cut`.
    pub fn cut(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.shared.cut.subscribe()
    }

    /// Resolves, with the reason, once the session must end.
    pub async fn ended(&self) -> Arc<str> {
        let mut cut = self.cut();
        let reason = cut
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // Not while `self` holds the sender.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_verdict_stands_and_wakes_the_waiters() {
        let ending = Ending::new();
        assert!(ending.verdict().is_none());
        let waiting = tokio::spawn({
            let ending = ending.clone();
            async move { ending.ended().await }
        });
        assert!(ending.end(Verdict::new(1008, "CG-WEB-009 first")));
        assert!(!ending.end(Verdict::new(1001, "CG-WEB-007 second")));
        assert_eq!(&*waiting.await.unwrap(), "CG-WEB-009 first");
        assert_eq!(ending.verdict().unwrap().code, 1008);
        assert_eq!(ending.cut().borrow().as_deref(), Some("CG-WEB-009 first"));
    }

    #[test]
    fn a_close_reason_fits_a_close_frame() {
        let long = Verdict::new(1008, "é".repeat(100));
        assert!(long.close_reason().len() <= MAX_CLOSE_REASON);
        assert_eq!(
            long.close_reason().len(),
            122,
            "cut on a character boundary"
        );
        assert_eq!(Verdict::new(1000, "bye").close_reason(), "bye");
    }
}
