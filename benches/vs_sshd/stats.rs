//! Percentiles and /proc readings.

use std::time::Duration;

/// The `p`-th percentile (0..=100, nearest rank) of `samples`.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// utime + stime + cutime + cstime of a process, in seconds: its own CPU
/// and that of the children it has reaped.
fn stat_cpu(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut total = 0.0;
    for i in 11..=14 {
        total += fields.get(i)?.parse::<f64>().ok()?;
    }
    Some(total / TICKS)
}

/// A process's parent id.
fn parent(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and all its descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok())
                && let Some(ppid) = parent(pid)
            {
                all.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU seconds used so far by the process trees under `roots`: every live
/// process's own CPU plus that of the children it reaped. A process that
/// exits is counted through its parent, so deltas of this figure cover
/// short-lived session processes too (an orphan reaped by init is lost,
/// which can only flatter sshd).
pub fn tree_cpu(roots: &[u32]) -> f64 {
    roots
        .iter()
        .flat_map(|&r| process_tree(r))
        .filter_map(stat_cpu)
        .sum()
}

/// A field of /proc/PID/smaps_rollup or status (in KiB).
fn kib_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Proportional set size of `pid` ("self" for this process), in bytes.
pub fn pss(pid: &str) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0) * 1024
}
