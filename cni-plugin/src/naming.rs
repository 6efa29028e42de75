//! Names netlet derives from an attachment (container ID + interface name).
//!
//! The host end of a veth gets a name computed from the attachment, and an alias recording it,
//! so DEL finds the link without the container namespace (which may be gone) and GC can tell
//! which host-side links belong to attachments the runtime no longer knows.

/// FNV-1a, 64 bit: stable across Rust releases, unlike `DefaultHasher`, which matters because
/// names must survive upgrades of the plugin binary.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Host-side veth name: `veth` + 11 hex digits (15 bytes, the kernel's limit).
pub fn host_veth(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "veth{:011x}",
        fnv1a(&[network, container_id, ifname]) & 0xfff_ffff_ffff
    )
}

/// Whether `name` has the shape of [`host_veth`]'s output (`veth` + 11 hex digits).
///
/// The reference bridge plugin names its veths `veth` + 8 hex digits, so the shapes differ.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("veth")
        && name[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Alias stored on the host veth: `netlet:<network>:<containerID>:<ifname>`.
///
/// None of the three may contain `:` (validated on input), so the alias parses back exactly.
pub fn alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("netlet:{network}:{container_id}:{ifname}")
}

/// Parses an alias written by [`alias`] into (network, container ID, ifname).
pub fn parse_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let mut it = alias.strip_prefix("netlet:")?.split(':');
    let (n, c, i) = (it.next()?, it.next()?, it.next()?);
    it.next().is_none().then_some((n, c, i))
}

/// iptables chain for a network's masquerade rules (≤ 28 bytes).
pub fn masq_chain(network: &str) -> String {
    format!("NETLET-MASQ-{:08x}", fnv1a(&[network]) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_differ() {
        let a = host_veth("net", "c1", "eth0");
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_veth("net", "c1", "eth0"), "deterministic");
        assert_ne!(a, host_veth("net", "c1", "eth1"));
        assert_ne!(a, host_veth("net", "c2", "eth0"));
        assert_ne!(a, host_veth("net2", "c1", "eth0"));
        assert!(masq_chain("anything").len() <= 28);
        assert!(is_host_veth_name(&a));
        assert!(!is_host_veth_name("veth1a2b3c4d"), "reference plugin shape");
        assert!(!is_host_veth_name("vethXXXXXXXXXXX"));
    }

    #[test]
    fn alias_round_trips() {
        let s = alias("net-1", "abc.def_0", "eth0");
        assert_eq!(parse_alias(&s), Some(("net-1", "abc.def_0", "eth0")));
        assert_eq!(parse_alias("other"), None);
        assert_eq!(parse_alias("netlet:a:b"), None);
        assert_eq!(parse_alias("netlet:a:b:c:d"), None);
    }
}
