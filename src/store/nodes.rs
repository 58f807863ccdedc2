//! Gateway nodes sharing the store: registered on start, kept alive by a
//! heartbeat, marked when they leave.

use super::row::StoreRow;
use super::{Store, StoreError, now_ms};

/// A node as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Its `[cluster] node_id`.
    pub node_id: String,
    /// Where the other nodes reach it.
    pub advertise: Option<String>,
    /// Its node-link public key (OpenSSH format).
    pub link_key: Option<String>,
    /// The consolegate version it runs.
    pub version: String,
    /// When it (last) started, Unix milliseconds.
    pub started_at_ms: i64,
    /// Its last heartbeat, Unix milliseconds.
    pub last_seen_ms: i64,
    /// When it stopped, if it said so.
    pub left_at_ms: Option<i64>,
}

impl Store {
    /// Registers `node_id` as started now, with its advertise address and
    /// node-link public key; a node that restarts rejoins under its old name.
    pub async fn register_node(
        &self,
        node_id: &str,
        advertise: Option<&str>,
        link_key: Option<&str>,
        version: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO nodes (node_id, advertise, link_key, version, started_at, last_seen, left_at) \
                 VALUES ($1, $2, $3, $4, $5, $5, NULL) \
                 ON CONFLICT (node_id) DO UPDATE SET advertise = $2, link_key = $3, version = $4, \
                 started_at = $5, last_seen = $5, left_at = NULL",
            )
            .bind(node_id)
            .bind(advertise)
            .bind(link_key)
            .bind(version)
            .bind(now)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Records a heartbeat of `node_id`; `false` if it is not registered
    /// (its row was removed), so the caller registers again.
    pub async fn node_heartbeat(&self, node_id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let updated = on_pool!(self, |pool| {
            sqlx::query("UPDATE nodes SET last_seen = $2 WHERE node_id = $1 AND left_at IS NULL")
                .bind(node_id)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(updated > 0)
    }

    /// Marks `node_id` as stopped (a clean shutdown).
    pub async fn node_left(&self, node_id: &str) -> Result<(), StoreError> {
        let now = now_ms();
        on_pool!(self, |pool| {
            sqlx::query("UPDATE nodes SET left_at = $2 WHERE node_id = $1")
                .bind(node_id)
                .bind(now)
                .execute(pool)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Every node ever registered, by name.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT node_id, advertise, link_key, version, started_at, last_seen, left_at \
                 FROM nodes ORDER BY node_id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode).collect()
        })
    }
}

fn decode(r: &impl StoreRow) -> Result<NodeRecord, StoreError> {
    Ok(NodeRecord {
        node_id: r.text("node_id")?,
        advertise: r.maybe_text("advertise")?,
        link_key: r.maybe_text("link_key")?,
        version: r.text("version")?,
        started_at_ms: r.int("started_at")?,
        last_seen_ms: r.int("last_seen")?,
        left_at_ms: r.maybe_int("left_at")?,
    })
}
