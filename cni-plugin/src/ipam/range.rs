//! Address ranges and range sets, with host-local's defaults and validation rules.
//!
//! A range is a subnet plus the inclusive `[rangeStart, rangeEnd]` window we may hand out and the
//! gateway we must not; a range set is a list of ranges of one family from which a container gets
//! exactly one address. Keeping the canonicalisation here (the same rules as host-local's
//! `range.go`/`range_set.go`) means a config accepted by host-local is accepted by us with the
//! same defaults, so switching plugins never renumbers a network.

use crate::cni_err;
use crate::error::Result;
use ipnetwork::IpNetwork;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One validated range: every field is filled in and consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, normalised to its network address (`10.1.1.0/24`).
    pub subnet: IpNetwork,
    /// First address handed out, inclusive.
    pub range_start: IpAddr,
    /// Last address handed out, inclusive.
    pub range_end: IpAddr,
    /// The subnet's gateway; never handed out.
    pub gateway: IpAddr,
}

/// The optional, unvalidated fields of one range as written in the config.
#[derive(Debug, Clone, Default)]
pub struct RangeSpec {
    /// `subnet`, e.g. `10.1.1.0/24`.
    pub subnet: String,
    /// `rangeStart`, if given.
    pub range_start: Option<String>,
    /// `rangeEnd`, if given.
    pub range_end: Option<String>,
    /// `gateway`, if given.
    pub gateway: Option<String>,
}

/// The numeric value of an address (IPv4 in the low 32 bits).
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of the same family as `like` with numeric value `v`.
pub fn u128_to_ip(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|e| cni_err!(InvalidNetworkConfig, format!("invalid {what} {s:?}"), "{e}"))
}

impl Range {
    /// Validates a range and fills in host-local's defaults: `rangeStart` = network+1,
    /// `rangeEnd` = broadcast-1 (IPv4) or the last address (IPv6), `gateway` = network+1.
    pub fn from_spec(spec: &RangeSpec) -> Result<Range> {
        let s = spec.subnet.trim();
        let parsed: IpNetwork = if s.contains('/') {
            s.parse().map_err(|e| {
                cni_err!(InvalidNetworkConfig, format!("invalid subnet {s:?}"), "{e}")
            })?
        } else {
            return Err(cni_err!(
                InvalidNetworkConfig,
                format!("invalid subnet {s:?}"),
                "expected CIDR notation like 10.1.1.0/24"
            ));
        };
        let max = if parsed.is_ipv4() { 32 } else { 128 };
        if parsed.prefix() > max - 2 {
            return Err(cni_err!(
                InvalidNetworkConfig,
                format!("subnet {s} too small to allocate from")
            ));
        }
        let subnet = IpNetwork::new(parsed.network(), parsed.prefix())
            .expect("network address with a valid prefix");
        let net = ip_to_u128(subnet.network());
        let first = u128_to_ip(net + 1, subnet.network());
        let last = match subnet {
            IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()) - 1)),
            IpNetwork::V6(n) => IpAddr::V6(n.broadcast()),
        };
        let mut r = Range {
            subnet,
            range_start: first,
            range_end: last,
            gateway: first,
        };
        let in_subnet = |what: &str, v: &Option<String>| -> Result<Option<IpAddr>> {
            let Some(v) = v else { return Ok(None) };
            let ip = parse_ip(what, v)?;
            if !subnet.contains(ip) || ip.is_ipv4() != subnet.is_ipv4() {
                return Err(cni_err!(
                    InvalidNetworkConfig,
                    format!("{what} {ip} not in network {subnet}")
                ));
            }
            Ok(Some(ip))
        };
        if let Some(gw) = in_subnet("gateway", &spec.gateway)? {
            r.gateway = gw;
        }
        if let Some(start) = in_subnet("rangeStart", &spec.range_start)? {
            r.range_start = start;
        }
        if let Some(end) = in_subnet("rangeEnd", &spec.range_end)? {
            r.range_end = end;
        }
        if ip_to_u128(r.range_start) > ip_to_u128(r.range_end) {
            return Err(cni_err!(
                InvalidNetworkConfig,
                format!(
                    "rangeStart {} is after rangeEnd {} in network {subnet}",
                    r.range_start, r.range_end
                )
            ));
        }
        Ok(r)
    }

    /// True when `ip` is in the subnet and inside `[rangeStart, rangeEnd]`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.subnet.is_ipv4()
            && self.subnet.contains(ip)
            && (ip_to_u128(self.range_start)..=ip_to_u128(self.range_end)).contains(&ip_to_u128(ip))
    }

    /// True when the two ranges share at least one address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.subnet.is_ipv4() == other.subnet.is_ipv4()
            && ip_to_u128(self.range_start) <= ip_to_u128(other.range_end)
            && ip_to_u128(other.range_start) <= ip_to_u128(self.range_end)
    }

    /// True for addresses never handed out: the gateway, the network address and (IPv4) the
    /// broadcast address.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        ip == self.gateway
            || ip == self.subnet.network()
            || (self.subnet.is_ipv4() && ip == self.subnet.broadcast())
    }

    /// How many addresses of the window could be handed out (saturating for huge IPv6 ranges).
    pub fn capacity(&self) -> u128 {
        let (s, e) = (ip_to_u128(self.range_start), ip_to_u128(self.range_end));
        let size = (e - s).saturating_add(1);
        let skipped = [
            Some(self.gateway),
            Some(self.subnet.network()),
            self.subnet.is_ipv4().then(|| self.subnet.broadcast()),
        ];
        let mut excluded: Vec<IpAddr> = skipped.into_iter().flatten().collect();
        excluded.sort();
        excluded.dedup();
        let excluded = excluded.iter().filter(|ip| self.contains(**ip)).count() as u128;
        size - excluded
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.subnet)
    }
}

