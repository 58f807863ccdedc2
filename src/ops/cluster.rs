//! `consolegate cluster status`: the nodes sharing this store, read from
//! the store itself (it answers while any node, or none, runs).

use serde::Serialize;

use crate::store::{Lease, NodeRecord};

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// It beat within the node timeout.
    Alive,
    /// It has not beaten for longer than the node timeout (crashed, cut off
    /// from the store, or stopped without saying so).
    Missing,
    /// It stopped cleanly.
    Left,
}

impl NodeState {
    /// The word the table shows.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Missing => "missing",
            NodeState::Left => "left",
        }
    }
}

/// A node, as `cluster status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Its `[cluster] node_id`.
    pub node_id: String,
    /// Where the other nodes reach it.
    pub advertise: Option<String>,
    /// The consolegate version it runs.
    pub version: String,
    /// Alive, missing or left.
    pub state: NodeState,
    /// Seconds since its last heartbeat.
    pub last_seen_secs_ago: u64,
    /// When it (last) started, RFC 3339.
    pub started: String,
    /// The consoles it holds (live console leases).
    pub consoles: usize,
}

/// The status of each node at `now_ms`, given the fleet's node timeout and
/// the live console leases.
pub fn statuses(
    nodes: &[NodeRecord],
    leases: &[Lease],
    now_ms: i64,
    timeout_secs: u64,
) -> Vec<NodeStatus> {
    nodes
        .iter()
        .map(|n| {
            let consoles = leases
                .iter()
                .filter(|l| crate::fleet::node_of(&l.owner) == n.node_id)
                .count();
            let ago_ms = (now_ms - n.last_seen_ms).max(0);
            let state = if n.left_at_ms.is_some() {
                NodeState::Left
            } else if ago_ms > timeout_secs as i64 * 1000 {
                NodeState::Missing
            } else {
                NodeState::Alive
            };
            NodeStatus {
                node_id: n.node_id.clone(),
                advertise: n.advertise.clone(),
                version: n.version.clone(),
                state,
                last_seen_secs_ago: (ago_ms / 1000) as u64,
                started: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(n.started_at_ms) * 1_000_000,
                )
                .map(crate::timefmt::format_time)
                .unwrap_or_default(),
                consoles,
            }
        })
        .collect()
}

/// The nodes as a table.
pub fn table(nodes: &[NodeStatus]) -> String {
    if nodes.is_empty() {
        return "no node has registered in this store ([cluster] node_id)\n".into();
    }
    let mut out = format!(
        "{:<20} {:<8} {:>10} {:>8} {:<24} {:<10} {}\n",
        "NODE", "STATE", "LAST SEEN", "CONSOLES", "STARTED", "VERSION", "ADVERTISE"
    );
    for n in nodes {
        out.push_str(&format!(
            "{:<20} {:<8} {:>10} {:>8} {:<24} {:<10} {}\n",
            n.node_id,
            n.state.as_str(),
            format!("{}s ago", n.last_seen_secs_ago),
            n.consoles,
            n.started,
            n.version,
            n.advertise.as_deref().unwrap_or("-")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, last_seen_ms: i64, left_at_ms: Option<i64>) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            advertise: Some("10.0.0.5:7022".into()),
            link_key: None,
            version: "0.1.0".into(),
            started_at_ms: 1_700_000_000_000,
            last_seen_ms,
            left_at_ms,
        }
    }

    #[test]
    fn nodes_are_alive_missing_or_left() {
        let now = 1_700_000_100_000;
        let nodes = [
            node("a", now - 2_000, None),
            node("b", now - 11_000, None),
            node("c", now - 50_000, Some(now - 50_000)),
        ];
        let lease = |vm: &str, owner: &str| Lease {
            instance_id: vm.into(),
            owner: owner.into(),
            epoch: 1,
            expires_at_ms: now + 10_000,
        };
        let leases = [
            lease("vm1", "a/1f"),
            lease("vm2", "a/2e"),
            lease("vm3", "b/3d"),
        ];
        let s = statuses(&nodes, &leases, now, 10);
        let consoles: Vec<_> = s.iter().map(|n| n.consoles).collect();
        assert_eq!(consoles, [2, 1, 0]);
        let states: Vec<_> = s.iter().map(|n| n.state).collect();
        assert_eq!(
            states,
            [NodeState::Alive, NodeState::Missing, NodeState::Left]
        );
        assert_eq!(s[1].last_seen_secs_ago, 11);
        let t = table(&s);
        assert!(t.lines().nth(2).unwrap().starts_with("b "), "{t}");
        assert!(t.contains("missing"), "{t}");
        assert!(table(&[]).contains("no node"));
    }
}
