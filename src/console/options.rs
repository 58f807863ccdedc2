//! Session options, chosen at connect time in the inner hop's SSH user name
//! (which is otherwise unused), in the spirit of GCE's `replay-lines=…`:
//!
//! ```text
//! ssh -o ProxyCommand='ssh -W %h:%p -p 2222 <connection-id>@gateway' replay-lines=50,ro@vm1
//! ```
//!
//! | option | meaning |
//! |--------|---------|
//! | `replay-lines=N` | replay the last N lines on attach |
//! | `replay-bytes=N` | replay the last N bytes on attach |
//! | `replay=none` / `replay=all` | replay nothing / everything kept |
//! | `ro` | attach read-only (watch without typing) |
//! | `force` | take write access from whoever holds it |
//! | `lag=disconnect` | disconnect instead of skipping output when too slow |
//!
//! Options are separated by commas. A user name that is none of these (no
//! `=`, no comma, not a flag) is an ordinary login name, which OpenSSH sends
//! by default, and is ignored.

use super::history::Replay;

/// What a session asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionOptions {
    /// Replay on attach; `None` means the instance's default.
    pub replay: Option<Replay>,
    /// Attach read-only.
    pub read_only: bool,
    /// Take write access at once.
    pub force: bool,
    /// Disconnect (rather than skip output) when falling behind.
    pub disconnect_when_lagging: bool,
}

/// The syntax, for error messages and the help text.
pub const SYNTAX: &str = "replay-lines=N, replay-bytes=N, replay=none|all, ro, force, lag=skip|disconnect, \
     separated by commas (e.g. replay-lines=50,ro)";

const FLAGS: [&str; 3] = ["ro", "force", "spy"];

impl SessionOptions {
    /// Parses a user name; ordinary login names give the defaults.
    pub fn from_user_name(user: &str) -> Result<SessionOptions, String> {
        let looks_like_options = user.contains('=') || user.contains(',') || FLAGS.contains(&user);
        let mut options = SessionOptions::default();
        if !looks_like_options {
            return Ok(options);
        }
        for item in user.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("`{item}`: {key} takes a number; options are {SYNTAX}"))
            };
            match (key, value) {
                ("ro" | "spy", "") => options.read_only = true,
                ("force", "") => options.force = true,
                ("replay-lines", _) => options.replay = Some(Replay::Lines(number()?)),
                ("replay-bytes", _) => options.replay = Some(Replay::Bytes(number()?)),
                ("replay", "none") => options.replay = Some(Replay::None),
                ("replay", "all") => options.replay = Some(Replay::All),
                ("lag", "skip") => options.disconnect_when_lagging = false,
                ("lag", "disconnect") => options.disconnect_when_lagging = true,
                _ => {
                    let shown: String = item.chars().take(40).collect();
                    return Err(format!(
                        "unknown session option `{shown}`; options are {SYNTAX}"
                    ));
                }
            }
        }
        if options.read_only && options.force {
            return Err("`ro` and `force` contradict each other: choose one".into());
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_login_names_are_ignored() {
        for user in [
            "root",
            "alice",
            "ocid1.instanceconsoleconnection.oc1..abc",
            "",
        ] {
            assert_eq!(
                SessionOptions::from_user_name(user).unwrap(),
                SessionOptions::default()
            );
        }
    }

    #[test]
    fn options_parse() {
        let o = SessionOptions::from_user_name("replay-lines=50,ro").unwrap();
        assert_eq!(o.replay, Some(Replay::Lines(50)));
        assert!(o.read_only && !o.force);
        let o = SessionOptions::from_user_name("force,replay=none,lag=disconnect").unwrap();
        assert!(o.force && o.disconnect_when_lagging);
        assert_eq!(o.replay, Some(Replay::None));
        assert_eq!(
            SessionOptions::from_user_name("replay-bytes=4096")
                .unwrap()
                .replay,
            Some(Replay::Bytes(4096))
        );
        assert!(SessionOptions::from_user_name("ro").unwrap().read_only);
    }

    #[test]
    fn bad_options_say_what_is_allowed() {
        for bad in [
            "replay-lines=x",
            "colour=red",
            "ro,force",
            "replay=some",
            "lag=maybe,",
        ] {
            let e = SessionOptions::from_user_name(bad).unwrap_err();
            assert!(e.contains('`'), "{bad}: {e}");
        }
        let e = SessionOptions::from_user_name("x=1").unwrap_err();
        assert!(e.contains("replay-lines=N"), "{e}");
    }
}
