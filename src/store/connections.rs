//! Console-connection queries: create (with its retry token), read, list by
//! pages, tag updates and the lifecycle (DELETING → DELETED → purged).

use std::collections::HashMap;

use super::audit::{insert_audit, log_audit};
use super::row::StoreRow;
use crate::audit::AuditEvent;

use super::{ConnectionFilter, Store, StoreError, from_ms, now_ms, to_json, to_ms};
use super::{ConnectionRecord, DefinedTags, FreeformTags, LifecycleState};

/// Commits transaction `$tx` of a change that touched `$changed` rows,
/// with its audit row `$audit` if it changed anything (then logged too).
macro_rules! commit_audited {
    ($tx:expr, $changed:expr, $audit:expr) => {{
        if $changed > 0 {
            insert_audit!(&mut *$tx, $audit);
        }
        $tx.commit().await?;
        if $changed > 0 {
            log_audit($audit);
        }
    }};
}

macro_rules! columns {
    () => {
        "id, compartment_id, instance_id, lifecycle_state, public_key, fingerprint, \
         freeform_tags, defined_tags, time_created"
    };
}

/// Where a page of a listing starts: just after this record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageKey {
    /// The previous page's last `time_created`, in Unix milliseconds.
    pub time_created_ms: i64,
    /// The previous page's last id.
    pub id: String,
}

impl PageKey {
    /// The key that continues after `record`.
    pub fn after(record: &ConnectionRecord) -> PageKey {
        PageKey {
            time_created_ms: to_ms(record.time_created),
            id: record.id.clone(),
        }
    }
}

/// An `opc-retry-token` as stored: per caller, with a hash of the request.
#[derive(Debug, Clone)]
pub struct RetryKey {
    /// Who sent it (the API key id).
    pub caller: String,
    /// The token.
    pub token: String,
    /// A hash of the request it came with.
    pub request_hash: String,
}

/// How long retry tokens are remembered.
const RETRY_TOKEN_TTL_MS: i64 = 24 * 3600 * 1000;

/// Ids per query of [`Store::connection_states`]: well under SQLite's and
/// PostgreSQL's limits on bound parameters.
const STATES_PER_QUERY: usize = 500;

