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

/// utime + stime of a /proc `stat` file, in seconds.
fn stat_cpu(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// CPU seconds this process has used.
pub fn self_cpu() -> f64 {
    stat_cpu("/proc/self/stat").unwrap_or(0.0)
}

/// CPU seconds one thread of this process has used.
pub fn thread_cpu(tid: u32) -> f64 {
    stat_cpu(&format!("/proc/self/task/{tid}/stat")).unwrap_or(0.0)
}

/// This thread's id.
pub fn current_tid() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
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

/// CPU seconds of each process in `pids`.
pub fn processes_cpu(pids: &[u32]) -> Vec<(u32, f64)> {
    pids.iter()
        .filter_map(|p| Some((*p, stat_cpu(&format!("/proc/{p}/stat"))?)))
        .collect()
}

/// CPU used between two snapshots by the processes in both.
pub fn cpu_delta(before: &[(u32, f64)], after: &[(u32, f64)]) -> f64 {
    after
        .iter()
        .filter_map(|(p, a)| before.iter().find(|(q, _)| q == p).map(|(_, b)| a - b))
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
