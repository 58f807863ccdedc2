//! The `InstanceConsoleConnection` resource users see.
//!
//! [`ConnectionView`] is the resource of the OCI API (the seed's shape, plus
//! the inner hop's fingerprint and ready-made `known_hosts` lines), built from a
//! record and the gateway's [`Endpoint`] facts. Connection strings are made
//! here and nowhere else.

use serde::Serialize;

use crate::store::{ConnectionRecord, DefinedTags, FreeformTags, LifecycleState};
use crate::timefmt::format_time;

/// What the gateway tells users about where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name in connection strings.
    pub public_host: String,
    /// Port in connection strings.
    pub public_port: u16,
    /// The outer hop's host keys (public halves).
    pub service_host_keys: Vec<russh::keys::PublicKey>,
}

impl Endpoint {
    /// `ProxyCommand` value reaching the gateway as this connection.
    fn proxy_command(&self, connection_id: &str) -> String {
        format!(
            "ssh -W %h:%p -p {} {connection_id}@{}",
            self.public_port, self.public_host
        )
    }

    /// The serial console command line.
    pub fn connection_string(&self, connection_id: &str, instance_id: &str) -> String {
        format!(
            "ssh -o ProxyCommand='{}' {instance_id}",
            self.proxy_command(connection_id)
        )
    }

    /// The VNC tunnel command line.
    pub fn vnc_connection_string(&self, connection_id: &str, instance_id: &str) -> String {
        format!(
            "ssh -o ProxyCommand='{}' -N -L localhost:5900:{instance_id}:5900 {instance_id}",
            self.proxy_command(connection_id)
        )
    }
}

/// The `InstanceConsoleConnection` resource.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = InstanceConsoleConnection)]
pub struct ConnectionView {
    /// Connection id.
    pub id: String,
    /// Compartment.
    pub compartment_id: String,
    /// Instance.
    pub instance_id: String,
    /// Lifecycle state.
    pub lifecycle_state: LifecycleState,
    /// Fingerprint of the registered client key.
    pub fingerprint: String,
    /// Fingerprint of the gateway's (outer hop's) host key.
    pub service_host_key_fingerprint: String,
    /// Fingerprint of the instance's (inner hop's) host key.
    pub instance_host_key_fingerprint: String,
    /// Serial console command line.
    pub connection_string: String,
    /// VNC tunnel command line.
    pub vnc_connection_string: String,
    /// Lines to append to `~/.ssh/known_hosts` so both hops verify.
    pub known_hosts: Vec<String>,
    /// Free-form tags.
    pub freeform_tags: FreeformTags,
    /// Defined tags.
    #[schema(value_type = Object)]
    pub defined_tags: DefinedTags,
    /// RFC 3339 creation time.
    pub time_created: String,
}

impl ConnectionView {
    /// Builds the resource for `record`, whose instance presents `instance_key`.
    pub fn new(
        record: &ConnectionRecord,
        endpoint: &Endpoint,
        instance_key: &russh::keys::PublicKey,
    ) -> ConnectionView {
        let mut known_hosts: Vec<String> = endpoint
            .service_host_keys
            .iter()
            .map(|k| crate::keys::known_hosts_line(&endpoint.public_host, endpoint.public_port, k))
            .collect();
        known_hosts.push(crate::keys::known_hosts_line(
            &record.instance_id,
            22,
            instance_key,
        ));
        ConnectionView {
            id: record.id.clone(),
            compartment_id: record.compartment_id.clone(),
            instance_id: record.instance_id.clone(),
            lifecycle_state: record.lifecycle_state,
            fingerprint: record.fingerprint.clone(),
            service_host_key_fingerprint: endpoint
                .service_host_keys
                .first()
                .map(crate::keys::fingerprint)
                .unwrap_or_default(),
            instance_host_key_fingerprint: crate::keys::fingerprint(instance_key),
            connection_string: endpoint.connection_string(&record.id, &record.instance_id),
            vnc_connection_string: endpoint.vnc_connection_string(&record.id, &record.instance_id),
            known_hosts,
            freeform_tags: record.freeform_tags.clone(),
            defined_tags: record.defined_tags.clone(),
            time_created: format_time(record.time_created),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_have_the_seed_shape() {
        let e = Endpoint {
            public_host: "gw.example".into(),
            public_port: 2222,
            service_host_keys: vec![],
        };
        assert_eq!(
            e.connection_string("ocid1.x..abc", "vm1"),
            "ssh -o ProxyCommand='ssh -W %h:%p -p 2222 ocid1.x..abc@gw.example' vm1"
        );
        assert_eq!(
            e.vnc_connection_string("ocid1.x..abc", "vm1"),
            "ssh -o ProxyCommand='ssh -W %h:%p -p 2222 ocid1.x..abc@gw.example' -N -L localhost:5900:vm1:5900 vm1"
        );
    }
}
