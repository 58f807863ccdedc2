//! Console-connection operations, with their rules, for every front end.
//!
//! The CLI and the HTTP API both create, read, list, tag and delete console
//! connections; [`ConsoleConnections`] is where the rules live once: the
//! instance must be configured, the key must be acceptable, tags are bounded,
//! an instance has one live connection per key, and every answer is the
//! [`ConnectionView`] users see. Authorisation (which compartments a caller
//! may use) is the front end's business.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::audit::{AuditEvent, AuditKind, Requester};
use crate::config::{Config, SharedConfig};
use crate::keys::{ClientKey, HostKeys, KeyError};
use crate::store::{
    ConnectionFilter, ConnectionRecord, DefinedTags, FreeformTags, LifecycleState, PageKey,
    RetryKey, Store, StoreError,
};

mod host_keys;
pub mod tokens;
mod view;
pub use host_keys::InstanceKeys;
pub use tokens::ConsoleTokens;
pub use view::{ConnectionView, Endpoint};

/// Most tags of each kind on one connection.
pub const MAX_TAGS: usize = 64;
/// Longest tag key or namespace.
pub const MAX_TAG_KEY: usize = 100;
/// Longest tag value.
pub const MAX_TAG_VALUE: usize = 256;

/// Why an operation was refused; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The instance is not configured.
    #[error("unknown instance `{instance}`; configured instances: {known}")]
    UnknownInstance {
        /// What was asked for.
        instance: String,
        /// What exists.
        known: String,
    },
    /// The public key was refused.
    #[error("invalid public key: {0}")]
    Key(KeyError),
    /// Tags out of bounds.
    #[error("{0}")]
    BadTags(String),
    /// No such connection.
    #[error("no console connection with id `{0}`")]
    NotFound(String),
    /// The connection is not in a state that allows this.
    #[error("console connection {id} is {state}; only ACTIVE connections can be changed")]
    WrongState {
        /// Connection id.
        id: String,
        /// Its state.
        state: LifecycleState,
    },
    /// The store refused or failed (conflicts included).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a new connection is made of.
#[derive(Debug, Clone, Default)]
pub struct NewConnection {
    /// The instance.
    pub instance_id: String,
    /// The client's public key, as in a `.pub` file.
    pub public_key: String,
    /// Free-form tags.
    pub freeform_tags: FreeformTags,
    /// Defined tags.
    pub defined_tags: DefinedTags,
}

/// The console-connection operations over one store.
#[derive(Debug, Clone)]
pub struct ConsoleConnections {
    store: Store,
    config: SharedConfig,
    endpoint: Endpoint,
    instance_keys: InstanceKeys,
}

impl ConsoleConnections {
    /// Operations on `store` for the instances of `config`.
    pub fn new(store: Store, config: impl Into<SharedConfig>, host_keys: &HostKeys) -> Self {
        let config = config.into();
        let now = config.get();
        let endpoint = Endpoint {
            public_host: now.ssh.public_host.clone(),
            public_port: now.ssh.advertised_port(),
            service_host_keys: vec![
                host_keys.ed25519.public_key().clone(),
                host_keys.rsa.public_key().clone(),
            ],
        };
        ConsoleConnections {
            instance_keys: InstanceKeys::new(store.clone()),
            store,
            config,
            endpoint,
        }
    }

    /// The config these operations serve now (a reload may replace it).
    pub fn config(&self) -> std::sync::Arc<Config> {
        self.config.get()
    }

    /// The console tokens of the same store and config.
    pub fn tokens(&self) -> ConsoleTokens {
        ConsoleTokens::new(self.store.clone(), self.config.clone())
    }

    /// The instances' inner host keys, shared with the SSH data plane.
    pub fn instance_keys(&self) -> &InstanceKeys {
        &self.instance_keys
    }

    /// The resource users see for `record`.
    pub async fn view(&self, record: &ConnectionRecord) -> Result<ConnectionView, ConnectionError> {
        let key = self.instance_keys.get(&record.instance_id).await?;
        Ok(ConnectionView::new(
            record,
            &self.endpoint,
            key.public_key(),
        ))
    }

    /// Validates and stores a new ACTIVE connection (usable at once).
    pub async fn create(
        &self,
        new: NewConnection,
        retry: Option<&RetryKey>,
        by: &Requester,
    ) -> Result<ConnectionRecord, ConnectionError> {
        let config = self.config.get();
        let Some(instance) = config.instance(&new.instance_id) else {
            return Err(ConnectionError::UnknownInstance {
                instance: new.instance_id,
                known: known_instances(&config),
            });
        };
        let key = ClientKey::parse(&new.public_key).map_err(ConnectionError::Key)?;
        check_tags(&new.freeform_tags, &new.defined_tags)?;
        let record = ConnectionRecord {
            id: crate::ids::new_connection_id(),
            compartment_id: instance.compartment.clone(),
            instance_id: instance.id.clone(),
            lifecycle_state: LifecycleState::Active,
            public_key: key.to_openssh(),
            fingerprint: key.fingerprint().to_owned(),
            freeform_tags: new.freeform_tags,
            defined_tags: new.defined_tags,
            time_created: OffsetDateTime::now_utc(),
        };
        let audit = change(AuditKind::Create, &record, by);
        self.store.create_connection(&record, retry, &audit).await?;
        Ok(record)
    }

