//! The store: console connections and per-instance host keys.
//!
//! [`Store`] is the one boundary the rest of the gateway uses for persistent
//! state; nothing else runs SQL. SQLite is the embedded default: one file in the
//! data directory, created on first use, migrations embedded in the binary
//! (`migrations/sqlite`). It is reached through sqlx with runtime-checked
//! queries (no database is needed at build time). Several processes may use
//! one file at once (the gateway, and the `connection` CLI): the database runs
//! in WAL mode with a busy timeout, and the per-instance policy is enforced by
//! a unique index rather than by a read-then-write.
//!
//! PostgreSQL (for a fleet of gateway nodes) will be a second variant of the
//! private `Backend` enum with the same methods; callers do not change.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use russh::keys::PrivateKey;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use time::OffsetDateTime;

use crate::connection::{ConnectionRecord, LifecycleState};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open the database {path}: {error}")]
    Open {
        /// The database file.
        path: String,
        /// The cause.
        error: sqlx::Error,
    },
    /// A schema migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The instance already has a live connection for this key.
    #[error(
        "instance {instance_id} already has an active console connection for this key ({existing_id}); \
         use it, or delete it first"
    )]
    Conflict {
        /// The instance.
        instance_id: String,
        /// The connection that holds the slot.
        existing_id: String,
    },
    /// A stored row could not be decoded.
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A host key could not be generated.
    #[error(transparent)]
    HostKey(#[from] crate::keys::HostKeyError),
}

// Not `#[from]`: the messages above already show the cause, and a `source`
// would make error chains print it twice.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

/// Which connections to list.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    /// Only this compartment.
    pub compartment_id: Option<String>,
    /// Only this instance.
    pub instance_id: Option<String>,
    /// Only this state.
    pub lifecycle_state: Option<LifecycleState>,
}

/// Handle to the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

macro_rules! columns {
    () => {
        "id, compartment_id, instance_id, lifecycle_state, public_key, fingerprint, \
         freeform_tags, defined_tags, time_created"
    };
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|error| StoreError::Open {
                path: path.display().to_string(),
                error,
            })?;
        restrict_permissions(path);
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
        })
    }

    fn pool(&self) -> &SqlitePool {
        match &self.backend {
            Backend::Sqlite(pool) => pool,
        }
    }

    /// Stores a new connection, enforcing one live connection per instance and key.
    pub async fn create_connection(&self, record: &ConnectionRecord) -> Result<(), StoreError> {
        let now = now_ms();
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
        .execute(self.pool())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let existing = sqlx::query(
                    "SELECT id FROM console_connections WHERE instance_id = $1 AND fingerprint = $2 \
                     AND lifecycle_state IN ('CREATING', 'ACTIVE')",
                )
                .bind(&record.instance_id)
                .bind(&record.fingerprint)
                .fetch_optional(self.pool())
                .await?;
                Err(StoreError::Conflict {
                    instance_id: record.instance_id.clone(),
                    existing_id: existing
                        .map(|r| r.get::<String, _>(0))
                        .unwrap_or_else(|| "unknown".into()),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The connection with this id, in any state.
    pub async fn get_connection(&self, id: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM console_connections WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| decode_record(&r)).transpose()
    }

    /// Just the state of a connection: what live sessions poll.
    pub async fn connection_state(&self, id: &str) -> Result<Option<LifecycleState>, StoreError> {
        let row = sqlx::query("SELECT lifecycle_state FROM console_connections WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| parse_state(&r.get::<String, _>(0))).transpose()
    }

    /// Connections matching `filter`, oldest first.
    pub async fn list_connections(
        &self,
        filter: &ConnectionFilter,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM console_connections \
             WHERE ($1 IS NULL OR compartment_id = $1) AND ($2 IS NULL OR instance_id = $2) \
             AND ($3 IS NULL OR lifecycle_state = $3) ORDER BY time_created, id"
        ))
        .bind(filter.compartment_id.as_deref())
        .bind(filter.instance_id.as_deref())
        .bind(filter.lifecycle_state.map(LifecycleState::as_str))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(decode_record).collect()
    }

    /// Moves a live connection to DELETED; returns the record as it now is,
    /// or `None` if there is no such connection. Deleting a deleted
    /// connection changes nothing.
    pub async fn delete_connection(
        &self,
        id: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE console_connections SET lifecycle_state = 'DELETED', time_updated = $2, \
             time_deleted = $2 WHERE id = $1 AND lifecycle_state NOT IN ('DELETED')",
        )
        .bind(id)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.get_connection(id).await
    }

    /// The inner hop's host key for `instance_id`, generated and stored on
    /// first use (a race between processes keeps the first key written).
    pub async fn instance_host_key(&self, instance_id: &str) -> Result<PrivateKey, StoreError> {
        if let Some(key) = self.load_instance_key(instance_id).await? {
            return Ok(key);
        }
        let key = crate::keys::generate_instance_key()?;
        let pem = crate::keys::encode_private_key(&key)?;
        sqlx::query(
            "INSERT INTO instance_host_keys (instance_id, private_key, time_created) \
             VALUES ($1, $2, $3) ON CONFLICT (instance_id) DO NOTHING",
        )
        .bind(instance_id)
        .bind(pem)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        self.load_instance_key(instance_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                table: "instance_host_keys",
                message: format!("key for {instance_id} vanished after insert"),
            })
    }

    async fn load_instance_key(&self, instance_id: &str) -> Result<Option<PrivateKey>, StoreError> {
        let row = sqlx::query("SELECT private_key FROM instance_host_keys WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            crate::keys::decode_private_key(&r.get::<String, _>(0)).map_err(|message| {
                StoreError::Corrupt {
                    table: "instance_host_keys",
                    message,
                }
            })
        })
        .transpose()
    }

    /// Closes the pool, waiting for queries in flight.
    pub async fn close(&self) {
        self.pool().close().await;
    }
}

