//! Console leases: which node holds an instance's console backend.
//!
//! A QEMU chardev (and many serial concentrators) serves one client, so
//! exactly one node of a fleet may connect to it. A lease names that node
//! (its owner) until it expires; the owner renews it well before then.
//! Every change is one conditional statement, never a read-then-write, so
//! nodes asking at once cannot both win, and times are the database's
//! clock, so nodes' clocks need not agree. The epoch grows each time the
//! lease changes hands: a stale owner's renewal, naming the old epoch,
//! changes nothing.

use super::row::StoreRow;
use super::{Backend, Store, StoreError};

/// A console lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The instance whose console it is.
    pub instance_id: String,
    /// The node that holds it.
    pub owner: String,
    /// Grows each time the lease changes hands.
    pub epoch: i64,
    /// When it lapses unless renewed (Unix ms, the database's clock).
    pub expires_at_ms: i64,
}

impl Store {
    /// "Now" in Unix milliseconds, by the database's clock, as SQL.
    fn now_sql(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            Backend::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// `template` with `{now}` replaced by the database's clock.
    fn with_now(&self, template: &'static str) -> sqlx::AssertSqlSafe<String> {
        // Built from constants only: no input reaches the SQL text.
        sqlx::AssertSqlSafe(template.replace("{now}", self.now_sql()))
    }

    /// Takes `instance_id`'s lease for `node` for `ttl_ms`, if no one holds
    /// it (never taken, lapsed, released) or `node` already does; returns
    /// it, or `None` while another node holds it.
    pub async fn acquire_lease(
        &self,
        instance_id: &str,
        node: &str,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let sql = self.with_now(
            "INSERT INTO console_leases (instance_id, owner, epoch, expires_at) \
             VALUES ($1, $2, 1, {now} + $3) \
             ON CONFLICT (instance_id) DO UPDATE SET owner = excluded.owner, \
             epoch = console_leases.epoch + 1, expires_at = excluded.expires_at \
             WHERE console_leases.expires_at <= {now} OR console_leases.owner = excluded.owner \
             RETURNING instance_id, owner, epoch, expires_at",
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(instance_id)
                .bind(node)
                .bind(ttl_ms)
                .fetch_optional(pool)
                .await?;
            row.map(|r| decode(&r)).transpose()
        })
    }

    /// Extends `node`'s lease of `instance_id` (of `epoch`) by `ttl_ms` from
    /// now, if it still holds it and it has not lapsed; `false` means the
    /// node must let go of the backend at once.
    pub async fn renew_lease(
        &self,
        instance_id: &str,
        node: &str,
        epoch: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = self.with_now(
            "UPDATE console_leases SET expires_at = {now} + $4 \
             WHERE instance_id = $1 AND owner = $2 AND epoch = $3 AND expires_at > {now}",
        );
        let renewed = on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(instance_id)
                .bind(node)
                .bind(epoch)
                .bind(ttl_ms)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(renewed > 0)
    }

    /// Extends every live lease `node` holds by `ttl_ms` from now, in one
    /// statement however many it holds; returns the leases it still holds.
    /// A lease missing from the answer was lost (it lapsed, or changed
    /// hands): the node must let go of that backend at once.
    pub async fn renew_leases(&self, node: &str, ttl_ms: i64) -> Result<Vec<Lease>, StoreError> {
        let sql = self.with_now(
            "UPDATE console_leases SET expires_at = {now} + $2 \
             WHERE owner = $1 AND expires_at > {now} \
             RETURNING instance_id, owner, epoch, expires_at",
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(node)
                .bind(ttl_ms)
                .fetch_all(pool)
                .await?;
            rows.iter().map(decode).collect()
        })
    }

    /// Every live (unlapsed) lease, by instance.
    pub async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let sql = self.with_now(
            "SELECT instance_id, owner, epoch, expires_at FROM console_leases \
             WHERE expires_at > {now} ORDER BY instance_id",
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            rows.iter().map(decode).collect()
        })
    }

    /// Gives up `node`'s lease of `instance_id` (of `epoch`) at once, so
    /// another node may take it without waiting for it to lapse.
    pub async fn release_lease(
        &self,
        instance_id: &str,
        node: &str,
        epoch: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE console_leases SET expires_at = 0 \
                 WHERE instance_id = $1 AND owner = $2 AND epoch = $3",
            )
            .bind(instance_id)
            .bind(node)
            .bind(epoch)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// The live (unlapsed) lease of `instance_id`, if any.
    pub async fn lease_of(&self, instance_id: &str) -> Result<Option<Lease>, StoreError> {
        let sql = self.with_now(
            "SELECT instance_id, owner, epoch, expires_at FROM console_leases \
             WHERE instance_id = $1 AND expires_at > {now}",
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(instance_id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| decode(&r)).transpose()
        })
    }
}

fn decode(r: &impl StoreRow) -> Result<Lease, StoreError> {
    Ok(Lease {
        instance_id: r.text("instance_id")?,
        owner: r.text("owner")?,
        epoch: r.int("epoch")?,
        expires_at_ms: r.int("expires_at")?,
    })
}
