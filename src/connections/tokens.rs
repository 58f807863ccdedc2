//! Console tokens: what a Nova console URL carries to the web consoles.
//!
//! A token is 160 random bits, handed out once and stored only as its
//! SHA-256. It is bound to one instance and one [`ConsoleProtocol`], expires
//! after `[nova] token_ttl_secs`, and is spent by its first use when
//! `[nova] single_use_tokens` is on (the default). [`ConsoleTokens`] is the
//! one place that issues, looks at, redeems and revokes them; the Nova API
//! issues and revokes, the web consoles peek and redeem, and an open web
//! console re-checks the [standing](ConsoleTokens::standing) of its token:
//! revoked or expired, the session ends.

use sha2::{Digest, Sha256};

use crate::config::{InstanceConfig, SharedConfig};
pub use crate::store::ConsoleProtocol;
use crate::store::{ConsoleToken, Store, StoreError};

/// Longest token accepted from a URL (issued ones are 32 characters).
const MAX_TOKEN: usize = 256;

/// SHA-256 of a token, lower-case hex: how the store knows it.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How the audit trail and `status` name a token: a prefix of its hash,
/// never the token itself.
pub fn token_id(token: &str) -> String {
    token_hash(token)[..12].to_owned()
}

/// Why a token does not open a console. Each says what the user sees.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefusal {
    /// No token in the URL (or an absurd one).
    #[error("CG-WEB-001 a console token is required (?token=…)")]
    Missing,
    /// Unknown, expired or already used.
    #[error("CG-WEB-002 the console token is invalid, expired or already used")]
    Invalid,
    /// A token for the other console (it is not spent).
    #[error("CG-WEB-003 this console token is for another kind of console")]
    OtherProtocol,
    /// The token's instance was removed from the config since.
    #[error("CG-WEB-004 the console token's instance is no longer configured")]
    UnknownInstance,
    /// The store could not be read: not the token's fault.
    #[error("CG-STORE-002 the gateway cannot read its store right now; retry")]
    Store(#[source] StoreError),
}

impl TokenRefusal {
    /// The runbook entry.
    pub fn code(&self) -> &'static str {
        match self {
            TokenRefusal::Missing => "CG-WEB-001",
            TokenRefusal::Invalid => "CG-WEB-002",
            TokenRefusal::OtherProtocol => "CG-WEB-003",
            TokenRefusal::UnknownInstance => "CG-WEB-004",
            TokenRefusal::Store(_) => "CG-STORE-002",
        }
    }
}

/// A redeemed token: what it opens, how to name it, and how to find it
/// again to see whether it still stands.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The token's instance, as configured now.
    pub instance: InstanceConfig,
    /// [`token_id`] of the token.
    pub token_id: String,
    /// When it expires, Unix milliseconds.
    pub expires_at_ms: i64,
    /// [`token_hash`] of the token.
    hash: String,
}

/// Where a redeemed token stands, for the session it opened: being spent
/// (single use) is not a reason to end that session, only revocation and
/// expiry are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStanding {
    /// It stands until `expires_at_ms` (Unix milliseconds).
    Valid {
        /// Expiry, Unix milliseconds.
        expires_at_ms: i64,
    },
    /// It was revoked (`DELETE /servers/{id}/consoles/{id}`).
    Revoked,
    /// It has expired.
    Expired,
}

/// The console-token operations over one store.
#[derive(Debug, Clone)]
pub struct ConsoleTokens {
    store: Store,
    config: SharedConfig,
}

impl ConsoleTokens {
    /// Tokens in `store`, with the lifetime and use rules of `config`'s `[nova]`.
    pub fn new(store: Store, config: SharedConfig) -> ConsoleTokens {
        ConsoleTokens { store, config }
    }

    /// The configuration in force: its `[nova]`, `[ssh]` and `[cluster]`
    /// rule the sessions tokens open.
    pub fn config(&self) -> std::sync::Arc<crate::config::Config> {
        self.config.get()
    }

    /// Issues a fresh token for `instance_id`'s `protocol` console.
    pub async fn issue(
        &self,
        instance_id: &str,
        protocol: ConsoleProtocol,
    ) -> Result<String, StoreError> {
        let token = crate::ids::random_token(20);
        let config = self.config.get();
        let record = ConsoleToken {
            instance_id: instance_id.to_owned(),
            protocol,
            single_use: config.nova.single_use_tokens,
            expires_at_ms: (time::OffsetDateTime::now_utc().unix_timestamp()
                + config.nova.token_ttl_secs as i64)
                * 1000,
        };
        self.store
            .create_console_token(&token_hash(&token), &record)
            .await?;
        Ok(token)
    }

    /// The live token `token` (unexpired, unspent), without spending it.
    pub async fn peek(&self, token: &str) -> Result<Option<ConsoleToken>, StoreError> {
        if token.is_empty() || token.len() > MAX_TOKEN {
            return Ok(None);
        }
        self.store.console_token(&token_hash(token)).await
    }

