//! Reloading `gateway.toml` without dropping anyone (SIGHUP, or `consolegate
//! reload` through the admin socket).
//!
//! The new file is validated whole first (it parses, its API keys load, each
//! new instance's inner host key is in the store, its log filter is valid);
//! if anything is wrong nothing changes and the old configuration serves on.
//! Then, at once: instances added get a console hub, instances removed or
//! changed have their sessions told (CG-OPS-007) and closed, API users and
//! Nova tokens are replaced, the log level is set, and the HTTP listener's
//! TLS certificate and key are read again (a renewed certificate is served
//! from the next handshake; a pair that does not load rejects the reload,
//! `CG-HTTP-006`). Settings that only a
//! restart can change (listeners, the data directory, limits) keep their
//! running values and are named in the log (CG-OPS-008).

use std::sync::Arc;

use crate::api::ApiState;
use crate::api::auth::ApiUsers;
use crate::config::{Config, InstanceConfig, SharedConfig};
use crate::connections::InstanceKeys;
use crate::console::hub::ConsoleHubs;
use crate::ops::{Health, ReloadOutcome};
use crate::sessions::ssh::SshContext;

/// Sets the log filter (a `tracing` filter such as `info`); the binary
/// provides it, since it owns the subscriber.
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Everything a reload changes.
pub(super) struct Reloader {
    pub config: SharedConfig,
    /// The SSH listener's port, for connection strings of a config without `public_port`.
    pub ssh_port: Option<u16>,
    pub hubs: ConsoleHubs,
    pub ssh: Arc<SshContext>,
    pub api: ApiState,
    pub instance_keys: InstanceKeys,
    pub health: Arc<Health>,
    pub set_log_level: Option<SetLogLevel>,
    /// In a fleet: the lease keeper's view of the instances.
    pub fleet: Option<crate::fleet::Fleet>,
    /// The HTTP listener's TLS, whose files are read again.
    pub tls: Option<Arc<crate::api::tls::Tls>>,
}

impl Reloader {
    /// Re-reads the config file and puts it in force, or keeps the old one.
    pub async fn reload(&self) -> ReloadOutcome {
        let outcome = match self.try_reload().await {
            Ok(outcome) => outcome,
            Err(message) => {
                tracing::warn!(code = "CG-OPS-006", %message,
                    "configuration reload rejected; the previous configuration keeps serving");
                ReloadOutcome {
                    ok: false,
                    message,
                    ..ReloadOutcome::default()
                }
            }
        };
        let outcome = ReloadOutcome {
            at: crate::timefmt::format_time(time::OffsetDateTime::now_utc()),
            ..outcome
        };
        self.health.set_last_reload(outcome.clone());
        outcome
    }

