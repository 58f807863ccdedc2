//! An open web console re-checks its console token, as an SSH session
//! re-checks its connection record: every `[ssh] revalidate_interval_secs`
//! it reads the token's [standing](ConsoleTokens::standing). Spent (single
//! use) is fine; revoked ends the session (CG-WEB-009), and so does its
//! expiry, at the minute it comes (CG-WEB-011), the serial console being
//! warned `[session] timeout_warning_secs` before (CG-WEB-010), as for the
//! session timeouts. A store that cannot be read is the SSH path's rule:
//! CG-STORE-002 each time, and past `[cluster] store_lost_secs` the
//! session ends (CG-STORE-003) unless `store_lost = "keep"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::close_code;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ending::{Ending, Verdict};
use crate::config::Config;
use crate::connections::ConsoleTokens;
use crate::connections::tokens::{Redeemed, TokenStanding};
use crate::console::timeouts::human;
use crate::sessions::attach::notice;
use crate::sessions::ssh::unchecked_too_long;

/// The serial console's warning before its token expires.
#[derive(Debug)]
pub(super) struct ExpiryWarning {
    /// How long before.
    pub before: Duration,
    /// Where the notice goes (shown between frames).
    pub notices: mpsc::Sender<Bytes>,
}

/// What one session's token watch needs.
#[derive(Debug)]
pub(super) struct TokenWatch {
    /// The token service.
    pub tokens: ConsoleTokens,
    /// The token the session was opened with.
    pub redeemed: Redeemed,
    /// The configuration the session was opened under.
    pub config: Arc<Config>,
    /// The browser's address, for the log.
    pub peer: SocketAddr,
    /// Set for the serial console; VNC has no room for words.
    pub warning: Option<ExpiryWarning>,
}

impl TokenWatch {
    /// Watches the token until the session must end, then tells `ending`
    /// why; never returns (the session ends around it).
    pub async fn run(self, ending: &Ending) {
        if let Some(verdict) = self.verdict().await {
            ending.end(verdict);
        }
        std::future::pending::<()>().await;
    }

    /// Why the session must end, once it must.
    async fn verdict(mut self) -> Option<Verdict> {
        let token = &self.redeemed.token_id;
        let instance = &self.redeemed.instance.id;
        let peer = self.peer;
        let mut expires = expiry_instant(self.redeemed.expires_at_ms);
        let every = self.config.ssh.revalidate_interval();
        let mut recheck = tokio::time::interval_at(Instant::now() + every, every);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Since when the token could not be read, re-check after re-check.
        let mut unchecked_since: Option<Instant> = None;
        loop {
            let warn_at = self
                .warning
                .as_ref()
                .map(|w| expires.checked_sub(w.before).unwrap_or(expires));
            // Expiry first: a warning due at the same time is moot.
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(expires) => {
                    tracing::info!(code = "CG-WEB-011", token = %token, %instance, %peer,
                        "console token expired; closing its web console");
                    return Some(Verdict::new(close_code::POLICY,
                        "CG-WEB-011 the console token expired: session closed (ask for a new console URL)"));
                }
                _ = recheck.tick() => {}
                () = sleep_until_some(warn_at) => {
                    if let Some(w) = self.warning.take() {
                        let left = expires.saturating_duration_since(Instant::now());
                        let text = format!(
                            "CG-WEB-010 this console's token expires in {}: the session will be \
                             closed then (ask for a new console URL to go on)",
                            human(left.max(Duration::from_secs(1)))
                        );
                        let _ = w.notices.try_send(Bytes::from(notice(&text)));
                    }
                    continue;
                }
            }
            match self.tokens.standing(&self.redeemed).await {
                Ok(TokenStanding::Valid { expires_at_ms }) => {
                    expires = expiry_instant(expires_at_ms);
                    unchecked_since = None;
                }
                Ok(TokenStanding::Revoked) => {
                    tracing::info!(code = "CG-WEB-009", token = %token, %instance, %peer,
                        "console token revoked; closing its web console");
                    return Some(Verdict::new(
                        close_code::POLICY,
                        "CG-WEB-009 the console token was revoked: session closed",
                    ));
                }
                // Its expiry passes here first, bar clock steps.
                Ok(TokenStanding::Expired) => expires = Instant::now(),
                Err(e) => {
                    tracing::warn!(code = "CG-STORE-002", token = %token, error = %e,
                        "could not re-check a web console's token");
                    let since = *unchecked_since.get_or_insert_with(Instant::now);
                    if unchecked_too_long(&self.config, since.elapsed()) {
                        tracing::warn!(code = "CG-STORE-003", token = %token, %instance, %peer,
                            "console token not re-checked for store_lost_secs; closing its web console");
                        return Some(Verdict::new(
                            close_code::AGAIN,
                            "CG-STORE-003 the console token could not be re-checked (the store \
                             is unreachable); reconnect when it is back",
                        ));
                    }
                }
            }
        }
    }
}

/// The instant of a Unix-milliseconds expiry.
fn expiry_instant(expires_at_ms: i64) -> Instant {
    let left = expires_at_ms.saturating_sub(crate::store::now_ms()).max(0);
    let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
    let now = Instant::now();
    // A lifetime past what an instant can hold is forever enough.
    now.checked_add(left)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// Sleeps until `at`; forever if `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