fn decode_record(row: &sqlx::sqlite::SqliteRow) -> Result<ConnectionRecord, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        table: "console_connections",
        message,
    };
    let freeform: String = row.try_get("freeform_tags")?;
    let defined: String = row.try_get("defined_tags")?;
    Ok(ConnectionRecord {
        id: row.try_get("id")?,
        compartment_id: row.try_get("compartment_id")?,
        instance_id: row.try_get("instance_id")?,
        lifecycle_state: parse_state(&row.try_get::<String, _>("lifecycle_state")?)?,
        public_key: row.try_get("public_key")?,
        fingerprint: row.try_get("fingerprint")?,
        freeform_tags: serde_json::from_str(&freeform).map_err(|e| corrupt(e.to_string()))?,
        defined_tags: serde_json::from_str(&defined).map_err(|e| corrupt(e.to_string()))?,
        time_created: from_ms(row.try_get("time_created")?).map_err(corrupt)?,
    })
}

fn parse_state(s: &str) -> Result<LifecycleState, StoreError> {
    LifecycleState::from_str(s).map_err(|message| StoreError::Corrupt {
        table: "console_connections",
        message,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(ms: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| format!("bad timestamp {ms}: {e}"))
}

fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The database holds the instances' private host keys.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, instance: &str, fingerprint: &str) -> ConnectionRecord {
        ConnectionRecord {
            id: id.into(),
            compartment_id: "c1".into(),
            instance_id: instance.into(),
            lifecycle_state: LifecycleState::Active,
            public_key: "ssh-ed25519 AAAA".into(),
            fingerprint: fingerprint.into(),
            freeform_tags: [("team".to_string(), "ops".to_string())].into(),
            defined_tags: Default::default(),
            time_created: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        }
    }

    async fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn records_round_trip_and_survive_reopen() {
        let (dir, store) = open().await;
        let r = record("a", "vm1", "SHA256:x");
        store.create_connection(&r).await.unwrap();
        assert_eq!(store.get_connection("a").await.unwrap(), Some(r.clone()));
        store.close().await;
        let store = Store::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        assert_eq!(store.get_connection("a").await.unwrap(), Some(r));
        assert_eq!(store.get_connection("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn one_live_connection_per_instance_and_key() {
        let (_dir, store) = open().await;
        store
            .create_connection(&record("a", "vm1", "SHA256:x"))
            .await
            .unwrap();
        let err = store
            .create_connection(&record("b", "vm1", "SHA256:x"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { existing_id, .. } if existing_id == "a"),
            "{err}"
        );
        assert!(store.get_connection("b").await.unwrap().is_none());
        // Another key, or another instance, is fine.
        store
            .create_connection(&record("c", "vm1", "SHA256:y"))
            .await
            .unwrap();
        store
            .create_connection(&record("d", "vm2", "SHA256:x"))
            .await
            .unwrap();
        // Once deleted, the slot is free again.
        let deleted = store.delete_connection("a").await.unwrap().unwrap();
        assert_eq!(deleted.lifecycle_state, LifecycleState::Deleted);
        store
            .create_connection(&record("b", "vm1", "SHA256:x"))
            .await
            .unwrap();
        let filter = ConnectionFilter {
            instance_id: Some("vm1".into()),
            ..Default::default()
        };
        let ids: Vec<_> = store
            .list_connections(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(
            store.connection_state("a").await.unwrap(),
            Some(LifecycleState::Deleted)
        );
        assert!(store.delete_connection("zzz").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn instance_host_keys_are_stable() {
        let (_dir, store) = open().await;
        let a = store.instance_host_key("vm1").await.unwrap();
        let b = store.instance_host_key("vm1").await.unwrap();
        let c = store.instance_host_key("vm2").await.unwrap();
        assert_eq!(a.public_key().key_data(), b.public_key().key_data());
        assert_ne!(a.public_key().key_data(), c.public_key().key_data());
    }
}