    async fn try_reload(&self) -> Result<ReloadOutcome, String> {
        let old = self.config.get();
        let Some(path) = old.source.clone() else {
            return Err("CG-OPS-006 this gateway was not started from a config file".into());
        };
        let rejected = |e: &dyn std::fmt::Display| {
            format!(
                "CG-OPS-006 {} was rejected whole (the previous configuration keeps serving): {e}",
                path.display()
            )
        };
        let mut new = Config::load(&path).map_err(|e| rejected(&e))?;
        if let Some(port) = self.ssh_port {
            new.ssh.public_port.get_or_insert(port);
        }
        let users = ApiUsers::from_config(&new.api_users).map_err(|e| rejected(&e))?;
        let keys = self
            .instance_keys
            .get_all(&new.instances)
            .await
            .map_err(|e| rejected(&e))?;
        let needs_restart = keep_restart_only_settings(&old, &mut new);
        let certificate = match &self.tls {
            Some(tls) => Some(tls.read_files().map_err(|e| rejected(&e))?),
            None => None,
        };
        if new.log.level != old.log.level
            && let Some(set) = &self.set_log_level
        {
            set(&new.log.level).map_err(|e| rejected(&format!("[log] level: {e}")))?;
        }

        // Validated: put it in force.
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        let (mut changed, mut updated) = (Vec::new(), Vec::new());
        for o in &old.instances {
            match new.instance(&o.id) {
                None => removed.push(o.id.clone()),
                Some(n) if needs_new_hub(o, n) => changed.push(o.id.clone()),
                Some(n) if n != o => updated.push(o.id.clone()),
                Some(_) => {}
            }
        }
        for n in &new.instances {
            if old.instance(&n.id).is_none() {
                added.push(n.id.clone());
            }
        }
        let new = Arc::new(new);
        self.config.replace(new.clone());
        self.ssh.set_instances(&new.instances, keys);
        self.api.set_users(users);
        if let (Some(tls), Some(certificate)) = (&self.tls, certificate) {
            tls.install(certificate);
        }
        for id in &removed {
            let reason = format!(
                "CG-OPS-007 instance {id} was removed from the gateway's configuration; this session is closed"
            );
            self.hubs.retire(id, reason).await;
        }
        for id in &changed {
            let reason = format!(
                "CG-OPS-007 the configuration of instance {id} changed; reconnect to use the new settings"
            );
            self.hubs.retire(id, reason).await;
        }
        for id in added.iter().chain(&changed) {
            if let Some(instance) = new.instance(id) {
                self.hubs.add(instance.clone());
            }
        }
        if let Some(fleet) = &self.fleet {
            fleet.set_instances(new.instances.iter().map(|i| i.id.clone()).collect());
        }
        for setting in &needs_restart {
            tracing::warn!(code = "CG-OPS-008", %setting,
                "this setting changed in the config file but takes effect only on restart");
        }
        tracing::info!(added = ?added, removed = ?removed, changed = ?changed,
            updated = ?updated, path = %path.display(), "configuration reloaded");
        Ok(ReloadOutcome {
            ok: true,
            message: format!("{} reloaded", path.display()),
            added,
            removed,
            changed,
            updated,
            needs_restart,
            ..ReloadOutcome::default()
        })
    }
}

/// Whether a change to an instance reaches its console hub (the backend,
/// the history, the input policy, the console log). Settings read when a
/// session starts (name, compartment, timeouts, recording) apply to new
/// sessions without closing the attached ones.
fn needs_new_hub(old: &InstanceConfig, new: &InstanceConfig) -> bool {
    let mut session_only = new.clone();
    session_only.display_name.clone_from(&old.display_name);
    session_only.compartment.clone_from(&old.compartment);
    session_only.idle_timeout_secs = old.idle_timeout_secs;
    session_only.max_session_secs = old.max_session_secs;
    session_only.timeout_warning_secs = old.timeout_warning_secs;
    session_only.record = old.record;
    session_only.record_dir.clone_from(&old.record_dir);
    session_only != *old
}

/// Copies into `new` the settings that only a restart can change (so that
/// the configuration in force says what really runs), and names those that
/// differ.
fn keep_restart_only_settings(old: &Config, new: &mut Config) -> Vec<String> {
    let mut differ = Vec::new();
    macro_rules! keep {
        ($($field:ident).+, $name:expr) => {
            if format!("{:?}", old.$($field).+) != format!("{:?}", new.$($field).+) {
                differ.push($name.to_owned());
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    keep!(data_dir, "data_dir");
    keep!(ssh, "[ssh]");
    keep!(api, "[api]");
    keep!(metrics, "[metrics]");
    keep!(store.url, "[store] url");
    keep!(cluster, "[cluster]");
    keep!(nova.public_url, "[nova] public_url");
    keep!(nova.novnc_dir, "[nova] novnc_dir");
    keep!(nova.xterm_dir, "[nova] xterm_dir");
    keep!(log.format, "[log] format");
    keep!(audit_retention_days, "audit_retention_days");
    keep!(audit_refused_burst, "audit_refused_burst");
    keep!(audit_refused_per_hour, "audit_refused_per_hour");
    keep!(
        session.max_sessions_per_instance,
        "[session] max_sessions_per_instance"
    );
    keep!(
        session.max_sessions_per_connection,
        "[session] max_sessions_per_connection"
    );
    keep!(
        session.max_sessions_per_key,
        "[session] max_sessions_per_key"
    );
    differ
}
