//! The `connection` and `check` subcommands, as library functions.
//!
//! They work directly on the store named by the config, so they run on the
//! gateway host with or without `consolegate serve` running; a running
//! gateway sees their changes at once (deletes end live sessions within its
//! re-validation interval).

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::config::{Config, ConfigError};
use crate::connection::{ConnectionRecord, ConnectionView, Endpoint, LifecycleState};
use crate::keys::{ClientKey, HostKeys, KeyError};
use crate::store::{ConnectionFilter, Store, StoreError};

/// Why a command failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The public key was refused.
    #[error("invalid public key: {0}")]
    Key(KeyError),
    /// The instance is not in the config.
    #[error("unknown instance `{instance}`; configured instances: {known}")]
    UnknownInstance {
        /// What was asked for.
        instance: String,
        /// What exists.
        known: String,
    },
    /// No such connection.
    #[error("no console connection with id `{0}`")]
    NotFound(String),
    /// A tag was not `key=value`.
    #[error("freeform tag `{0}` must look like key=value")]
    BadTag(String),
    /// The store failed (or refused: conflict).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Host keys or state could not be opened.
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
}

impl From<KeyError> for CliError {
    fn from(e: KeyError) -> Self {
        CliError::Key(e)
    }
}

/// The store and what connection views need.
pub struct Context {
    config: Config,
    store: Store,
    endpoint: Endpoint,
}

impl Context {
    /// Opens the store and host keys named by `config`.
    pub async fn open(config: Config) -> Result<Context, CliError> {
        let (store, host_keys) = crate::gateway::open_state(&config).await?;
        let endpoint = endpoint(&config, &host_keys);
        Ok(Context {
            config,
            store,
            endpoint,
        })
    }

    async fn view(&self, record: &ConnectionRecord) -> Result<ConnectionView, CliError> {
        let key = self.store.instance_host_key(&record.instance_id).await?;
        Ok(ConnectionView::new(
            record,
            &self.endpoint,
            key.public_key(),
        ))
    }

    /// `connection create`: registers `public_key` for `instance_id`.
    pub async fn create(
        &self,
        instance_id: &str,
        public_key: &str,
        freeform_tags: &[String],
    ) -> Result<ConnectionView, CliError> {
        let Some(instance) = self.config.instance(instance_id) else {
            return Err(CliError::UnknownInstance {
                instance: instance_id.to_owned(),
                known: known_instances(&self.config),
            });
        };
        let key = ClientKey::parse(public_key)?;
        let mut tags = BTreeMap::new();
        for tag in freeform_tags {
            let (k, v) = tag
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| CliError::BadTag(tag.clone()))?;
            tags.insert(k.to_owned(), v.to_owned());
        }
        let record = ConnectionRecord {
            id: crate::ids::new_connection_id(),
            compartment_id: instance.compartment.clone(),
            instance_id: instance.id.clone(),
            lifecycle_state: LifecycleState::Active,
            public_key: key.to_openssh(),
            fingerprint: key.fingerprint().to_owned(),
            freeform_tags: tags,
            defined_tags: BTreeMap::new(),
            time_created: OffsetDateTime::now_utc(),
        };
        self.store.create_connection(&record).await?;
        self.view(&record).await
    }

    /// `connection get`.
    pub async fn get(&self, id: &str) -> Result<ConnectionView, CliError> {
        let record = self
            .store
            .get_connection(id)
            .await?
            .ok_or_else(|| CliError::NotFound(id.to_owned()))?;
        self.view(&record).await
    }

    /// `connection list`.
    pub async fn list(&self, filter: &ConnectionFilter) -> Result<Vec<ConnectionView>, CliError> {
        let mut views = Vec::new();
        for record in self.store.list_connections(filter).await? {
            views.push(self.view(&record).await?);
        }
        Ok(views)
    }

    /// `connection delete`: the record becomes DELETED; live sessions end.
    pub async fn delete(&self, id: &str) -> Result<ConnectionView, CliError> {
        let record = self
            .store
            .delete_connection(id)
            .await?
            .ok_or_else(|| CliError::NotFound(id.to_owned()))?;
        self.view(&record).await
    }
}

/// What connection strings advertise, from the config and host keys.
pub fn endpoint(config: &Config, host_keys: &HostKeys) -> Endpoint {
    Endpoint {
        public_host: config.ssh.public_host.clone(),
        public_port: config.ssh.advertised_port(),
        service_host_keys: vec![
            host_keys.ed25519.public_key().clone(),
            host_keys.rsa.public_key().clone(),
        ],
    }
}

fn known_instances(config: &Config) -> String {
    if config.instances.is_empty() {
        return "none (add an [[instance]] to the config)".into();
    }
    config
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `check`: a one-paragraph summary of a valid config.
pub fn summarize(config: &Config) -> String {
    let mut out = format!(
        "config OK: SSH on {} (connection strings use {}:{}), data in {}\n",
        config.ssh.listen,
        config.ssh.public_host,
        config.ssh.advertised_port(),
        config.data_dir.display()
    );
    for i in &config.instances {
        out.push_str(&format!(
            "  instance {} ({}), compartment {}: serial {}, vnc {}\n",
            i.id,
            i.name(),
            i.compartment,
            i.serial,
            i.vnc
                .as_ref()
                .map_or("none".to_owned(), ToString::to_string)
        ));
    }
    if config.instances.is_empty() {
        out.push_str("  warning: no [[instance]] is configured; nothing can be reached\n");
    }
    out
}
