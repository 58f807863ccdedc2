//! Audit rows: append (through the audit writer, which commits rows that
//! arrive together in one transaction), list, purge, and the Detach rows a
//! crashed process could not write.

use tokio::sync::{mpsc, oneshot};

use super::row::StoreRow;

use super::{Backend, Store, StoreError, now_ms};
use crate::audit::{AuditEvent, AuditKind, SessionRef, UNENDED};

/// The conflict clause of every audit insert: one Detach row per session
/// (the unique index `audit_events_one_detach`).
macro_rules! one_detach {
    () => {
        "ON CONFLICT (incarnation, session_number) \
         WHERE event = 'detach' AND session_number IS NOT NULL DO NOTHING"
    };
}

/// Inserts audit event `$e` through `$executor` (a pool, or a transaction
/// as `&mut *tx`): one body for both backends and for the transactions of
/// the changes that carry their own row.
macro_rules! insert_audit {
    ($executor:expr, $e:expr) => {{
        let e: &$crate::audit::AuditEvent = $e;
        let session = e.session.as_ref();
        sqlx::query(concat!(
            "INSERT INTO audit_events (time, event, connection_id, instance_id, fingerprint, peer, \
             read_only, bytes_in, bytes_out, duration_ms, detail, node_id, incarnation, session_number) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ",
            $crate::store::audit::one_detach!()
        ))
        .bind($crate::store::now_ms())
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
        .bind(session.and_then(|s| s.node_id.as_deref()))
        .bind(session.map(|s| s.incarnation.as_str()))
        .bind(session.map(|s| s.number as i64))
        .execute($executor)
        .await?;
    }};
}
pub(super) use {insert_audit, one_detach};

/// Most audit rows one transaction of the writer takes.
const AUDIT_BATCH: usize = 128;

/// Audit rows that may wait for the writer before callers wait to queue.
const AUDIT_QUEUE: usize = 1024;

/// An audit row for the writer, and where its outcome goes.
pub(super) struct QueuedAudit {
    event: AuditEvent,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The store's audit writer: where [`Store::record_audit`] queues rows.
///
/// Every session writes an Attach and a Detach row, and a commit costs a
/// sync of the log (`synchronous = FULL`, docs/durability.md): one
/// transaction per row made them the dearest of a connection's store calls.
/// The writer takes whatever rows are queued (up to [`AUDIT_BATCH`]) into
/// one transaction, so rows that arrive together share a commit and its
/// sync. Each caller still waits until its own row is committed, so a row
/// is as durable when `record_audit` returns as before; a lone row is
/// written at once, as before.
pub(super) fn start_audit_writer(backend: Backend) -> mpsc::Sender<QueuedAudit> {
    let (queue, mut rows) = mpsc::channel::<QueuedAudit>(AUDIT_QUEUE);
    let writer = Writer { backend };
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(AUDIT_BATCH);
        while rows.recv_many(&mut batch, AUDIT_BATCH).await > 0 {
            writer.write(&mut batch).await;
        }
    });
    queue
}

/// The writer task's own handle on the pool (it holds no queue sender, so
/// it ends when the last [`Store`] does).
struct Writer {
    backend: Backend,
}

/// How a shared transaction of audit rows ended.
enum Shared {
    /// Every row is stored.
    Committed,
    /// A row (or the transaction's start) failed before the commit; the
    /// transaction rolled back and stored nothing.
    RolledBack,
    /// The commit itself failed: the rows may or may not be stored.
    CommitFailed(String),
}

