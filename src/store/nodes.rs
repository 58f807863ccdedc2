//! Gateway nodes sharing the store: registered on start, kept alive by a
//! heartbeat, marked when they leave.

use super::row::StoreRow;
use super::{Store, StoreError, now_ms};

/// What a node registers.
#[derive(Debug, Clone)]
pub struct NodeRegistration<'a> {
    /// Its `[cluster] node_id`.
    pub node_id: &'a str,
    /// Random per process start.
    pub incarnation: &'a str,
    /// Where the other nodes reach its node link.
    pub advertise: Option<&'a str>,
    /// Its node-link public key (OpenSSH format).
    pub link_key: Option<&'a str>,
    /// The consolegate version it runs.
    pub version: &'a str,
    /// How long without a heartbeat before another process may take the
    /// name (the fleet's node timeout).
    pub stale_after_ms: i64,
}

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
    /// Registers this process (`incarnation`, random per start) as node
    /// `node_id`, with its advertise address and node-link public key; a
    /// node that restarts rejoins under its old name. `false` when another
    /// process holds the name: its row has another incarnation, has not
    /// left, and beat within the last `stale_after_ms`.
    pub async fn register_node(&self, node: &NodeRegistration<'_>) -> Result<bool, StoreError> {
        let now = now_ms();
        let registered = on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO nodes (node_id, incarnation, advertise, link_key, version, started_at, last_seen, left_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6, NULL) \
                 ON CONFLICT (node_id) DO UPDATE SET incarnation = excluded.incarnation, \
                 advertise = excluded.advertise, link_key = excluded.link_key, version = excluded.version, \
                 started_at = excluded.started_at, last_seen = excluded.last_seen, left_at = NULL \
                 WHERE nodes.left_at IS NOT NULL OR nodes.incarnation IS NULL \
                 OR nodes.incarnation = excluded.incarnation OR nodes.last_seen < $6 - $7 \
                 RETURNING node_id",
            )
            .bind(node.node_id)
            .bind(node.incarnation)
            .bind(node.advertise)
            .bind(node.link_key)
            .bind(node.version)
            .bind(now)
            .bind(node.stale_after_ms)
            .fetch_optional(pool)
            .await
            .map(|r| r.is_some())
        })?;
        Ok(registered)
    }

    /// Records a heartbeat of `node_id` by this process; `false` if its
    /// row is gone, or another process (incarnation) took the name: the
    /// caller registers again, which tells which.
    pub async fn node_heartbeat(
        &self,
        node_id: &str,
        incarnation: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let updated = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE nodes SET last_seen = $3 \
                 WHERE node_id = $1 AND incarnation = $2 AND left_at IS NULL",
            )
            .bind(node_id)
            .bind(incarnation)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(updated > 0)
    }

    /// Marks `node_id` as stopped (a clean shutdown of this process; a
    /// process that took the name over is not marked).
    pub async fn node_left(&self, node_id: &str, incarnation: &str) -> Result<(), StoreError> {
        let now = now_ms();
        on_pool!(self, |pool| {
            sqlx::query("UPDATE nodes SET left_at = $3 WHERE node_id = $1 AND incarnation = $2")
                .bind(node_id)
                .bind(incarnation)
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
