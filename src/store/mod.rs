//! The store: console connections, console tokens, per-instance host keys,
//! the audit trail, and the nodes of a fleet with their console leases.
//!
//! [`Store`] is the one boundary the rest of the gateway uses for persistent
//! state; nothing else runs SQL. It is reached through sqlx with
//! runtime-checked queries (no database is needed at build time), and has
//! two backends behind one API, with their migrations embedded in the
//! binary:
//!
//! - SQLite, the embedded default: one file in the data directory, created
//!   on first use (`migrations/sqlite`). Several processes may use one file
//!   at once (the gateway, and the `connection` CLI): the database runs in
//!   WAL mode with a busy timeout, and syncs its log at every commit
//!   (`synchronous = FULL`).
//! - PostgreSQL (`[store] url`), for several gateway nodes sharing one
//!   store (`migrations/postgres`, run under PostgreSQL's advisory lock).
//!
//! The same SQL serves both (`$n` parameters, `ON CONFLICT`, `RETURNING`);
//! `on_pool!` runs a body against whichever pool is open, and rows decode
//! through `StoreRow`. Every rule that must hold between processes
//! or nodes is one statement or a constraint, never a read-then-write: the
//! one live connection per instance and key is a unique index, a retry
//! token is inserted with its connection in one transaction, a single-use
//! console token is spent by the `UPDATE … RETURNING` that finds it.

use std::path::Path;
use std::time::Duration;

use russh::keys::PrivateKey;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;

/// Runs `body` with `pool` bound to the store's pool, whichever backend it
/// is: the same SQL (with `$n` parameters) serves SQLite and PostgreSQL.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite($pool) => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}

mod audit;
mod connections;
mod leases;
mod nodes;
mod record;
mod revocations;
mod row;
mod tokens;
pub use connections::{PageKey, RetryKey};
pub use leases::Lease;
pub use nodes::{NodeRecord, NodeRegistration};
pub use record::{ConnectionRecord, DefinedTags, FreeformTags, LifecycleState};
pub use revocations::RevocationListener;
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
    /// The database file is open to other users and cannot be made owner-only.
    #[error(transparent)]
    Exposed(#[from] crate::files::ExposedError),
    /// The database answers but takes no writes (a PostgreSQL standby, or
    /// `default_transaction_read_only`).
    #[error("the database takes no writes (a read-only standby or session)")]
    ReadOnly,
    /// The commit of audit rows written together failed; they may or may
    /// not be stored.
    #[error("committing audit rows failed (they may or may not be stored): {0}")]
    SharedCommit(String),
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
    /// The audit writer's queue (`audit::start_audit_writer`).
    audit: tokio::sync::mpsc::Sender<audit::QueuedAudit>,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections a PostgreSQL pool keeps at most.
const POSTGRES_CONNECTIONS: u32 = 8;

impl Store {
    /// A store on `backend`, with its audit writer started.
    fn new(backend: Backend) -> Store {
        let audit = audit::start_audit_writer(backend.clone());
        Store { backend, audit }
    }

    /// Opens the store `config` names and migrates it: PostgreSQL when
    /// `[store] url` is set, else the SQLite file in the data directory
    /// (created on first use).
    pub async fn open(config: &crate::config::Config) -> Result<Store, StoreError> {
        match &config.store.url {
            Some(url) => Store::open_postgres(url).await,
            None => Store::open_sqlite(&config.database_path()).await,
        }
    }

    /// Opens the store `config` names without creating or migrating it
    /// (for `consolegate doctor`, which looks but does not change).
    pub async fn open_existing(config: &crate::config::Config) -> Result<Store, StoreError> {
        match &config.store.url {
            Some(url) => Store::connect_postgres(url, 1).await,
            None => Store::open_sqlite_existing(&config.database_path()).await,
        }
    }

    /// Opens the PostgreSQL database at `url` and migrates it. Migrations
    /// run under PostgreSQL's advisory lock, so nodes starting at once
    /// migrate once.
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        let store = Store::connect_postgres(url, POSTGRES_CONNECTIONS).await?;
        if let Backend::Postgres(pool) = &store.backend {
            POSTGRES_MIGRATIONS.run(pool).await?;
        }
        Ok(store)
    }

    async fn connect_postgres(url: &str, connections: u32) -> Result<Store, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|error| StoreError::Open {
                path: redact_url(url),
                error,
            })?;
        Ok(Store::new(Backend::Postgres(pool)))
    }

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
                let file = private_file(&lock_path)?;
                file.lock()?;
                Ok::<_, std::io::Error>(file)
            })
            .await
            .map_err(|e| open_error(std::io::Error::other(e)))?
            .map_err(open_error)?
        };
        // The database holds the instances' private host keys, and so do
        // its `-wal` and `-shm` files. SQLite creates those with the mode
        // of the database file (whatever the umask), so the database is
        // created owner-only before SQLite opens it, and one left open to
        // others (by an older version, or a restore) is made owner-only,
        // sidecars included, before SQLite reuses them.
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            crate::files::make_owner_only(Path::new(&name))?;
        }
        private_file(path).map_err(|error| StoreError::Open {
            path: path.display().to_string(),
            error: sqlx::Error::Io(error),
        })?;
        // Durable at every commit (docs/durability.md): in WAL mode, FULL
        // syncs the log before a commit returns, so whatever the API
        // answered survives a power loss, not only a killed process.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
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
            SQLITE_MIGRATIONS.run(&first).await?;
            first.close().await;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        drop(lock);
        Ok(Store::new(Backend::Sqlite(pool)))
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
        Ok(Store::new(Backend::Sqlite(pool)))
    }

    /// Checks that the database answers and would take a write: a read of
    /// its own tables inside a write transaction that is rolled back (so a
    /// file another process holds locked, a file that became read-only, or
    /// a PostgreSQL standby, fails).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                // Answer within 2 s (not the 10 s writers wait), then put it back.
                sqlx::query("PRAGMA busy_timeout = 2000")
                    .execute(&mut *conn)
                    .await?;
                let probe = async {
                    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                    let read =
                        sqlx::query("SELECT count(*) FROM console_connections WHERE id = ''")
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
            Backend::Postgres(pool) => {
                let read_only: bool = sqlx::query_scalar(
                    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
                )
                .fetch_one(pool)
                .await?;
                if read_only {
                    return Err(StoreError::ReadOnly);
                }
                sqlx::query("SELECT count(*) FROM console_connections WHERE id = ''")
                    .fetch_one(pool)
                    .await?;
                Ok(())
            }
        }
    }

    /// The schema migrations this build has that the database lacks
    /// (their descriptions); empty when it is up to date.
    pub async fn missing_migrations(&self) -> Result<Vec<String>, StoreError> {
        let query = "SELECT version FROM _sqlx_migrations WHERE success";
        let (applied, migrator) = match &self.backend {
            Backend::Sqlite(pool) => (
                sqlx::query_scalar::<_, i64>(query).fetch_all(pool).await,
                &SQLITE_MIGRATIONS,
            ),
            Backend::Postgres(pool) => (
                sqlx::query_scalar::<_, i64>(query).fetch_all(pool).await,
                &POSTGRES_MIGRATIONS,
            ),
        };
        let applied = match applied {
            Ok(v) => v,
            // No migration table: nothing was ever applied.
            Err(sqlx::Error::Database(e))
                if e.message().contains("no such table")
                    || e.code().as_deref() == Some("42P01") =>
            {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        Ok(migrator
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }

    /// Which backend this is: `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
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
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO instance_host_keys (instance_id, private_key, time_created) \
                 VALUES ($1, $2, $3) ON CONFLICT (instance_id) DO NOTHING",
            )
            .bind(instance_id)
            .bind(&pem)
            .bind(now_ms())
            .execute(pool)
            .await
            .map(drop)
        })?;
        self.load_instance_key(instance_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                table: "instance_host_keys",
                message: format!("key for {instance_id} vanished after insert"),
            })
    }

    async fn load_instance_key(&self, instance_id: &str) -> Result<Option<PrivateKey>, StoreError> {
        let pem = on_pool!(self, |pool| {
            sqlx::query_scalar::<_, String>(
                "SELECT private_key FROM instance_host_keys WHERE instance_id = $1",
            )
            .bind(instance_id)
            .fetch_optional(pool)
            .await
        })?;
        pem.map(|pem| {
            crate::keys::decode_private_key(&pem).map_err(|message| StoreError::Corrupt {
                table: "instance_host_keys",
                message,
            })
        })
        .transpose()
    }

    /// Closes the pool, waiting for queries in flight.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await);
    }
}

