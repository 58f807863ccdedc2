//! Audit rows: append, list, purge.

use super::row::StoreRow;

use super::{Store, StoreError, now_ms};
use crate::audit::{AuditEvent, AuditKind};

impl Store {
    /// Writes an audit event to the log (target `consolegate::audit`) and
    /// the store. A store failure is logged, never returned: the audited
    /// action goes on.
    pub async fn record_audit(&self, event: AuditEvent) {
        tracing::info!(
            target: "consolegate::audit",
            event = event.event.as_str(),
            connection = event.connection_id.as_deref(),
            instance = event.instance_id.as_deref(),
            fingerprint = event.fingerprint.as_deref(),
            peer = event.peer.as_deref(),
            read_only = event.read_only,
            bytes_in = event.bytes_in,
            bytes_out = event.bytes_out,
            duration_ms = event.duration_ms,
            detail = event.detail.as_deref(),
            "audit"
        );
        if let Err(e) = self.insert_audit(&event).await {
            tracing::error!(code = "CG-STORE-002", error = %e, "could not store an audit event");
        }
    }

    /// Appends an audit event.
    pub async fn insert_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO audit_events (time, event, connection_id, instance_id, fingerprint, peer, \
             read_only, bytes_in, bytes_out, duration_ms, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(now_ms())
        .bind(e.event.as_str())
        .bind(e.connection_id.as_deref())
        .bind(e.instance_id.as_deref())
        .bind(e.fingerprint.as_deref())
        .bind(e.peer.as_deref())
        .bind(e.read_only)
        .bind(e.bytes_in.map(|n| n as i64))
        .bind(e.bytes_out.map(|n| n as i64))
        .bind(e.duration_ms.map(|n| n as i64))
        .bind(e.detail.as_deref())
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// The newest `limit` events, optionally of one connection or instance, oldest first.
    pub async fn list_audit(
        &self,
        connection_id: Option<&str>,
        instance_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
            "SELECT * FROM (SELECT id, time, event, connection_id, instance_id, fingerprint, peer, \
             read_only, bytes_in, bytes_out, duration_ms, detail FROM audit_events \
             WHERE ($1 IS NULL OR connection_id = $1) AND ($2 IS NULL OR instance_id = $2) \
             ORDER BY id DESC LIMIT $3) AS newest ORDER BY id",
        )
        .bind(connection_id)
        .bind(instance_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
            rows.iter()
                .map(|r| {
                    let kind = match r.text("event")?.as_str() {
                        "attach" => AuditKind::Attach,
                        "detach" => AuditKind::Detach,
                        "force" => AuditKind::Force,
                        "break" => AuditKind::Break,
                        "vnc-open" => AuditKind::VncOpen,
                        "vnc-close" => AuditKind::VncClose,
                        "timeout" => AuditKind::Timeout,
                        "store-lost" => AuditKind::StoreLost,
                        _ => AuditKind::Refused,
                    };
                    let time =
                        super::from_ms(r.int("time")?).map_err(|message| StoreError::Corrupt {
                            table: "audit_events",
                            message,
                        })?;
                    Ok(AuditEvent {
                        id: r.int("id")?,
                        time: crate::timefmt::format_time(time),
                        event: kind,
                        connection_id: r.maybe_text("connection_id")?,
                        instance_id: r.maybe_text("instance_id")?,
                        fingerprint: r.maybe_text("fingerprint")?,
                        peer: r.maybe_text("peer")?,
                        read_only: r.maybe_flag("read_only")?,
                        bytes_in: r.maybe_int("bytes_in")?.map(|n| n as u64),
                        bytes_out: r.maybe_int("bytes_out")?.map(|n| n as u64),
                        duration_ms: r.maybe_int("duration_ms")?.map(|n| n as u64),
                        detail: r.maybe_text("detail")?,
                    })
                })
                .collect()
        })
    }

    /// Deletes audit events older than `age_ms`.
    pub async fn purge_audit(&self, age_ms: i64) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            Ok(sqlx::query("DELETE FROM audit_events WHERE time <= $1")
                .bind(now_ms() - age_ms)
                .execute(pool)
                .await?
                .rows_affected())
        })
    }
}
