//! The `connection` and `check` subcommands, as library functions.
//!
//! They work directly on the store named by the config, so they run on the
//! gateway host with or without `consolegate serve` running; a running
//! gateway sees their changes at once (deletes end live sessions within its
//! re-validation interval).

use std::collections::BTreeMap;

use std::sync::Arc;

use crate::audit::Requester;
use crate::config::{Config, ConfigError};
use crate::connections::ConnectionView;
use crate::connections::{ConnectionError, ConsoleConnections, NewConnection};
use crate::store::ConnectionFilter;
use crate::store::ConnectionRecord;

/// Why a command failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The operation was refused.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A tag was not `key=value`.
    #[error("freeform tag `{0}` must look like key=value")]
    BadTag(String),
    /// Host keys or state could not be opened.
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
}

/// The console-connection operations, as the CLI runs them.
pub struct Context {
    connections: ConsoleConnections,
}

impl Context {
    /// Opens the store and host keys named by `config`.
    pub async fn open(config: Config) -> Result<Context, CliError> {
        let (store, host_keys) = crate::gateway::open_state(&config).await?;
        Ok(Context {
            connections: ConsoleConnections::new(store, Arc::new(config), &host_keys),
        })
    }

    async fn view(&self, record: &ConnectionRecord) -> Result<ConnectionView, CliError> {
        Ok(self.connections.view(record).await?)
    }

    /// `connection create`: registers `public_key` for `instance_id`.
    pub async fn create(
        &self,
        instance_id: &str,
        public_key: &str,
        freeform_tags: &[String],
    ) -> Result<ConnectionView, CliError> {
        let mut tags = BTreeMap::new();
        for tag in freeform_tags {
            let (k, v) = tag
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| CliError::BadTag(tag.clone()))?;
            tags.insert(k.to_owned(), v.to_owned());
        }
        let new = NewConnection {
            instance_id: instance_id.to_owned(),
            public_key: public_key.to_owned(),
            freeform_tags: tags,
            defined_tags: BTreeMap::new(),
        };
        let record = self
            .connections
            .create(new, None, &Requester::cli())
            .await?;
        self.view(&record).await
    }

    /// `connection get`.
    pub async fn get(&self, id: &str) -> Result<ConnectionView, CliError> {
        let record = self.connections.get(id).await?;
        self.view(&record).await
    }

    /// `connection list`.
    pub async fn list(&self, filter: &ConnectionFilter) -> Result<Vec<ConnectionView>, CliError> {
        let mut views = Vec::new();
        for record in self.connections.list(filter, None, None).await? {
            views.push(self.view(&record).await?);
        }
        Ok(views)
    }

    /// `connection delete`: the record becomes DELETED; live sessions end.
    pub async fn delete(&self, id: &str) -> Result<ConnectionView, CliError> {
        let record = self.connections.delete_now(id, &Requester::cli()).await?;
        self.view(&record).await
    }
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
    out.push_str(&format!(
        "  HTTP API on {}, {} API user(s)\n",
        config.api.listen,
        config.api_users.len()
    ));
    if config.instances.is_empty() {
        out.push_str("  warning: no [[instance]] is configured; nothing can be reached\n");
    }
    out
}