impl Store {
    /// Stores a new connection, enforcing one live connection per instance
    /// and key, and records its retry token and its `audit` row in the same
    /// transaction.
    pub async fn create_connection(
        &self,
        record: &ConnectionRecord,
        retry: Option<&RetryKey>,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let now = now_ms();
            let mut tx = pool.begin().await?;
            if let Some(retry) = retry {
                let inserted = sqlx::query(
                "INSERT INTO retry_tokens (caller, token, request_hash, connection_id, time_created) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (caller, token) DO NOTHING",
            )
            .bind(&retry.caller)
            .bind(&retry.token)
            .bind(&retry.request_hash)
            .bind(&record.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
                if inserted.rows_affected() == 0 {
                    drop(tx);
                    return Err(
                        match self.find_retry_token(&retry.caller, &retry.token).await? {
                            Some((hash, connection_id)) => StoreError::RetryTokenUsed {
                                connection_id,
                                same_request: hash == retry.request_hash,
                            },
                            None => StoreError::Corrupt {
                                table: "retry_tokens",
                                message: "token vanished during insert".into(),
                            },
                        },
                    );
                }
            }
            let result = sqlx::query(
            "INSERT INTO console_connections (id, compartment_id, instance_id, lifecycle_state, \
             public_key, fingerprint, freeform_tags, defined_tags, time_created, time_updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&record.id)
        .bind(&record.compartment_id)
        .bind(&record.instance_id)
        .bind(record.lifecycle_state.as_str())
        .bind(&record.public_key)
        .bind(&record.fingerprint)
        .bind(to_json(&record.freeform_tags))
        .bind(to_json(&record.defined_tags))
        .bind(to_ms(record.time_created))
        .bind(now)
        .execute(&mut *tx)
        .await;
            match result {
                Ok(_) => {
                    insert_audit!(&mut *tx, audit);
                    tx.commit().await?;
                    log_audit(audit);
                    Ok(())
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    drop(tx);
                    let existing = sqlx::query(
                    "SELECT id FROM console_connections WHERE instance_id = $1 AND fingerprint = $2 \
                     AND lifecycle_state IN ('CREATING', 'ACTIVE')",
                )
                .bind(&record.instance_id)
                .bind(&record.fingerprint)
                .fetch_optional(pool)
                .await?;
                    Err(StoreError::Conflict {
                        instance_id: record.instance_id.clone(),
                        existing_id: existing
                            .map(|r| r.text("id"))
                            .transpose()?
                            .unwrap_or_else(|| "unknown".into()),
                    })
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// The request hash and connection a caller's retry token stands for,
    /// if it is younger than 24 hours.
    pub async fn find_retry_token(
        &self,
        caller: &str,
        token: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT request_hash, connection_id FROM retry_tokens \
             WHERE caller = $1 AND token = $2 AND time_created > $3",
            )
            .bind(caller)
            .bind(token)
            .bind(now_ms() - RETRY_TOKEN_TTL_MS)
            .fetch_optional(pool)
            .await?;
            row.map(|r| Ok((r.text("request_hash")?, r.text("connection_id")?)))
                .transpose()
        })
    }

    /// The connection with this id, in any state.
    pub async fn get_connection(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM console_connections WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| decode_record(&r)).transpose()
        })
    }

    /// Just the state of a connection: what live sessions poll.
    pub async fn connection_state(&self, id: &str) -> Result<Option<LifecycleState>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT lifecycle_state FROM console_connections WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| parse_state(&r.text("lifecycle_state")?))
                .transpose()
        })
    }

    /// The states of the connections `ids` that exist: what the node's
    /// periodic re-check of its live sessions reads, in one query per
    /// [`STATES_PER_QUERY`] ids.
    pub async fn connection_states(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, LifecycleState>, StoreError> {
        let mut states = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(STATES_PER_QUERY) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT id, lifecycle_state FROM console_connections WHERE id IN ({})",
                placeholders.join(", ")
            );
            on_pool!(self, |pool| {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    query = query.bind(id);
                }
                for row in query.fetch_all(pool).await? {
                    states.insert(row.text("id")?, parse_state(&row.text("lifecycle_state")?)?);
                }
            });
        }
        Ok(states)
    }

    /// Connections matching `filter`, oldest first, starting after `page`,
    /// at most `limit` of them (all if `None`).
    pub async fn list_connections(
        &self,
        filter: &ConnectionFilter,
        page: Option<&PageKey>,
        limit: Option<usize>,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        on_pool!(self, |pool| {
            let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM console_connections \
             WHERE ($1 IS NULL OR compartment_id = $1) AND ($2 IS NULL OR instance_id = $2) \
             AND ($3 IS NULL OR lifecycle_state = $3) \
             AND ($4 IS NULL OR time_created > $4 OR (time_created = $4 AND id > $5)) \
             ORDER BY time_created, id LIMIT $6"
            ))
            .bind(filter.compartment_id.as_deref())
            .bind(filter.instance_id.as_deref())
            .bind(filter.lifecycle_state.map(LifecycleState::as_str))
            .bind(page.map(|p| p.time_created_ms))
            .bind(page.map(|p| p.id.as_str()))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode_record).collect()
        })
    }

    /// Replaces the tags of a connection, with its `audit` row in the same
    /// transaction; returns it as it now is.
    pub async fn update_tags(
        &self,
        id: &str,
        freeform: Option<&FreeformTags>,
        defined: Option<&DefinedTags>,
        audit: &AuditEvent,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(
                "UPDATE console_connections SET \
             freeform_tags = COALESCE($2, freeform_tags), \
             defined_tags = COALESCE($3, defined_tags), time_updated = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(freeform.map(to_json))
            .bind(defined.map(to_json))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            commit_audited!(tx, changed, audit);
            self.get_connection(id).await
        })
    }

    /// Starts deleting a connection: ACTIVE (or CREATING) becomes DELETING,
    /// which live sessions see at their next check. Returns the record as
    /// it now is, or `None` if there is no such connection.
    /// A change of state writes its `audit` row in the same transaction.
    pub async fn begin_delete(
        &self,
        id: &str,
        audit: &AuditEvent,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(
                "UPDATE console_connections SET lifecycle_state = 'DELETING', time_updated = $2 \
             WHERE id = $1 AND lifecycle_state IN ('CREATING', 'ACTIVE', 'FAILED')",
            )
            .bind(id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            commit_audited!(tx, changed, audit);
            self.notify_revoked(id).await?;
            self.get_connection(id).await
        })
    }

    /// Deletes a connection at once (live → DELETED): what the CLI does,
    /// since no gateway may be running to finish a DELETING. Deleting a
    /// deleted connection changes nothing. A change writes its `audit` row
    /// in the same transaction.
    pub async fn delete_connection(
        &self,
        id: &str,
        audit: &AuditEvent,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        on_pool!(self, |pool| {
            let now = now_ms();
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(
                "UPDATE console_connections SET lifecycle_state = 'DELETED', time_updated = $2, \
             time_deleted = $2 WHERE id = $1 AND lifecycle_state NOT IN ('DELETED')",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            commit_audited!(tx, changed, audit);
            self.notify_revoked(id).await?;
            self.get_connection(id).await
        })
    }

    /// Moves connections that have been DELETING for `settle_ms` to
    /// DELETED, purges DELETED ones older than `retention_ms` and expired
    /// retry tokens. Returns (finished, purged).
    pub async fn advance_lifecycle(
        &self,
        settle_ms: i64,
        retention_ms: i64,
    ) -> Result<(u64, u64), StoreError> {
        on_pool!(self, |pool| {
            let now = now_ms();
            let finished = sqlx::query(
                "UPDATE console_connections SET lifecycle_state = 'DELETED', time_updated = $1, \
             time_deleted = $1 WHERE lifecycle_state = 'DELETING' AND time_updated <= $2",
            )
            .bind(now)
            .bind(now - settle_ms)
            .execute(pool)
            .await?
            .rows_affected();
            let purged = sqlx::query(
            "DELETE FROM console_connections WHERE lifecycle_state = 'DELETED' AND time_deleted <= $1",
        )
        .bind(now - retention_ms)
        .execute(pool)
        .await?
        .rows_affected();
            sqlx::query("DELETE FROM retry_tokens WHERE time_created <= $1")
                .bind(now - RETRY_TOKEN_TTL_MS)
                .execute(pool)
                .await?;
            Ok((finished, purged))
        })
    }
}

fn decode_record(row: &impl StoreRow) -> Result<ConnectionRecord, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        table: "console_connections",
        message,
    };
    let freeform = row.text("freeform_tags")?;
    let defined = row.text("defined_tags")?;
    Ok(ConnectionRecord {
        id: row.text("id")?,
        compartment_id: row.text("compartment_id")?,
        instance_id: row.text("instance_id")?,
        lifecycle_state: parse_state(&row.text("lifecycle_state")?)?,
        public_key: row.text("public_key")?,
        fingerprint: row.text("fingerprint")?,
        freeform_tags: serde_json::from_str(&freeform).map_err(|e| corrupt(e.to_string()))?,
        defined_tags: serde_json::from_str(&defined).map_err(|e| corrupt(e.to_string()))?,
        time_created: from_ms(row.int("time_created")?).map_err(corrupt)?,
    })
}

fn parse_state(s: &str) -> Result<LifecycleState, StoreError> {
    s.parse().map_err(|message| StoreError::Corrupt {
        table: "console_connections",
        message,
    })
}
