//! Runbook codes: every problem the gateway shows carries one
//! (`CG-AREA-NNN`), with an entry in `docs/runbook.md` saying what to check
//! and how to fix it.

/// The HTTP response header that carries an error's runbook code, on the
/// API's answers and the web consoles' refusals alike.
pub const CODE_HEADER: &str = "x-consolegate-code";
