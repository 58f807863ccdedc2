//! The ops runbook and the code agree: every `CG-AREA-NNN` code in `src/`
//! has exactly one entry in `docs/runbook.md`, every entry's code still
//! exists, every warn/error log line carries a code, and every link to an
//! entry inside the runbook lands on one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `CG-AREA-NNN` in `text`.
fn codes(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("CG-") {
        let start = from + at;
        let mut i = start + 3;
        while i < bytes.len() && bytes[i].is_ascii_uppercase() {
            i += 1;
        }
        let area_len = i - (start + 3);
        if area_len > 0
            && i + 4 <= bytes.len()
            && bytes[i] == b'-'
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && !bytes.get(i + 4).is_some_and(u8::is_ascii_alphanumeric)
        {
            found.push(text[start..i + 4].to_owned());
        }
        from = start + 3;
    }
    found
}

fn source() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn runbook() -> String {
    std::fs::read_to_string(root().join("docs/runbook.md")).expect("docs/runbook.md is missing")
}

/// The codes with an entry (`### CG-AREA-NNN: title`), and how often each.
fn entries(runbook: &str) -> BTreeMap<String, usize> {
    let mut entries = BTreeMap::new();
    for line in runbook.lines() {
        if let Some(rest) = line.strip_prefix("### CG-") {
            let code = format!("CG-{}", rest.split(':').next().unwrap().trim());
            *entries.entry(code).or_insert(0) += 1;
        }
    }
    entries
}

#[test]
fn every_code_in_the_source_has_one_runbook_entry_and_no_entry_is_stale() {
    let used: BTreeSet<String> = source().iter().flat_map(|(_, t)| codes(t)).collect();
    assert!(used.len() > 30, "the walk found only {used:?}");
    let entries = entries(&runbook());
    let missing: Vec<&String> = used.iter().filter(|c| !entries.contains_key(*c)).collect();
    assert!(
        missing.is_empty(),
        "codes without a runbook entry: {missing:?}"
    );
    let stale: Vec<&String> = entries.keys().filter(|c| !used.contains(*c)).collect();
    assert!(
        stale.is_empty(),
        "runbook entries whose code no longer exists: {stale:?}"
    );
    let twice: Vec<&String> = entries
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(c, _)| c)
        .collect();
    assert!(
        twice.is_empty(),
        "codes with more than one entry: {twice:?}"
    );
}

/// The text of each `warn!(…)` / `error!(…)` invocation, with its place.
fn log_calls(path: &Path, text: &str) -> Vec<(String, String)> {
    let mut calls = Vec::new();
    for macro_name in ["warn!(", "error!("] {
        let mut from = 0;
        while let Some(at) = text[from..].find(macro_name) {
            let start = from + at;
            from = start + macro_name.len();
            // `tracing::warn!(` or a bare `warn!(`, not `eprintln!(` or `my_warn!(`.
            let before = text[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut depth = 0usize;
            let mut end = start;
            for (i, c) in text[start..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = start + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let line = text[..start].lines().count() + 1;
            calls.push((
                format!("{}:{line}", path.display()),
                text[start..=end].to_owned(),
            ));
        }
    }
    calls
}

#[test]
fn every_warning_and_error_in_the_log_carries_a_code() {
    let mut seen = 0;
    let mut without = Vec::new();
    for (path, text) in source() {
        for (place, call) in log_calls(&path, &text) {
            seen += 1;
            let coded = call.contains("code = ") || call.contains("code,");
            if !coded {
                without.push(place);
            }
        }
    }
    assert!(seen > 15, "the walk found only {seen} warn/error calls");
    assert!(
        without.is_empty(),
        "warn/error log lines without a runbook code: {without:?}"
    );
}

#[test]
fn links_to_runbook_entries_land_on_an_anchor() {
    let runbook = runbook();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.split("<a id=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    let mut broken = Vec::new();
    let mut from = 0;
    while let Some(at) = runbook[from..].find("](#") {
        let start = from + at + 3;
        let end = start + runbook[start..].find(')').unwrap();
        let target = &runbook[start..end];
        if target.starts_with("cg-") && !anchors.contains(target) {
            broken.push(target.to_owned());
        }
        from = end;
    }
    assert!(broken.is_empty(), "links to no anchor: {broken:?}");
    for code in entries(&runbook).keys() {
        assert!(
            anchors.contains(&code.to_lowercase()),
            "{code} has no <a id> anchor"
        );
    }
}

#[test]
fn the_code_walk_finds_codes_and_only_codes() {
    assert_eq!(
        codes("x CG-AUTH-004 y \"CG-API-401\""),
        ["CG-AUTH-004", "CG-API-401"]
    );
    assert!(codes("CG-AUTH-0041 CG--001 CG-auth-001 CG-AUTH-01").is_empty());
}