impl Writer {
    /// Commits `batch` in one transaction and answers each caller. If a row
    /// fails before the commit, each row is tried on its own, so that a row
    /// the store refuses cannot take the others with it. If the commit
    /// fails, nothing is retried (the rows may be stored already) and each
    /// caller hears so, as a row of its own would have.
    async fn write(&self, batch: &mut Vec<QueuedAudit>) {
        // A lone row is written as it always was, in a transaction of its own.
        let shared = match batch.len() {
            1 => None,
            _ => Some(self.insert_all(batch).await),
        };
        for queued in batch.drain(..) {
            let result = match &shared {
                Some(Shared::Committed) => Ok(()),
                Some(Shared::CommitFailed(e)) => Err(StoreError::SharedCommit(e.clone())),
                Some(Shared::RolledBack) | None => insert_row(&self.backend, &queued.event).await,
            };
            let _ = queued.done.send(result);
        }
    }

    async fn insert_all(&self, batch: &[QueuedAudit]) -> Shared {
        on_pool!(self, |pool| {
            let inserted = async {
                let mut tx = pool.begin().await?;
                for queued in batch {
                    insert_audit!(&mut *tx, &queued.event);
                }
                Ok::<_, StoreError>(tx)
            }
            .await;
            match inserted {
                Err(_) => Shared::RolledBack,
                Ok(tx) => match tx.commit().await {
                    Ok(()) => Shared::Committed,
                    Err(e) => Shared::CommitFailed(e.to_string()),
                },
            }
        })
    }
}

/// Appends `e` in a transaction of its own: the writer's lone rows and
/// retries, and [`Store::insert_audit`].
async fn insert_row(backend: &Backend, e: &AuditEvent) -> Result<(), StoreError> {
    match backend {
        Backend::Sqlite(pool) => insert_audit!(pool, e),
        Backend::Postgres(pool) => insert_audit!(pool, e),
    }
    Ok(())
}

impl Store {
    /// Writes an audit event to the log (target `consolegate::audit`) and
    /// the store. A store failure is logged, never returned: the audited
    /// action goes on.
    ///
    /// The log line is written at the call. The returned future holds only
    /// a box: every console session's task awaits this at its start and its
    /// end, and an inline future (the event and the queue's send, about
    /// 1.8 KB) would take that room in every idle session.
    pub fn record_audit(&self, event: AuditEvent) -> impl Future<Output = ()> + Send + '_ {
        log_audit(&event);
        let queued = Box::pin(self.queue_audit(event));
        async move {
            if let Err(e) = queued.await {
                tracing::error!(code = "CG-STORE-002", error = %e, "could not store an audit event");
            }
        }
    }

    /// Hands `event` to the audit writer (see [`start_audit_writer`]) and
    /// waits until it is committed. A store used outside the runtime that
    /// opened it has no writer left; the row is written here instead.
    async fn queue_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        match self.audit.send(QueuedAudit { event, done }).await {
            Ok(()) => outcome
                .await
                .unwrap_or_else(|_| Err(StoreError::Database(sqlx::Error::WorkerCrashed))),
            Err(mpsc::error::SendError(queued)) => self.insert_audit(&queued.event).await,
        }
    }

    /// Appends an audit event. A session's second Detach row (one written
    /// at start-up for a session its process did end after all, see
    /// [`Store::reconcile_detaches`]) is not stored: the first stands.
    pub async fn insert_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        insert_row(&self.backend, e).await
    }

    /// Writes a Detach row for every console session that an earlier
    /// process of this node (`node_id`; `None` for a gateway alone) left
    /// with an Attach row and no Detach row: a process killed (or whose
    /// machine lost power) writes none. Sessions of `incarnation` (this
    /// process), of other nodes, and rows from before sessions were
    /// numbered are left alone. Returns how many rows it wrote; running it
    /// again writes none.
    ///
    /// Call it once at start-up, once no other process can be running as
    /// this node: a gateway alone holds its data directory's admin socket,
    /// a node of a fleet has registered its `node_id`.
    pub async fn reconcile_detaches(
        &self,
        node_id: Option<&str>,
        incarnation: &str,
    ) -> Result<u64, StoreError> {
        let attaches = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT a.connection_id, a.instance_id, a.fingerprint, a.peer, a.read_only, a.detail, \
                 a.node_id, a.incarnation, a.session_number FROM audit_events a \
                 WHERE a.event = 'attach' AND a.session_number IS NOT NULL \
                 AND (a.node_id = $1 OR (a.node_id IS NULL AND $1 IS NULL)) \
                 AND a.incarnation <> $2 \
                 AND NOT EXISTS (SELECT 1 FROM audit_events d WHERE d.event = 'detach' \
                 AND d.session_number IS NOT NULL AND d.incarnation = a.incarnation \
                 AND d.session_number = a.session_number) \
                 ORDER BY a.id",
            )
            .bind(node_id)
            .bind(incarnation)
            .fetch_all(pool)
            .await?
            .iter()
            .map(unended)
            .collect::<Result<Vec<_>, StoreError>>()
        })?;
        let mut written = 0;
        for detach in attaches {
            let inserted = on_pool!(self, |pool| {
                sqlx::query(concat!(
                    "INSERT INTO audit_events (time, event, connection_id, instance_id, fingerprint, \
                     peer, read_only, detail, node_id, incarnation, session_number) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ",
                    one_detach!()
                ))
                .bind(now_ms())
                .bind(detach.event.as_str())
                .bind(detach.connection_id.as_deref())
                .bind(detach.instance_id.as_deref())
                .bind(detach.fingerprint.as_deref())
                .bind(detach.peer.as_deref())
                .bind(detach.read_only)
                .bind(detach.detail.as_deref())
                .bind(detach.session.as_ref().and_then(|s| s.node_id.as_deref()))
                .bind(detach.session.as_ref().map(|s| s.incarnation.as_str()))
                .bind(detach.session.as_ref().map(|s| s.number as i64))
                .execute(pool)
                .await?
                .rows_affected()
            });
            if inserted > 0 {
                written += 1;
                log_audit(&detach);
            }
        }
        Ok(written)
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
             read_only, bytes_in, bytes_out, duration_ms, detail, node_id, incarnation, session_number \
             FROM audit_events \
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
                        "create" => AuditKind::Create,
                        "update" => AuditKind::Update,
                        "delete" => AuditKind::Delete,
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
                        session: session_ref(r)?,
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