/// A non-empty list of ranges of one family; a container gets one address from the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    /// Validates a set: not empty, one family, no two ranges overlapping.
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet> {
        let Some(first) = ranges.first() else {
            return Err(cni_err!(InvalidNetworkConfig, "empty range set"));
        };
        if let Some(r) = ranges
            .iter()
            .find(|r| r.subnet.is_ipv4() != first.subnet.is_ipv4())
        {
            return Err(cni_err!(
                InvalidNetworkConfig,
                format!("mixed address families in range set: {first} and {r}")
            ));
        }
        for (i, a) in ranges.iter().enumerate() {
            if let Some(b) = ranges[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(cni_err!(
                    InvalidNetworkConfig,
                    format!("subnets {a} and {b} overlap")
                ));
            }
        }
        Ok(RangeSet(ranges))
    }

    /// The range holding `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// True when some range of the set holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// True when any range of this set overlaps any range of `other`.
    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    /// True for an IPv4 set.
    pub fn is_ipv4(&self) -> bool {
        self.0[0].subnet.is_ipv4()
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn spec(subnet: &str) -> RangeSpec {
        RangeSpec {
            subnet: subnet.into(),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_v4_and_v6() {
        let r = Range::from_spec(&spec("10.1.1.7/24")).unwrap();
        assert_eq!(r.subnet.to_string(), "10.1.1.0/24");
        assert_eq!(r.range_start, ip("10.1.1.1"));
        assert_eq!(r.range_end, ip("10.1.1.254"));
        assert_eq!(r.gateway, ip("10.1.1.1"));
        assert_eq!(r.capacity(), 253);
        let r = Range::from_spec(&spec("fd00::/120")).unwrap();
        assert_eq!(r.range_start, ip("fd00::1"));
        assert_eq!(r.range_end, ip("fd00::ff"));
        assert_eq!(r.gateway, ip("fd00::1"));
    }

    #[test]
    fn validation_errors_are_code_7_and_name_the_value() {
        let cases = [
            (spec("nope/24"), "nope"),
            (spec("10.1.1.0"), "10.1.1.0"),
            (spec("10.1.1.0/31"), "too small"),
            (spec("10.1.1.0/32"), "too small"),
            (spec("fd00::/127"), "too small"),
            (
                RangeSpec {
                    gateway: Some("10.9.9.1".into()),
                    ..spec("10.1.1.0/24")
                },
                "10.9.9.1",
            ),
            (
                RangeSpec {
                    range_start: Some("10.1.2.1".into()),
                    ..spec("10.1.1.0/24")
                },
                "10.1.2.1",
            ),
            (
                RangeSpec {
                    range_end: Some("fd00::1".into()),
                    ..spec("10.1.1.0/24")
                },
                "fd00::1",
            ),
            (
                RangeSpec {
                    range_start: Some("10.1.1.50".into()),
                    range_end: Some("10.1.1.40".into()),
                    ..spec("10.1.1.0/24")
                },
                "after rangeEnd",
            ),
            (
                RangeSpec {
                    gateway: Some("x".into()),
                    ..spec("10.1.1.0/24")
                },
                "gateway",
            ),
        ];
        for (s, needle) in cases {
            let e = Range::from_spec(&s).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig, "{e}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn sets_reject_mixed_families_overlaps_and_emptiness() {
        let a = Range::from_spec(&spec("10.1.1.0/24")).unwrap();
        let b = Range::from_spec(&spec("10.1.1.0/25")).unwrap();
        let v6 = Range::from_spec(&spec("fd00::/64")).unwrap();
        for bad in [vec![], vec![a.clone(), v6], vec![a.clone(), b]] {
            let e = RangeSet::new(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig);
        }
        let c = Range::from_spec(&spec("10.1.2.0/24")).unwrap();
        let set = RangeSet::new(vec![a, c]).unwrap();
        assert_eq!(set.to_string(), "10.1.1.0/24,10.1.2.0/24");
        assert!(set.contains(ip("10.1.2.9")));
        assert!(!set.contains(ip("10.1.2.255")));
        assert!(set.contains(ip("::ffff:10.1.1.9")));
    }
}
