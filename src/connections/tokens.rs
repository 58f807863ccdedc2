//! Console tokens: what a Nova console URL carries to the web consoles.
//!
//! A token is 160 random bits, handed out once and stored only as its
//! SHA-256. It is bound to one instance and one [`ConsoleProtocol`], expires
//! after `[nova] token_ttl_secs`, and is spent by its first use when
//! `[nova] single_use_tokens` is on. [`ConsoleTokens`] is the one place that
//! issues, looks at, redeems and revokes them; the Nova API issues and
//! revokes, the web consoles peek and redeem.

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

/// A redeemed token: what it opens, and how to name it.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The token's instance, as configured now.
    pub instance: InstanceConfig,
    /// [`token_id`] of the token.
    pub token_id: String,
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

    /// Takes `token` to open a `protocol` console: checked first, so a token
    /// for the other console is never spent; a single-use token is then
    /// spent in the same statement that finds it, so two sockets cannot
    /// both use it.
    pub async fn redeem(
        &self,
        token: Option<&str>,
        protocol: ConsoleProtocol,
    ) -> Result<Redeemed, TokenRefusal> {
        let token = token
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
            .ok_or(TokenRefusal::Missing)?;
        let hash = token_hash(token);
        match self.store.console_token(&hash).await {
            Ok(Some(t)) if t.protocol == protocol => {}
            Ok(Some(_)) => return Err(TokenRefusal::OtherProtocol),
            Ok(None) => return Err(TokenRefusal::Invalid),
            Err(e) => return Err(TokenRefusal::Store(e)),
        }
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
        })
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
