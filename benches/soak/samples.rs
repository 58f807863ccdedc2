//! What the soak watches: the gateway's resident memory, open files and
//! CPU, the machine's CPU, and the load's own figures, over time; and the
//! least-squares slope of a series.

use serde::{Deserialize, Serialize};

/// One reading.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the gateway started.
    pub t_s: f64,
    /// VmRSS of the gateway, KiB.
    pub rss_kib: u64,
    /// Entries of /proc/PID/fd.
    pub fds: u64,
    /// Sessions held by the load.
    pub held: u64,
    /// Gateway threads.
    pub threads: u64,
    /// CPU seconds the gateway has used.
    pub gateway_cpu_s: f64,
    /// CPU seconds this bench process has used.
    pub bench_cpu_s: f64,
    /// CPU seconds the whole machine has been busy (all cores).
    pub machine_busy_s: f64,
    pub attaches: u64,
    pub echoes: u64,
    pub api_creates: u64,
    /// The store's files on disk (SQLite database and its WAL), KiB.
    #[serde(default)]
    pub store_kib: u64,
}

/// Clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// A `Name:   value` field of /proc/PID/status (the first number).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    status_field_of(&format!("/proc/{pid}/status"), field)
}

/// A `Name:   value` field of a /proc file (the first number).
pub fn status_field_of(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Bytes of the files in `dir` whose names start with `prefix`, KiB.
pub fn files_kib(dir: &std::path::Path, prefix: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum::<u64>()
        / 1024
}

/// Open file descriptors of `pid`.
pub fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// utime + stime of a process, seconds.
pub fn process_cpu(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = text.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / TICKS
}

/// Busy CPU seconds of the machine (all cores): /proc/stat's first line,
/// everything but idle and iowait.
pub fn machine_busy() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user).
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / TICKS
}

/// Least-squares slope of `y` over `x` (units of y per unit of x); `NaN`
/// with fewer than two points.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return f64::NAN;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { f64::NAN } else { sxy / sxx }
}

/// A fitted line, y = a + b·x, over the steady state.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Fit {
    /// Per minute.
    pub slope: f64,
    pub intercept: f64,
    /// Minutes the fit starts and ends at.
    pub from_min: f64,
    pub to_min: f64,
}

/// The fit of `value` over samples from `from_s` to `to_s`, x in minutes.
pub fn fit(samples: &[Sample], from_s: f64, to_s: f64, value: impl Fn(&Sample) -> f64) -> Fit {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_s >= from_s && s.t_s <= to_s)
        .map(|s| (s.t_s / 60.0, value(s)))
        .collect();
    let b = slope(&points);
    let n = points.len().max(1) as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    Fit {
        slope: b,
        intercept: my - b * mx,
        from_min: from_s / 60.0,
        to_min: to_s / 60.0,
    }
}