/// `url` with its password, if any, hidden (for messages and logs).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a database URL)".into();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
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

/// Opens `path` for writing, creating it owner-only if it does not exist
/// (an empty file is an empty SQLite database).
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(crate::files::FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::redact_url;
    use super::*;
    use crate::files::mode_of as mode;
    use std::os::unix::fs::PermissionsExt;

    /// The `-wal` and `-shm` files hold what the database holds (the
    /// instances' private host keys): owner-only from the first write,
    /// whatever the umask, and so is the lock file.
    #[tokio::test]
    async fn a_new_sqlite_database_and_its_wal_and_shm_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consolegate.db");
        let store = Store::open_sqlite(&path).await.unwrap();
        store.instance_host_key("vm1").await.unwrap();
        for name in [
            "consolegate.db",
            "consolegate.db-wal",
            "consolegate.db-shm",
            "consolegate.lock",
        ] {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
        store.close().await;
    }

    /// A database another program (an older version, the `sqlite3` shell)
    /// made and holds open keeps its `-wal` and `-shm` files as they are:
    /// they are made owner-only with it, not just the database file.
    #[tokio::test]
    async fn a_database_open_to_others_is_made_owner_only_with_its_live_wal_and_shm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consolegate.db");
        let other = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .unwrap();
        sqlx::query("CREATE TABLE other (x)")
            .execute(&other)
            .await
            .unwrap();
        let files = ["consolegate.db", "consolegate.db-wal", "consolegate.db-shm"];
        for name in files {
            let file = dir.path().join(name);
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let store = Store::open_sqlite(&path).await.unwrap();
        store.instance_host_key("vm1").await.unwrap();
        for name in files {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
        store.close().await;
        other.close().await;
    }

    /// What docs/durability.md promises of SQLite: write-ahead logging, and
    /// the log synced at every commit, on every connection of the pool.
    #[tokio::test]
    async fn sqlite_runs_in_wal_mode_and_syncs_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("consolegate.db"))
            .await
            .unwrap();
        let Backend::Sqlite(pool) = &store.backend else {
            unreachable!()
        };
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut conn = pool.acquire().await.unwrap();
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!((mode.as_str(), sync), ("wal", 2), "2 is FULL");
            held.push(conn);
        }
        drop(held);
        store.close().await;
    }

    #[test]
    fn database_urls_are_shown_without_their_password() {
        assert_eq!(
            redact_url("postgres://cg:s3cret@db:5432/consolegate"),
            "postgres://cg:***@db:5432/consolegate"
        );
        assert_eq!(
            redact_url("postgres://db/consolegate"),
            "postgres://db/consolegate"
        );
        assert_eq!(
            redact_url("postgres://cg@db/consolegate"),
            "postgres://cg@db/consolegate"
        );
        assert_eq!(redact_url("not a url"), "(a database URL)");
    }
}
