//! Picking one address from one range set, with host-local's round-robin policy.
//!
//! The search starts just after the set's `last_reserved_ip` cursor and wraps around every range
//! of the set, so a crash-looping container does not get the same address back until the whole
//! set has been cycled (the reason host-local does it; we keep it so both plugins agree). A
//! retried ADD for the same container and interface gets the address it already holds.

use super::range::{ip_to_u128, u128_to_ip, Range, RangeSet};
use super::store::{Allocation, Store};
use crate::cni_err;
use crate::error::Result;
use crate::result::IpConfig;
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::net::IpAddr;

/// The outcome of one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The address (with the subnet's prefix) and gateway; `interface` is `None`.
    pub config: IpConfig,
    /// False when the container already held the address (an ADD retry).
    pub newly_reserved: bool,
}

fn ip_config(r: &Range, ip: IpAddr) -> IpConfig {
    IpConfig {
        address: IpNetwork::new(ip, r.subnet.prefix()).expect("prefix comes from the subnet"),
        gateway: Some(r.gateway),
        interface: None,
    }
}

/// Every address of the set in round-robin order: after `last` when it lies in the set (ending
/// with `last` itself), else from the first range's start. Gateways and network/broadcast
/// addresses are skipped.
fn candidates(set: &RangeSet, last: Option<IpAddr>) -> impl Iterator<Item = (&Range, IpAddr)> {
    let ranges = &set.0;
    let total = ranges.iter().fold(0u128, |acc, r| {
        acc.saturating_add((ip_to_u128(r.range_end) - ip_to_u128(r.range_start)).saturating_add(1))
    });
    let advance = move |(i, cur): (usize, u128)| {
        if cur == ip_to_u128(ranges[i].range_end) {
            let j = (i + 1) % ranges.len();
            (j, ip_to_u128(ranges[j].range_start))
        } else {
            (i, cur + 1)
        }
    };
    let mut pos = match last.and_then(|ip| ranges.iter().position(|r| r.contains(ip))) {
        Some(i) => advance((i, ip_to_u128(last.expect("found in a range")))),
        None => (0, ip_to_u128(ranges[0].range_start)),
    };
    let mut left = total;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let (i, cur) = pos;
        pos = advance(pos);
        let r = &ranges[i];
        Some((r, u128_to_ip(cur, r.range_start)))
    })
    .filter(|(r, ip)| !r.is_reserved(*ip))
}

/// Allocates within range set number `idx` of the config, using an open (locked) store.
#[derive(Debug, Clone, Copy)]
pub struct Allocator<'a> {
    store: &'a Store,
    set: &'a RangeSet,
    idx: usize,
}

impl<'a> Allocator<'a> {
    /// An allocator for `set`, whose cursor file is `last_reserved_ip.<idx>`.
    pub fn new(store: &'a Store, set: &'a RangeSet, idx: usize) -> Self {
        Self { store, set, idx }
    }

    /// Allocated addresses of this set that count against its capacity, from one store scan.
    fn taken_in(&self, all: &[Allocation]) -> HashSet<IpAddr> {
        all.iter()
            .map(|a| a.ip)
            .filter(|ip| self.set.range_for(*ip).is_some_and(|r| !r.is_reserved(*ip)))
            .collect()
    }

