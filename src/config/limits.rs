//! The syntaxes of the SSH listener's pre-authentication limits:
//! `max_startups = "start:rate:full"` (as OpenSSH's `MaxStartups`) and
//! address ranges (`192.0.2.0/24`, `2001:db8::/32`, or one address).

use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

/// `max_startups`: past `start` unauthenticated connections, new ones are
/// dropped with probability `rate` %, rising linearly to all at `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupLimits {
    /// Where random drops begin.
    pub start: usize,
    /// The percentage dropped at `start`.
    pub rate: u8,
    /// Where every new connection is dropped.
    pub full: usize,
}

impl StartupLimits {
    /// Parses `start:rate:full`, or `n` (every connection past `n` dropped).
    pub fn parse(text: &str) -> Result<StartupLimits, String> {
        let bad = || {
            format!(
                "max_startups `{text}` is not `start:rate:full` (for example \"10:30:100\") \
                 or a number, with 1 <= start <= full and rate at most 100"
            )
        };
        let parts: Vec<&str> = text.split(':').collect();
        let limits = match parts[..] {
            [n] => {
                let n = n.trim().parse().map_err(|_| bad())?;
                StartupLimits {
                    start: n,
                    rate: 100,
                    full: n,
                }
            }
            [start, rate, full] => StartupLimits {
                start: start.trim().parse().map_err(|_| bad())?,
                rate: rate.trim().parse().map_err(|_| bad())?,
                full: full.trim().parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        if limits.start == 0 || limits.start > limits.full || limits.rate > 100 {
            return Err(bad());
        }
        Ok(limits)
    }
}

impl Default for StartupLimits {
    /// OpenSSH's default.
    fn default() -> Self {
        StartupLimits {
            start: 10,
            rate: 30,
            full: 100,
        }
    }
}

impl<'de> Deserialize<'de> for StartupLimits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StartupLimits::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An address or a CIDR range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(text: &str) -> Result<AddressRange, String> {
        let bad = || format!("`{text}` is not an IP address or a CIDR range like 192.0.2.0/24");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(AddressRange { network, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let shift = |bits: u32| 128 - bits;
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(shift(u32::from(self.prefix)))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for AddressRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        AddressRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_startups_reads_openssh_syntax_and_refuses_the_rest() {
        assert_eq!(
            StartupLimits::parse("10:30:100").unwrap(),
            StartupLimits {
                start: 10,
                rate: 30,
                full: 100
            }
        );
        assert_eq!(StartupLimits::parse("50").unwrap().full, 50);
        for bad in [
            "",
            "0",
            "10:30",
            "10:101:100",
            "20:30:10",
            "a:b:c",
            "1:2:3:4",
            "-1",
        ] {
            assert!(StartupLimits::parse(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn address_ranges_match_by_prefix() {
        let r = AddressRange::parse("192.0.2.0/24").unwrap();
        assert!(r.contains("192.0.2.77".parse().unwrap()));
        assert!(r.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!r.contains("192.0.3.1".parse().unwrap()));
        assert!(!r.contains("2001:db8::1".parse().unwrap()));
        let one = AddressRange::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = AddressRange::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all = AddressRange::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        for bad in [
            "",
            "192.0.2.0/33",
            "::/129",
            "host.example",
            "192.0.2.0/x",
            "1.2.3",
        ] {
            assert!(AddressRange::parse(bad).is_err(), "{bad:?} was taken");
        }
    }
}

/// Where a connection comes from, as the per-source limits (SSH and
/// HTTP) and the audit ration count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (or an IPv4-mapped IPv6 one).
    V4([u8; 4]),
    /// The /64 an IPv6 address is in: one host usually has all of it.
    V6([u8; 8]),
}

impl Source {
    /// The source of address `ip`.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut net = [0u8; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    Source::V6(net)
                }
            },
        }
    }
}
