//! The HTTP listener's own syntaxes and checks: the names clients sign
//! requests for (`[api] hosts`), and the connection limits, timeouts and
//! TLS files of `[api]`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::ApiConfig;
use super::targets::is_valid_host;

/// One entry of `[api] hosts`: a name (or IP address) the gateway answers
/// to, with or without a port. Without one it matches that name on any
/// port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiHost {
    /// Lower-case host name or IP address (an IPv6 address without brackets).
    pub name: String,
    /// The port, if the entry names one.
    pub port: Option<u16>,
}

impl ApiHost {
    /// Parses `name`, `name:port`, `[v6]` or `[v6]:port` (as in a `Host`
    /// header); the name is folded to lower case.
    pub fn parse(text: &str) -> Result<ApiHost, String> {
        let bad = || {
            format!(
                "`{}` is not a host name or IP address with an optional port, like \
                 api.example.com or 10.0.0.5:8080",
                text.chars().take(100).collect::<String>()
            )
        };
        let (name, port) = split_host_port(text).ok_or_else(bad)?;
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad)?),
            None => None,
        };
        if !is_valid_host(name) {
            return Err(bad());
        }
        Ok(ApiHost {
            name: name.to_ascii_lowercase(),
            port,
        })
    }
}

/// `host[:port]` or `[v6][:port]` into its parts, without brackets; `None`
/// when the brackets do not close or a bare name has more than one colon
/// but is not an IPv6 address.
pub fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        return match after {
            "" => Some((name, None)),
            _ => Some((name, Some(after.strip_prefix(':')?))),
        };
    }
    match text.split_once(':') {
        // A bare IPv6 address (no port) is taken whole.
        Some(_) if text.parse::<std::net::Ipv6Addr>().is_ok() => Some((text, None)),
        Some((_, port)) if port.contains(':') => None,
        Some((name, port)) => Some((name, Some(port))),
        None => Some((text, None)),
    }
}

impl fmt::Display for ApiHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.contains(':') {
            format!("[{}]", self.name)
        } else {
            self.name.clone()
        };
        match self.port {
            Some(port) => write!(f, "{name}:{port}"),
            None => f.write_str(&name),
        }
    }
}

impl<'de> Deserialize<'de> for ApiHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ApiHost::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `[api]`'s connection limits and timeouts in range; TLS files given
/// together.
pub(super) fn check_listener(api: &ApiConfig) -> Result<(), String> {
    if api.max_connections == 0 {
        return Err("[api] max_connections must be at least 1".into());
    }
    if api.max_connections_per_source > api.max_connections {
        return Err(format!(
            "[api] max_connections_per_source ({}) must not exceed max_connections ({}); \
             0 turns the per-source limit off",
            api.max_connections_per_source, api.max_connections
        ));
    }
    if api.header_read_timeout_secs == 0 || api.keepalive_timeout_secs == 0 {
        return Err(
            "[api] header_read_timeout_secs and keepalive_timeout_secs must be at least 1".into(),
        );
    }
    if api.tls_cert_file.is_some() != api.tls_key_file.is_some() {
        return Err(
            "[api] tls_cert_file and tls_key_file go together: give both (PEM files) for \
             HTTPS, or neither for plain HTTP"
                .into(),
        );
    }
    Ok(())
}

/// Resolves the TLS files against the config file's directory.
pub(super) fn resolve_tls_paths(api: &mut ApiConfig, base: &Path) {
    for path in [&mut api.tls_cert_file, &mut api.tls_key_file]
        .into_iter()
        .flatten()
    {
        if path.is_relative() {
            *path = base.join(&*path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(api: &str) -> Result<Config, String> {
        Config::from_toml(
            &format!("[api]\n{api}"),
            Path::new("t.toml"),
            Path::new("/etc/cg"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn listener_limits_have_safe_defaults_and_are_checked() {
        let api = parse("").unwrap().api;
        assert_eq!(
            (api.max_connections, api.max_connections_per_source),
            (512, 32)
        );
        assert_eq!(
            (api.header_read_timeout_secs, api.keepalive_timeout_secs),
            (10, 60)
        );
        assert!(!api.tls() && api.hosts.is_empty() && api.exempt_sources.is_empty());
        for (bad, named) in [
            ("max_connections = 0", "max_connections"),
            (
                "max_connections = 10\nmax_connections_per_source = 11",
                "max_connections_per_source",
            ),
            ("header_read_timeout_secs = 0", "header_read_timeout_secs"),
            ("keepalive_timeout_secs = 0", "keepalive_timeout_secs"),
            ("tls_cert_file = \"c.pem\"", "go together"),
            ("tls_key_file = \"k.pem\"", "go together"),
            ("exempt_sources = [\"10.0.0.0/33\"]", "CIDR"),
            ("hosts = [\"a b\"]", "not a host name"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(named), "{bad}: {e}");
        }
        let api = parse(
            "max_connections_per_source = 0\ntls_cert_file = \"tls/c.pem\"\n\
             tls_key_file = \"/k.pem\"\nexempt_sources = [\"10.0.0.2\"]\n",
        )
        .unwrap()
        .api;
        assert!(api.tls());
        assert_eq!(
            api.tls_cert_file.as_deref(),
            Some(Path::new("/etc/cg/tls/c.pem"))
        );
        assert_eq!(api.tls_key_file.as_deref(), Some(Path::new("/k.pem")));
    }

    #[test]
    fn host_entries_parse_like_host_headers() {
        let h = ApiHost::parse("API.Example.com").unwrap();
        assert_eq!((h.name.as_str(), h.port), ("api.example.com", None));
        let h = ApiHost::parse("10.0.0.5:8080").unwrap();
        assert_eq!((h.name.as_str(), h.port), ("10.0.0.5", Some(8080)));
        let h = ApiHost::parse("[2001:db8::1]:443").unwrap();
        assert_eq!((h.name.as_str(), h.port), ("2001:db8::1", Some(443)));
        assert_eq!(h.to_string(), "[2001:db8::1]:443");
        let h = ApiHost::parse("::1").unwrap();
        assert_eq!((h.name.as_str(), h.port), ("::1", None));
        for bad in [
            "",
            "host:0",
            "host:99999",
            "host:x",
            "[::1",
            "a b",
            "-x",
            "h/path",
            "http://h",
        ] {
            assert!(ApiHost::parse(bad).is_err(), "{bad:?} was taken");
        }
    }
}
