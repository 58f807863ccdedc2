//! `consolegate status`: the running gateway's consoles and sessions, as a
//! table for people (JSON for scripts is the [`GatewayStatus`] itself).

use std::fmt::Write as _;

use super::admin::GatewayStatus;

/// The status as text: one block per instance, its sessions indented.
pub fn table(status: &GatewayStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "consolegate {} (pid {}), up since {}; SSH on {}, API on {}{}",
        status.version,
        status.pid,
        status.started,
        status.ssh_listen,
        status.api_listen,
        status
            .metrics_listen
            .as_ref()
            .map(|m| format!(", metrics on {m}"))
            .unwrap_or_default()
    );
    if status.instances.is_empty() {
        out.push_str("no instances are configured\n");
    }
    for i in &status.instances {
        let _ = writeln!(
            out,
            "\n{}  {}  {} since {}",
            i.instance,
            i.target,
            match (i.held, i.connected) {
                (false, _) => "HELD ELSEWHERE",
                (true, true) => "UP",
                (true, false) => "DOWN",
            },
            i.since
        );
        if !i.connected && i.held {
            let _ = writeln!(out, "  {}", i.state);
        }
        let _ = writeln!(
            out,
            "  last output {}; {} bytes out of the console, {} in; {} reconnects; {} bytes skipped",
            i.last_output.as_deref().unwrap_or("never"),
            i.bytes_from_console,
            i.bytes_to_console,
            i.reconnects,
            i.skipped_bytes
        );
        if i.sessions.is_empty() {
            out.push_str("  no sessions attached\n");
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<4} {:<10} {:<12} {:<45} {:<21} {:<24} {:>10} {:>8} {:>5}",
            "ID", "ROLE", "CONNECTION", "KEY", "FROM", "SINCE", "BYTES OUT", "IN", "LAGS"
        );
        for s in &i.sessions {
            // An SSH session shows its connection and key; a web one its token.
            let (who, key) = match (&s.connection_id, &s.console_token) {
                (Some(id), _) => (
                    format!("…{}", &id[id.len().saturating_sub(11)..]),
                    s.fingerprint.clone().unwrap_or_default(),
                ),
                (None, Some(token)) => ("web".to_owned(), format!("console token {token}")),
                (None, None) => (String::new(), String::new()),
            };
            let _ = writeln!(
                out,
                "  {:<4} {:<10} {:<12} {:<45} {:<21} {:<24} {:>10} {:>8} {:>5}",
                s.id, s.role, who, key, s.peer, s.since, s.bytes_out, s.bytes_in, s.lag_drops
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::hub::{HubStatus, SessionStatus};

    #[test]
    fn the_table_names_every_instance_and_session() {
        let status = GatewayStatus {
            version: "0.1.0".into(),
            pid: 7,
            started: "t0".into(),
            ssh_listen: "127.0.0.1:2222".into(),
            api_listen: "127.0.0.1:8080".into(),
            metrics_listen: None,
            host_key_fingerprints: vec![],
            runtime_tasks: 12,
            instances: vec![HubStatus {
                instance: "vm1".into(),
                target: "unix:/run/vm1".into(),
                connected: false,
                held: true,
                state: "CG-CONS-001 console unix:/run/vm1 is unavailable".into(),
                since: "t1".into(),
                last_output: None,
                bytes_from_console: 10,
                bytes_to_console: 2,
                skipped_bytes: 0,
                reconnects: 3,
                sessions: vec![SessionStatus {
                    id: 1,
                    connection_id: Some("ocid1.instanceconsoleconnection.oc1..abcdefghijk".into()),
                    fingerprint: Some("SHA256:abc".into()),
                    console_token: None,
                    peer: "127.0.0.1:5000".into(),
                    role: "writer".into(),
                    since: "t2".into(),
                    bytes_out: 10,
                    bytes_in: 2,
                    lag_drops: 0,
                    skipped_bytes: 0,
                }],
            }],
        };
        let t = table(&status);
        assert!(t.contains("vm1  unix:/run/vm1  DOWN since t1"), "{t}");
        assert!(t.contains("CG-CONS-001"), "{t}");
        assert!(t.contains("3 reconnects"), "{t}");
        assert!(
            t.contains("writer") && t.contains("SHA256:abc") && t.contains("…abcdefghijk"),
            "{t}"
        );
    }
}
