//! The names this gateway answers to, for the `host` header an OCI request
//! signs: a request signed for another endpoint (another gateway, or the
//! real cloud) is refused even when its key is known here (`CG-HTTP-004`).
//!
//! `[api] hosts` lists them (`name` matches any port, `name:port` that
//! port; a `Host` header without a port means 80, or 443 with TLS). Left
//! empty, they are derived: the `listen` address (unless it is a wildcard
//! such as `0.0.0.0`), `localhost` on the listen port when that is a
//! loopback address, the host of `[nova] public_url` (what a balancer in
//! front of the gateway is reached by), and the address each connection
//! actually reached (so a wildcard listener accepts its own addresses,
//! but not names: list DNS names in `hosts`).

use std::net::{IpAddr, SocketAddr};

use crate::config::{ApiHost, Config, split_host_port};

/// The names requests may be signed for.
#[derive(Debug, Clone)]
pub struct ServedHosts {
    entries: Vec<ApiHost>,
    /// Derived from the config: the address a connection reached counts too.
    derived: bool,
    /// The port a `Host` header without one names.
    default_port: u16,
}

/// A name as compared: an IP address in its canonical form, anything else
/// in lower case.
fn canonical(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// The host and port of an `http://` or `https://` URL.
fn url_host(url: &str) -> Option<ApiHost> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let mut host = ApiHost::parse(authority).ok()?;
    host.port.get_or_insert(default);
    Some(host)
}

impl ServedHosts {
    /// The names of `config`'s `[api]` (and `[nova] public_url`).
    pub fn from_config(config: &Config) -> ServedHosts {
        let api = &config.api;
        let default_port = if api.tls() { 443 } else { 80 };
        let mut entries: Vec<ApiHost> = api.hosts.clone();
        let derived = entries.is_empty();
        if derived {
            let listen = api.listen;
            if !listen.ip().is_unspecified() {
                entries.push(ApiHost {
                    name: listen.ip().to_string(),
                    port: Some(listen.port()),
                });
                if listen.ip().is_loopback() {
                    entries.push(ApiHost {
                        name: "localhost".into(),
                        port: Some(listen.port()),
                    });
                }
            }
            if let Some(host) = config.nova.public_url.as_deref().and_then(url_host) {
                entries.push(host);
            }
        }
        for entry in &mut entries {
            entry.name = canonical(&entry.name);
        }
        ServedHosts {
            entries,
            derived,
            default_port,
        }
    }

    /// Whether `host` (a `Host` header's value) names this gateway; `local`
    /// is the address the request's connection reached, if known.
    pub fn allows(&self, host: &str, local: Option<SocketAddr>) -> bool {
        let Some((name, port)) = split_host_port(host) else {
            return false;
        };
        let port = match port {
            None => self.default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) => p,
                Err(_) => return false,
            },
        };
        let name = canonical(name);
        let listed = self
            .entries
            .iter()
            .any(|e| e.name == name && e.port.is_none_or(|p| p == port));
        let reached = self.derived
            && local.is_some_and(|l| canonical(&l.ip().to_string()) == name && l.port() == port);
        listed || reached
    }

    /// The names, for messages.
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = self.entries.iter().map(ToString::to_string).collect();
        if self.derived {
            names.push("the address the connection reached".into());
        }
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(toml: &str) -> ServedHosts {
        let config = Config::from_toml(
            toml,
            std::path::Path::new("t.toml"),
            std::path::Path::new("/"),
        )
        .unwrap();
        ServedHosts::from_config(&config)
    }

    fn at(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().unwrap())
    }

    #[test]
    fn derived_names_are_the_listen_address_localhost_and_the_public_url() {
        let h = hosts(
            "[api]\nlisten = \"127.0.0.1:8080\"\n[nova]\npublic_url = \"https://GW.example/\"\n",
        );
        for good in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080"] {
            assert!(h.allows(good, None), "{good}");
        }
        assert!(h.allows("gw.example:443", None));
        for bad in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "gw.example",
            "gw.example:8080",
            "evil.example:8080",
            "",
            "127.0.0.1:x",
            "[::1",
        ] {
            assert!(!h.allows(bad, None), "{bad}");
        }
        // The address a connection reached counts when derived.
        assert!(h.allows("127.0.0.2:8080", at("127.0.0.2:8080")));
        assert!(!h.allows("127.0.0.2:8080", at("127.0.0.3:8080")));
    }

    #[test]
    fn a_wildcard_listener_accepts_the_address_reached_and_not_names() {
        let h =
            hosts("[api]\nlisten = \"[::]:8443\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"\n");
        assert!(h.allows("[2001:db8::5]:8443", at("[2001:db8::5]:8443")));
        assert!(h.allows("[2001:DB8:0::5]:8443", at("[2001:db8::5]:8443")));
        assert!(h.allows("10.0.0.5:8443", at("[::ffff:10.0.0.5]:8443")));
        assert!(!h.allows("gw.example:8443", at("10.0.0.5:8443")));
        assert!(!h.allows("0.0.0.0:8443", None));
        assert!(!h.allows("[::]:8443", None));
    }

    #[test]
    fn listed_names_replace_the_derived_ones() {
        let h = hosts(
            "[api]\nlisten = \"127.0.0.1:8080\"\nhosts = [\"api.example.com\", \"10.0.0.5:8080\"]\n",
        );
        assert!(h.allows("api.example.com", None));
        assert!(h.allows("api.example.com:9999", None));
        assert!(h.allows("10.0.0.5:8080", None));
        assert!(!h.allows("10.0.0.5", None), "port 80 is not 8080");
        assert!(!h.allows("127.0.0.1:8080", at("127.0.0.1:8080")));
        let e = Config::from_toml(
            "[api]\nhosts = [\"http://x\"]\n",
            std::path::Path::new("t.toml"),
            std::path::Path::new("/"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a host name"), "{e}");
    }
}
