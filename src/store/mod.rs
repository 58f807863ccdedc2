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
use std::time::Duration;

use russh::keys::PrivateKey;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use time::OffsetDateTime;

mod audit;
mod connections;
mod record;
mod tokens;
pub use connections::{PageKey, RetryKey};
pub use record::{ConnectionRecord, DefinedTags, FreeformTags, LifecycleState};
pub use tokens::{ConsoleProtocol, ConsoleToken};

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
    /// The retry token was already used by this caller.
    #[error("the opc-retry-token was already used for connection {connection_id}")]
    RetryTokenUsed {
        /// The connection the token created.
        connection_id: String,
        /// Whether the earlier request was the same as this one.
        same_request: bool,
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

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        // The gateway and the CLI may open a new database at the same moment;
        // SQLite has no migration lock, so take a file lock around it.
        let lock_path = path.with_extension("lock");
        let open_error = |error: std::io::Error| StoreError::Open {
            path: lock_path.display().to_string(),
            error: sqlx::Error::Io(error),
        };
        let lock = {
            let lock_path = lock_path.clone();
            tokio::task::spawn_blocking(move || {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)?;
                file.lock()?;
                Ok::<_, std::io::Error>(file)
            })
            .await
            .map_err(|e| open_error(std::io::Error::other(e)))?
            .map_err(open_error)?
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let open_error = |error| StoreError::Open {
            path: path.display().to_string(),
            error,
        };
        // Create and migrate once, here. The pool never creates the file: a
        // database removed under a running gateway must fail loudly
        // (CG-STORE-002), not come back empty and unmigrated.
        {
            let first = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone().create_if_missing(true))
                .await
                .map_err(open_error)?;
            restrict_permissions(path);
            SQLITE_MIGRATIONS.run(&first).await?;
            first.close().await;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        drop(lock);
        Ok(Store {
            backend: Backend::Sqlite(pool),
        })
    }

    /// Opens an existing SQLite database without creating or migrating it
    /// (for `consolegate doctor`, which looks but does not change).
    pub async fn open_sqlite_existing(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(2));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|error| StoreError::Open {
                path: path.display().to_string(),
                error,
            })?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
        })
    }

    /// Checks that the database answers and would take a write: a read of
    /// its own tables inside a write transaction that is rolled back (so a
    /// file another process holds locked, or that became read-only, fails).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        // Answer within 2 s (not the 10 s writers wait), then put it back.
        sqlx::query("PRAGMA busy_timeout = 2000")
            .execute(&mut *conn)
            .await?;
        let probe = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let read = sqlx::query("SELECT count(*) FROM console_connections WHERE id = ''")
                .fetch_one(&mut *conn)
                .await;
            sqlx::query("ROLLBACK").execute(&mut *conn).await?;
            read.map(drop)
        }
        .await;
        sqlx::query("PRAGMA busy_timeout = 10000")
            .execute(&mut *conn)
            .await?;
        Ok(probe?)
    }

    /// The schema migrations this build has that the database lacks
    /// (their descriptions); empty when it is up to date.
    pub async fn missing_migrations(&self) -> Result<Vec<String>, StoreError> {
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(self.pool())
                .await
            {
                Ok(v) => v,
                // No migration table: nothing was ever applied.
                Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => {
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            };
        Ok(SQLITE_MIGRATIONS
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        match &self.backend {
            Backend::Sqlite(pool) => pool,
        }
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

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime, String> {
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
    use super::ConnectionRecord;
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
        store.create_connection(&r, None).await.unwrap();
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
            .create_connection(&record("a", "vm1", "SHA256:x"), None)
            .await
            .unwrap();
        let err = store
            .create_connection(&record("b", "vm1", "SHA256:x"), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { existing_id, .. } if existing_id == "a"),
            "{err}"
        );
        assert!(store.get_connection("b").await.unwrap().is_none());
        // Another key, or another instance, is fine.
        store
            .create_connection(&record("c", "vm1", "SHA256:y"), None)
            .await
            .unwrap();
        store
            .create_connection(&record("d", "vm2", "SHA256:x"), None)
            .await
            .unwrap();
        // Once deleted, the slot is free again.
        let deleted = store.delete_connection("a").await.unwrap().unwrap();
        assert_eq!(deleted.lifecycle_state, LifecycleState::Deleted);
        store
            .create_connection(&record("b", "vm1", "SHA256:x"), None)
            .await
            .unwrap();
        let filter = ConnectionFilter {
            instance_id: Some("vm1".into()),
            ..Default::default()
        };
        let ids: Vec<_> = store
            .list_connections(&filter, None, None)
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

    #[tokio::test]
    async fn pages_cover_everything_once() {
        let (_dir, store) = open().await;
        for i in 0..7 {
            let mut r = record(&format!("id{i}"), "vm1", &format!("SHA256:{i}"));
            // Two share a creation time: the id breaks the tie.
            r.time_created = OffsetDateTime::from_unix_timestamp(1_700_000_000 + i / 2).unwrap();
            store.create_connection(&r, None).await.unwrap();
        }
        let filter = ConnectionFilter::default();
        let mut seen = Vec::new();
        let mut page = None;
        loop {
            let rows = store
                .list_connections(&filter, page.as_ref(), Some(3))
                .await
                .unwrap();
            if rows.is_empty() {
                break;
            }
            page = rows.last().map(PageKey::after);
            seen.extend(rows.into_iter().map(|r| r.id));
        }
        assert_eq!(seen, ["id0", "id1", "id2", "id3", "id4", "id5", "id6"]);
    }

    #[tokio::test]
    async fn retry_tokens_replay_or_conflict() {
        let (_dir, store) = open().await;
        let key = RetryKey {
            caller: "t/u/f".into(),
            token: "tok".into(),
            request_hash: "h1".into(),
        };
        store
            .create_connection(&record("a", "vm1", "SHA256:x"), Some(&key))
            .await
            .unwrap();
        assert_eq!(
            store.find_retry_token("t/u/f", "tok").await.unwrap(),
            Some(("h1".into(), "a".into()))
        );
        assert_eq!(store.find_retry_token("other", "tok").await.unwrap(), None);
        // The same token again (say, a race of two retries) creates nothing.
        let again = RetryKey {
            request_hash: "h2".into(),
            ..key.clone()
        };
        let err = store
            .create_connection(&record("b", "vm1", "SHA256:y"), Some(&again))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::RetryTokenUsed { ref connection_id, same_request: false } if connection_id == "a"
        ));
        assert!(store.get_connection("b").await.unwrap().is_none());
        // A conflict on the connection rolls the token back.
        let fresh = RetryKey {
            token: "tok2".into(),
            ..key
        };
        assert!(matches!(
            store
                .create_connection(&record("c", "vm1", "SHA256:x"), Some(&fresh))
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.find_retry_token("t/u/f", "tok2").await.unwrap(), None);
    }

    #[tokio::test]
    async fn deletion_goes_through_deleting_to_deleted_to_gone() {
        let (_dir, store) = open().await;
        store
            .create_connection(&record("a", "vm1", "SHA256:x"), None)
            .await
            .unwrap();
        let r = store.begin_delete("a").await.unwrap().unwrap();
        assert_eq!(r.lifecycle_state, LifecycleState::Deleting);
        // Not settled yet.
        assert_eq!(
            store.advance_lifecycle(60_000, 60_000).await.unwrap(),
            (0, 0)
        );
        assert_eq!(store.advance_lifecycle(0, 60_000).await.unwrap(), (1, 0));
        assert_eq!(
            store.connection_state("a").await.unwrap(),
            Some(LifecycleState::Deleted)
        );
        // A deleted connection is not deleted again, and is purged after retention.
        let r = store.begin_delete("a").await.unwrap().unwrap();
        assert_eq!(r.lifecycle_state, LifecycleState::Deleted);
        assert_eq!(store.advance_lifecycle(0, 0).await.unwrap(), (0, 1));
        assert!(store.get_connection("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn tags_update_in_place() {
        let (_dir, store) = open().await;
        store
            .create_connection(&record("a", "vm1", "SHA256:x"), None)
            .await
            .unwrap();
        let tags: FreeformTagsForTest = [("k".to_string(), "v".to_string())].into();
        let r = store
            .update_tags("a", Some(&tags), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.freeform_tags, tags);
        assert!(
            store
                .update_tags("zzz", Some(&tags), None)
                .await
                .unwrap()
                .is_none()
        );
    }

    type FreeformTagsForTest = crate::store::FreeformTags;
}