    fn capacity(&self) -> u128 {
        self.set
            .0
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.capacity()))
    }

    /// How many addresses of the set are still free.
    pub fn free(&self) -> Result<u128> {
        let all = self.store.allocations()?;
        Ok(self
            .capacity()
            .saturating_sub(self.taken_in(&all).len() as u128))
    }

    /// Gives `(container_id, ifname)` one address of the set: the one it already holds, else
    /// `requested` (which must be in the set and free), else the next free one round-robin.
    ///
    /// Errors: code 7 for a bad or taken requested IP, code 50 when the set is exhausted.
    pub fn get(
        &self,
        container_id: &str,
        ifname: &str,
        requested: Option<IpAddr>,
    ) -> Result<Allocated> {
        let set = self.set;
        // One scan of the store serves the "already held", "taken" and "exhausted" questions:
        // with N allocations each scan reads N files, and this runs on every ADD.
        let all = self.store.allocations()?;
        let held: Vec<IpAddr> = all
            .iter()
            .filter(|a| a.belongs_to(container_id, ifname) && set.contains(a.ip))
            .map(|a| a.ip)
            .collect();
        let existing = |ip: IpAddr| Allocated {
            config: ip_config(set.range_for(ip).expect("held IPs are in the set"), ip),
            newly_reserved: false,
        };

        if let Some(ip) = requested.map(|ip| ip.to_canonical()) {
            let r = set.range_for(ip).ok_or_else(|| {
                cni_err!(
                    InvalidNetworkConfig,
                    format!("requested IP {ip} is not in range set {set}")
                )
            })?;
            if r.is_reserved(ip) {
                return Err(cni_err!(
                    InvalidNetworkConfig,
                    format!(
                        "requested IP {ip} is the gateway, network or broadcast address of {r}"
                    )
                ));
            }
            if held.contains(&ip) {
                return Ok(existing(ip));
            }
            if let Some(other) = held.first() {
                return Err(cni_err!(
                    InvalidNetworkConfig,
                    format!("requested IP {ip} for container {container_id}"),
                    "interface {ifname} already holds {other} in range set {set}"
                ));
            }
            if self.store.reserve(container_id, ifname, ip, self.idx)? {
                return Ok(Allocated {
                    config: ip_config(r, ip),
                    newly_reserved: true,
                });
            }
            let holder = all
                .iter()
                .find(|a| a.ip == ip)
                .map(|a| a.container_id.clone())
                .unwrap_or_else(|| "unknown".into());
            return Err(cni_err!(
                InvalidNetworkConfig,
                format!("requested IP {ip} is already allocated to container {holder}")
            ));
        }

        if let Some(ip) = held.first() {
            return Ok(existing(*ip));
        }
        let exhausted = || {
            cni_err!(
                PluginNotAvailable,
                format!("allocating IP in {set} for container {container_id}: range exhausted")
            )
        };
        let taken = self.taken_in(&all);
        if self.capacity() <= taken.len() as u128 {
            return Err(exhausted());
        }
        for (r, ip) in candidates(set, self.store.last_reserved(self.idx)) {
            if taken.contains(&ip) {
                continue;
            }
            if self.store.reserve(container_id, ifname, ip, self.idx)? {
                return Ok(Allocated {
                    config: ip_config(r, ip),
                    newly_reserved: true,
                });
            }
        }
        Err(exhausted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::ipam::range::RangeSpec;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(specs: &[(&str, Option<&str>, Option<&str>)]) -> RangeSet {
        let ranges = specs
            .iter()
            .map(|(subnet, start, end)| {
                Range::from_spec(&RangeSpec {
                    subnet: subnet.to_string(),
                    range_start: start.map(String::from),
                    range_end: end.map(String::from),
                    gateway: None,
                })
                .unwrap()
            })
            .collect();
        RangeSet::new(ranges).unwrap()
    }

    fn addr(a: &Allocated) -> String {
        a.config.address.to_string()
    }

    #[test]
    fn first_allocation_skips_gateway_and_has_subnet_prefix() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        let rs = set(&[("10.1.1.0/24", None, None)]);
        let a = Allocator::new(&s, &rs, 0).get("c1", "eth0", None).unwrap();
        assert_eq!(addr(&a), "10.1.1.2/24");
        assert_eq!(a.config.gateway, Some(ip("10.1.1.1")));
        assert_eq!(a.config.interface, None);
        assert!(a.newly_reserved);
    }

    #[test]
    fn round_robin_continues_after_last_reserved_and_wraps_across_ranges() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        let rs = set(&[
            ("10.1.1.0/24", Some("10.1.1.10"), Some("10.1.1.11")),
            ("10.1.2.0/24", Some("10.1.2.20"), Some("10.1.2.21")),
        ]);
        let al = Allocator::new(&s, &rs, 0);
        std::fs::write(d.path().join("n/last_reserved_ip.0"), "10.1.1.10").unwrap();
        let got: Vec<String> = (0..3)
            .map(|i| addr(&al.get(&format!("c{i}"), "eth0", None).unwrap()))
            .collect();
        assert_eq!(got, ["10.1.1.11/24", "10.1.2.20/24", "10.1.2.21/24"]);
        // Freeing an early address does not make it the next pick: the cursor moves on, wraps.
        s.release(ip("10.1.1.11")).unwrap();
        assert_eq!(addr(&al.get("c3", "eth0", None).unwrap()), "10.1.1.10/24");
        assert_eq!(addr(&al.get("c4", "eth0", None).unwrap()), "10.1.1.11/24");
        // A cursor outside the set restarts from the first range.
        std::fs::write(d.path().join("n/last_reserved_ip.0"), "192.168.0.1").unwrap();
        s.release(ip("10.1.2.21")).unwrap();
        assert_eq!(addr(&al.get("c5", "eth0", None).unwrap()), "10.1.2.21/24");
    }

    #[test]
    fn retry_for_same_container_and_ifname_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        let rs = set(&[("10.1.1.0/24", None, None)]);
        let al = Allocator::new(&s, &rs, 0);
        let a = al.get("c1", "eth0", None).unwrap();
        let b = al.get("c1", "eth0", None).unwrap();
        assert_eq!(a.config, b.config);
        assert!(!b.newly_reserved);
        let c = al.get("c1", "eth1", None).unwrap();
        assert_ne!(a.config, c.config);
        assert_eq!(s.allocations().unwrap().len(), 2);
    }

    #[test]
    fn requested_ip_must_be_in_the_set_free_and_not_special() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        let rs = set(&[("10.1.1.0/24", None, Some("10.1.1.100"))]);
        let al = Allocator::new(&s, &rs, 0);
        let a = al.get("c1", "eth0", Some(ip("10.1.1.50"))).unwrap();
        assert_eq!(addr(&a), "10.1.1.50/24");
        assert_eq!(s.last_reserved(0), Some(ip("10.1.1.50")));
        assert!(
            !al.get("c1", "eth0", Some(ip("10.1.1.50")))
                .unwrap()
                .newly_reserved
        );
        let cases = [
            ("c2", "10.1.1.50", "already allocated to container c1"),
            (
                "c2",
                "10.1.1.200",
                "10.1.1.200 is not in range set 10.1.1.0/24",
            ),
            ("c2", "10.9.9.9", "10.9.9.9"),
            ("c2", "10.1.1.1", "gateway"),
            ("c1", "10.1.1.51", "already holds 10.1.1.50"),
        ];
        for (id, req, needle) in cases {
            let e = al.get(id, "eth0", Some(ip(req))).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig, "{e}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn exhaustion_is_code_50_naming_subnet_and_container() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        // /30: .0 network, .1 gateway, .2 usable, .3 broadcast.
        let rs = set(&[("10.1.1.0/30", None, None)]);
        let al = Allocator::new(&s, &rs, 0);
        assert_eq!(al.free().unwrap(), 1);
        assert_eq!(addr(&al.get("a", "eth0", None).unwrap()), "10.1.1.2/30");
        assert_eq!(al.free().unwrap(), 0);
        let e = al.get("abc", "eth0", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::PluginNotAvailable);
        assert_eq!(
            e.msg,
            "allocating IP in 10.1.1.0/30 for container abc: range exhausted"
        );
    }

    #[test]
    fn explicit_start_at_network_address_still_skips_it() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        let rs = set(&[("10.1.1.0/29", Some("10.1.1.0"), Some("10.1.1.7"))]);
        let al = Allocator::new(&s, &rs, 0);
        assert_eq!(al.free().unwrap(), 5);
        let got: Vec<String> = (0..5)
            .map(|i| addr(&al.get(&format!("c{i}"), "eth0", None).unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                "10.1.1.2/29",
                "10.1.1.3/29",
                "10.1.1.4/29",
                "10.1.1.5/29",
                "10.1.1.6/29"
            ]
        );
        assert!(al.get("x", "eth0", None).is_err());
    }

    #[test]
    fn ipv6_allocation() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        let rs = set(&[("fd00::/64", None, None)]);
        let a = Allocator::new(&s, &rs, 1).get("c", "eth0", None).unwrap();
        assert_eq!(addr(&a), "fd00::2/64");
        assert_eq!(a.config.gateway, Some(ip("fd00::1")));
    }
}
