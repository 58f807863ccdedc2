//! Open-file limits for benches that hold thousands of connections.
//! Included by each bench that needs it (`#[path]`).

/// Raises a process's soft RLIMIT_NOFILE to its hard limit (with
/// prlimit(1)); returns the soft limit in force afterwards, if it can be
/// read. Children started later inherit it.
pub fn raise_nofile(pid: u32) -> Option<u64> {
    let read = |field: &str| {
        std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid.to_string(),
                "--nofile",
                "--raw",
                "--noheadings",
                "-o",
                field,
            ])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    if let Some(hard) = read("HARD") {
        let _ = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid.to_string(),
                &format!("--nofile={hard}:{hard}"),
            ])
            .status();
    }
    read("SOFT").and_then(|s| s.parse().ok())
}