    /// The connection an earlier create made with `caller`'s retry token
    /// `token`, as (request hash, connection id), while the token lives.
    pub async fn find_retry(
        &self,
        caller: &str,
        token: &str,
    ) -> Result<Option<(String, String)>, ConnectionError> {
        Ok(self.store.find_retry_token(caller, token).await?)
    }

    /// One connection, in any state.
    pub async fn get(&self, id: &str) -> Result<ConnectionRecord, ConnectionError> {
        self.store
            .get_connection(id)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(id.to_owned()))
    }

    /// Connections matching `filter`, oldest first, after `page`, at most `limit`.
    pub async fn list(
        &self,
        filter: &ConnectionFilter,
        page: Option<&PageKey>,
        limit: Option<usize>,
    ) -> Result<Vec<ConnectionRecord>, ConnectionError> {
        Ok(self.store.list_connections(filter, page, limit).await?)
    }

    /// Replaces the tags given (`None` keeps that kind) of an ACTIVE connection.
    pub async fn update_tags(
        &self,
        id: &str,
        freeform: Option<&FreeformTags>,
        defined: Option<&DefinedTags>,
        by: &Requester,
    ) -> Result<ConnectionRecord, ConnectionError> {
        let record = self.get(id).await?;
        if record.lifecycle_state != LifecycleState::Active {
            return Err(ConnectionError::WrongState {
                id: id.to_owned(),
                state: record.lifecycle_state,
            });
        }
        check_tags(
            freeform.unwrap_or(&BTreeMap::new()),
            defined.unwrap_or(&BTreeMap::new()),
        )?;
        let audit = change(AuditKind::Update, &record, by);
        self.store
            .update_tags(id, freeform, defined, &audit)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(id.to_owned()))
    }

    /// Deletes at once (→ DELETED): for the CLI, which cannot count on a
    /// running gateway to finish a DELETING.
    pub async fn delete_now(
        &self,
        id: &str,
        by: &Requester,
    ) -> Result<ConnectionRecord, ConnectionError> {
        let audit = change(AuditKind::Delete, &self.get(id).await?, by);
        self.store
            .delete_connection(id, &audit)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(id.to_owned()))
    }

    /// Starts a deletion (→ DELETING; the gateway's lifecycle task makes it
    /// DELETED once live sessions have seen it).
    pub async fn begin_delete(
        &self,
        id: &str,
        by: &Requester,
    ) -> Result<ConnectionRecord, ConnectionError> {
        let audit = change(AuditKind::Delete, &self.get(id).await?, by);
        self.store
            .begin_delete(id, &audit)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(id.to_owned()))
    }
}

/// The audit row of a change to `record` that `by` asked for.
fn change(kind: AuditKind, record: &ConnectionRecord, by: &Requester) -> AuditEvent {
    let mut event = AuditEvent::new(kind);
    event.connection_id = Some(record.id.clone());
    event.instance_id = Some(record.instance_id.clone());
    event.fingerprint = Some(record.fingerprint.clone());
    event.peer = by.peer.clone();
    event.detail = Some(format!("by {}", by.name));
    event
}

pub(crate) fn check_tags(
    freeform: &FreeformTags,
    defined: &DefinedTags,
) -> Result<(), ConnectionError> {
    let bad = |m: String| Err(ConnectionError::BadTags(m));
    if freeform.len() > MAX_TAGS || defined.values().map(BTreeMap::len).sum::<usize>() > MAX_TAGS {
        return bad(format!("at most {MAX_TAGS} tags of each kind are allowed"));
    }
    for (k, v) in freeform {
        if k.is_empty() || k.len() > MAX_TAG_KEY || v.len() > MAX_TAG_VALUE {
            return bad(format!(
                "freeform tag `{}`: keys must be 1 to {MAX_TAG_KEY} characters, values at most {MAX_TAG_VALUE}",
                k.chars().take(MAX_TAG_KEY).collect::<String>()
            ));
        }
    }
    for (ns, tags) in defined {
        if ns.is_empty() || ns.len() > MAX_TAG_KEY {
            return bad(format!(
                "defined tag namespaces must be 1 to {MAX_TAG_KEY} characters"
            ));
        }
        for (k, v) in tags {
            let text_len = v.as_str().map_or(usize::MAX, str::len);
            if k.is_empty() || k.len() > MAX_TAG_KEY || text_len > MAX_TAG_VALUE {
                return bad(format!(
                    "defined tag `{ns}.{k}`: keys must be 1 to {MAX_TAG_KEY} characters and values strings of at most {MAX_TAG_VALUE}"
                ));
            }
        }
    }
    Ok(())
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
