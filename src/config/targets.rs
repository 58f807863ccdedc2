//! The syntaxes of serial consoles and VNC displays in `gateway.toml`
//! (`serial = "…"`, `vnc = "…"`): parsed once, printed back the same way.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

/// Where an instance's serial console is reached (`serial = "…"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    /// `unix:/path`: a Unix socket, e.g. QEMU `-chardev socket,path=…,server=on,wait=off`.
    Unix(PathBuf),
    /// `tcp:host:port`: a raw TCP socket.
    Tcp(String, u16),
    /// `telnet:host:port`: a telnet server (QEMU `telnet:` chardev, ser2net); break as IAC BRK.
    Telnet(String, u16),
    /// `/dev/ttyS0@115200`: a local serial line at a baud rate.
    Device(PathBuf, u32),
    /// `pty:/dev/pts/N`: the slave side of a pseudo-terminal (libvirt `<serial type='pty'>`).
    Pty(PathBuf),
    /// `simulator`: the built-in demo machine.
    Simulator,
}

const SERIAL_FORMS: &str = "expected one of `simulator`, `unix:/path`, `tcp:host:port`, \
     `telnet:host:port`, `pty:/dev/pts/N` or `/dev/ttyXXX@baud` (e.g. `/dev/ttyS0@115200`)";

impl FromStr for SerialTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "simulator" {
            return Ok(SerialTarget::Simulator);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(SerialTarget::Unix(parse_path(path, s)?));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = parse_host_port(rest, s)?;
            return Ok(SerialTarget::Tcp(host, port));
        }
        if let Some(rest) = s.strip_prefix("telnet:") {
            let (host, port) = parse_host_port(rest, s)?;
            return Ok(SerialTarget::Telnet(host, port));
        }
        if let Some(path) = s.strip_prefix("pty:") {
            return Ok(SerialTarget::Pty(parse_path(path, s)?));
        }
        if s.starts_with('/') {
            let Some((path, baud)) = s.rsplit_once('@') else {
                return Err(format!(
                    "serial device `{s}` needs a baud rate, e.g. `{s}@115200`"
                ));
            };
            let baud: u32 = baud
                .parse()
                .ok()
                .filter(|b| (50..=4_000_000).contains(b))
                .ok_or_else(|| {
                    format!("baud rate `{baud}` in `{s}` must be a number from 50 to 4000000")
                })?;
            return Ok(SerialTarget::Device(parse_path(path, s)?, baud));
        }
        Err(format!(
            "serial target `{s}` is not understood; {SERIAL_FORMS}"
        ))
    }
}

impl fmt::Display for SerialTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialTarget::Unix(p) => write!(f, "unix:{}", p.display()),
            SerialTarget::Tcp(h, p) => write!(f, "tcp:{}", host_port(h, *p)),
            SerialTarget::Telnet(h, p) => write!(f, "telnet:{}", host_port(h, *p)),
            SerialTarget::Device(p, b) => write!(f, "{}@{b}", p.display()),
            SerialTarget::Pty(p) => write!(f, "pty:{}", p.display()),
            SerialTarget::Simulator => f.write_str("simulator"),
        }
    }
}

impl<'de> Deserialize<'de> for SerialTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where an instance's VNC display is reached (`vnc = "…"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VncTarget {
    /// `tcp:host:port`, e.g. QEMU `-vnc 127.0.0.1:1` is `tcp:127.0.0.1:5901`.
    Tcp(String, u16),
    /// `unix:/path`, e.g. QEMU `-vnc unix:/run/vm.vnc`.
    Unix(PathBuf),
}

impl FromStr for VncTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(VncTarget::Unix(parse_path(path, s)?));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = parse_host_port(rest, s)?;
            return Ok(VncTarget::Tcp(host, port));
        }
        Err(format!(
            "VNC target `{s}` is not understood; expected `tcp:host:port` or `unix:/path`"
        ))
    }
}

impl fmt::Display for VncTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VncTarget::Tcp(h, p) => write!(f, "tcp:{}", host_port(h, *p)),
            VncTarget::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for VncTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_path(path: &str, whole: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err(format!("`{whole}` has an empty path"));
    }
    Ok(PathBuf::from(path))
}

/// Parses `host:port` or `[v6addr]:port`.
fn parse_host_port(rest: &str, whole: &str) -> Result<(String, u16), String> {
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!(
            "`{whole}` needs a port, as in `tcp:127.0.0.1:4555`"
        ));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || !is_valid_host(host) {
        return Err(format!("`{whole}` has no valid host before the port"));
    }
    let port: u16 =
        port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            format!("port `{port}` in `{whole}` must be a number from 1 to 65535")
        })?;
    Ok((host.to_owned(), port))
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(super) fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
}
