//! Revocations between nodes: a deleted connection's live sessions end on
//! every node at once, not at their next re-check.
//!
//! On PostgreSQL a delete sends `NOTIFY consolegate_revoked, '<id>'`, and
//! each node listens. SQLite has one node, whose sessions re-check the
//! record on their own (`revalidate_interval_secs`), which stays the
//! fallback everywhere: a notification lost while a listener reconnects
//! only delays the end to the next re-check.

use sqlx::postgres::PgListener;

use super::{Backend, Store, StoreError};

/// The channel deletes are announced on.
const CHANNEL: &str = "consolegate_revoked";

/// A node's subscription to revocations.
#[derive(Debug)]
pub struct RevocationListener {
    listener: PgListener,
}

impl RevocationListener {
    /// The next revoked connection's id.
    pub async fn next(&mut self) -> Result<String, StoreError> {
        Ok(self.listener.recv().await?.payload().to_owned())
    }
}

impl Store {
    /// Announces that connection `id` was deleted (PostgreSQL; a no-op on
    /// SQLite).
    pub(super) async fn notify_revoked(&self, id: &str) -> Result<(), StoreError> {
        if let Backend::Postgres(pool) = &self.backend {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(id)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Subscribes to revocations: `None` on SQLite, where there is no
    /// other node to hear from.
    pub async fn listen_revocations(&self) -> Result<Option<RevocationListener>, StoreError> {
        let Backend::Postgres(pool) = &self.backend else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(RevocationListener { listener }))
    }
}
