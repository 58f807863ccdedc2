//! Console tokens of the Nova-compatible API: short-lived, stored hashed,
//! bound to one instance and one protocol, optionally single use.

use super::row::StoreRow;

use super::{Store, StoreError, now_ms};

/// Which console a token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleProtocol {
    /// The serial console (`/serial`).
    Serial,
    /// The VNC display (`/websockify`).
    Vnc,
}

impl ConsoleProtocol {
    /// The stored (and Nova) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleProtocol::Serial => "serial",
            ConsoleProtocol::Vnc => "vnc",
        }
    }

    /// The protocol spelled `s`, if it is one consolegate serves.
    pub fn parse(s: &str) -> Option<ConsoleProtocol> {
        match s {
            "serial" => Some(ConsoleProtocol::Serial),
            "vnc" => Some(ConsoleProtocol::Vnc),
            _ => None,
        }
    }
}

impl std::fmt::Display for ConsoleProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A console token as stored (its hash is the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleToken {
    /// The instance it opens.
    pub instance_id: String,
    /// The console it opens.
    pub protocol: ConsoleProtocol,
    /// Whether it opens only one connection.
    pub single_use: bool,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

impl Store {
    /// Stores a token (by its hash).
    pub async fn create_console_token(
        &self,
        token_sha256: &str,
        token: &ConsoleToken,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO console_tokens (token_sha256, instance_id, protocol, single_use, expires_at, time_created) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_sha256)
        .bind(&token.instance_id)
        .bind(token.protocol.as_str())
        .bind(token.single_use)
        .bind(token.expires_at_ms)
        .bind(now_ms())
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// A live token (not expired, and unused if single use), without using it.
    pub async fn console_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<ConsoleToken>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT instance_id, protocol, single_use, expires_at FROM console_tokens \
             WHERE token_sha256 = $1 AND expires_at > $2 AND NOT (single_use AND used)",
            )
            .bind(token_sha256)
            .bind(now_ms())
            .fetch_optional(pool)
            .await?;
            row.map(|r| decode(&r)).transpose()
        })
    }

    /// A token as stored, expired or spent or not: what an open web
    /// console re-reads to learn whether its token still stands. `None`
    /// once it is gone (revoked, or purged after its expiry).
    pub async fn console_token_standing(
        &self,
        token_sha256: &str,
    ) -> Result<Option<ConsoleToken>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT instance_id, protocol, single_use, expires_at FROM console_tokens \
             WHERE token_sha256 = $1",
            )
            .bind(token_sha256)
            .fetch_optional(pool)
            .await?;
            row.map(|r| decode(&r)).transpose()
        })
    }

    /// Takes a live token to open a console: a single-use token is marked
    /// used in the same statement, so two connections cannot both use it.
    pub async fn use_console_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<ConsoleToken>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "UPDATE console_tokens SET used = TRUE \
             WHERE token_sha256 = $1 AND expires_at > $2 AND NOT (single_use AND used) \
             RETURNING instance_id, protocol, single_use, expires_at",
            )
            .bind(token_sha256)
            .bind(now_ms())
            .fetch_optional(pool)
            .await?;
            row.map(|r| decode(&r)).transpose()
        })
    }

    /// Revokes every token of `instance_id` for `protocol`.
    pub async fn revoke_console_tokens(
        &self,
        instance_id: &str,
        protocol: ConsoleProtocol,
    ) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            Ok(
                sqlx::query("DELETE FROM console_tokens WHERE instance_id = $1 AND protocol = $2")
                    .bind(instance_id)
                    .bind(protocol.as_str())
                    .execute(pool)
                    .await?
                    .rows_affected(),
            )
        })
    }

    /// Deletes expired tokens.
    pub async fn purge_console_tokens(&self) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            Ok(
                sqlx::query("DELETE FROM console_tokens WHERE expires_at <= $1")
                    .bind(now_ms())
                    .execute(pool)
                    .await?
                    .rows_affected(),
            )
        })
    }
}

fn decode(r: &impl StoreRow) -> Result<ConsoleToken, StoreError> {
    let protocol = r.text("protocol")?;
    Ok(ConsoleToken {
        instance_id: r.text("instance_id")?,
        protocol: ConsoleProtocol::parse(&protocol).ok_or_else(|| StoreError::Corrupt {
            table: "console_tokens",
            message: format!("unknown protocol `{protocol}`"),
        })?,
        single_use: r.flag("single_use")?,
        expires_at_ms: r.int("expires_at")?,
    })
}