    /// The instance `token` would open a `protocol` console of, without
    /// spending it: a front end checks what it needs (a hub, a reachable
    /// display) before it redeems, so a failure of the gateway's own does
    /// not cost a single-use token.
    pub async fn check(
        &self,
        token: Option<&str>,
        protocol: ConsoleProtocol,
    ) -> Result<InstanceConfig, TokenRefusal> {
        let hash = Self::hash_of(token)?;
        let found = match self.store.console_token(&hash).await {
            Ok(Some(t)) if t.protocol == protocol => t,
            Ok(Some(_)) => return Err(TokenRefusal::OtherProtocol),
            Ok(None) => return Err(TokenRefusal::Invalid),
            Err(e) => return Err(TokenRefusal::Store(e)),
        };
        self.config
            .get()
            .instance(&found.instance_id)
            .cloned()
            .ok_or(TokenRefusal::UnknownInstance)
    }

    fn hash_of(token: Option<&str>) -> Result<String, TokenRefusal> {
        token
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
            .map(token_hash)
            .ok_or(TokenRefusal::Missing)
    }

    /// Takes `token` to open a `protocol` console: checked first, so a token
    /// for the other console is never spent; a single-use token is then
    /// spent in the same statement that finds it, so two sockets cannot
    /// both use it.
    pub async fn redeem(
        &self,
        token: Option<&str>,
        protocol: ConsoleProtocol,
    ) -> Result<Redeemed, TokenRefusal> {
        self.check(token, protocol).await?;
        let hash = Self::hash_of(token)?;
        let found = self
            .store
            .use_console_token(&hash)
            .await
            .map_err(TokenRefusal::Store)?
            .ok_or(TokenRefusal::Invalid)?;
        let instance = self
            .config
            .get()
            .instance(&found.instance_id)
            .cloned()
            .ok_or(TokenRefusal::UnknownInstance)?;
        Ok(Redeemed {
            instance,
            token_id: hash[..12].to_owned(),
            expires_at_ms: found.expires_at_ms,
            hash,
        })
    }

    /// Whether the token `redeemed` came from still stands, spent or not:
    /// what an open web console re-checks.
    pub async fn standing(&self, redeemed: &Redeemed) -> Result<TokenStanding, StoreError> {
        let now = crate::store::now_ms();
        Ok(
            match self.store.console_token_standing(&redeemed.hash).await? {
                Some(t) if t.expires_at_ms <= now => TokenStanding::Expired,
                Some(t) => TokenStanding::Valid {
                    expires_at_ms: t.expires_at_ms,
                },
                // Expired tokens are purged: gone past its expiry is expired.
                None if redeemed.expires_at_ms <= now => TokenStanding::Expired,
                None => TokenStanding::Revoked,
            },
        )
    }

    /// Revokes every outstanding token of `instance_id`'s `protocol` console.
    pub async fn revoke(
        &self,
        instance_id: &str,
        protocol: ConsoleProtocol,
    ) -> Result<u64, StoreError> {
        self.store
            .revoke_console_tokens(instance_id, protocol)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tokens(dir: &std::path::Path, nova: &str) -> ConsoleTokens {
        let config = crate::config::Config::from_toml(
            &format!("[[instance]]\nid = \"vm1\"\nserial = \"simulator\"\n[nova]\n{nova}"),
            dir,
            dir,
        )
        .unwrap();
        let store = Store::open_sqlite(&dir.join("t.db")).await.unwrap();
        ConsoleTokens::new(store, SharedConfig::new(std::sync::Arc::new(config)))
    }

    #[tokio::test]
    async fn a_spent_token_still_stands_for_its_session_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = tokens(dir.path(), "").await;
        let token = tokens.issue("vm1", ConsoleProtocol::Serial).await.unwrap();
        // Checking spends nothing; redeeming spends it (single use by default).
        tokens
            .check(Some(&token), ConsoleProtocol::Serial)
            .await
            .unwrap();
        let redeemed = tokens
            .redeem(Some(&token), ConsoleProtocol::Serial)
            .await
            .unwrap();
        assert!(matches!(
            tokens.check(Some(&token), ConsoleProtocol::Serial).await,
            Err(TokenRefusal::Invalid)
        ));
        assert_eq!(
            tokens.standing(&redeemed).await.unwrap(),
            TokenStanding::Valid {
                expires_at_ms: redeemed.expires_at_ms
            }
        );
        // Revoking the other console's tokens leaves it be; its own ends it.
        tokens.revoke("vm1", ConsoleProtocol::Vnc).await.unwrap();
        assert!(matches!(
            tokens.standing(&redeemed).await.unwrap(),
            TokenStanding::Valid { .. }
        ));
        tokens.revoke("vm1", ConsoleProtocol::Serial).await.unwrap();
        assert_eq!(
            tokens.standing(&redeemed).await.unwrap(),
            TokenStanding::Revoked
        );
    }

    #[tokio::test]
    async fn an_expired_token_stands_no_more_even_once_purged() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = tokens(dir.path(), "token_ttl_secs = 2\n").await;
        let token = tokens.issue("vm1", ConsoleProtocol::Vnc).await.unwrap();
        let redeemed = tokens
            .redeem(Some(&token), ConsoleProtocol::Vnc)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        assert_eq!(
            tokens.standing(&redeemed).await.unwrap(),
            TokenStanding::Expired
        );
        tokens.store.purge_console_tokens().await.unwrap();
        assert_eq!(
            tokens.standing(&redeemed).await.unwrap(),
            TokenStanding::Expired
        );
    }
}