/// The audit log line of an event (target `consolegate::audit`), as the
/// row says it.
pub(super) fn log_audit(event: &AuditEvent) {
    let session = event.session.as_ref();
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
        node = session.and_then(|s| s.node_id.as_deref()),
        incarnation = session.map(|s| s.incarnation.as_str()),
        session = session.map(|s| s.number),
        "audit"
    );
}

/// The session a row names, if it names one.
fn session_ref(r: &impl StoreRow) -> Result<Option<SessionRef>, StoreError> {
    let (Some(incarnation), Some(number)) =
        (r.maybe_text("incarnation")?, r.maybe_int("session_number")?)
    else {
        return Ok(None);
    };
    Ok(Some(SessionRef {
        node_id: r.maybe_text("node_id")?,
        incarnation,
        number: number as u64,
    }))
}

/// The Detach row of a session whose Attach row is `r` and whose process
/// ended without writing one: who, where and which session as the Attach
/// row says; why ([`UNENDED`]); bytes and duration unknown. A session of
/// a console token names the token, as its own Detach row would have.
fn unended(r: &impl StoreRow) -> Result<AuditEvent, StoreError> {
    let mut e = AuditEvent::new(AuditKind::Detach);
    e.connection_id = r.maybe_text("connection_id")?;
    e.instance_id = r.maybe_text("instance_id")?;
    e.fingerprint = r.maybe_text("fingerprint")?;
    e.peer = r.maybe_text("peer")?;
    e.read_only = r.maybe_flag("read_only")?;
    let token = r
        .maybe_text("detail")?
        .and_then(|d| d.rfind("(console token ").map(|at| d[at..].to_owned()));
    e.detail = Some(match token {
        Some(token) => format!("{UNENDED} {token}"),
        None => UNENDED.to_owned(),
    });
    e.session = session_ref(r)?;
    Ok(e)
}
