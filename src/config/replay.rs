//! How much recent console output a session sees when it attaches: the
//! `replay` setting of an instance, and the `replay…` session options.

use std::fmt;
use std::str::FromStr;

/// How much recent output a session sees when it attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Nothing.
    None,
    /// The last N lines.
    Lines(usize),
    /// The last N bytes.
    Bytes(usize),
    /// Everything kept.
    All,
}

impl Default for Replay {
    fn default() -> Self {
        Replay::Lines(1000)
    }
}

impl FromStr for Replay {
    type Err = String;

    /// `none`, `all`, `N` or `N lines` (lines), `N bytes`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "none" => return Ok(Replay::None),
            "all" => return Ok(Replay::All),
            _ => {}
        }
        let (number, unit) = s.split_once(' ').unwrap_or((s, "lines"));
        let n: usize = number
            .parse()
            .map_err(|_| format!("replay `{s}` must be `none`, `all`, `N lines` or `N bytes`"))?;
        match unit.trim() {
            "lines" | "line" => Ok(Replay::Lines(n)),
            "bytes" | "byte" => Ok(Replay::Bytes(n)),
            other => Err(format!("replay unit `{other}` must be `lines` or `bytes`")),
        }
    }
}

impl fmt::Display for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replay::None => f.write_str("none"),
            Replay::All => f.write_str("all"),
            Replay::Lines(n) => write!(f, "{n} lines"),
            Replay::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

impl serde::Serialize for Replay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Replay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
