//! The node's InternalIP when none is configured: the first usable IPv4 address of the
//! agent's network namespace, in interface-index order (so the primary NIC, created first,
//! wins over bridges and veths created later by containerd and netlet-cni), never one inside
//! the cluster's pod network (the pod bridge's gateway address, after a restart).

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use std::net::{IpAddr, Ipv4Addr};

/// Why no node address could be found.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// The netlink address or link dump failed.
    #[error("listing the network namespace's addresses or links over netlink: {0}")]
    Dump(#[source] rtnetlink::Error),
    /// The namespace has no address a node could use.
    #[error("no IPv4 address outside loopback, link-local and the pod network in the agent's network namespace; set --node-ip")]
    NoneFound,
}

/// Whether `ip` can be a node's InternalIP: not loopback (127/8), not link-local (169.254/16,
/// which every host may reuse), not unspecified, broadcast or multicast.
pub fn usable(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast())
}

/// The first usable address of `(interface index, address)` pairs outside `pod_network`,
/// lowest index first, the kernel's order within an interface.
pub fn pick(addrs: &[(u32, Ipv4Addr)], pod_network: Ipv4Network) -> Option<Ipv4Addr> {
    let mut sorted: Vec<&(u32, Ipv4Addr)> = addrs
        .iter()
        .filter(|(_, ip)| usable(*ip) && !pod_network.contains(*ip))
        .collect();
    sorted.sort_by_key(|(index, _)| *index); // stable: keeps the kernel's order per interface
    sorted.first().map(|(_, ip)| *ip)
}

/// Dumps the namespace's IPv4 addresses over `handle` and [`pick`]s one outside `pod_network`.
pub async fn detect_node_ip(
    handle: &rtnetlink::Handle,
    pod_network: Ipv4Network,
) -> Result<Ipv4Addr, AddressError> {
    let addrs = ipv4_addresses(handle).await?;
    pick(&addrs, pod_network).ok_or(AddressError::NoneFound)
}

/// The name of the interface holding `ip` (the node's uplink, for the eBPF service proxy,
/// which translates off-cluster clients there); `None` when no interface has it.
pub async fn interface_of(
    handle: &rtnetlink::Handle,
    ip: Ipv4Addr,
) -> Result<Option<String>, AddressError> {
    let addrs = ipv4_addresses(handle).await?;
    let Some((index, _)) = addrs.iter().find(|(_, a)| *a == ip) else {
        return Ok(None);
    };
    let mut links = handle.link().get().match_index(*index).execute();
    while let Some(msg) = links.try_next().await.map_err(AddressError::Dump)? {
        for attr in msg.attributes {
            if let LinkAttribute::IfName(name) = attr {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

/// Every IPv4 address of the namespace as `(interface index, address)`.
async fn ipv4_addresses(handle: &rtnetlink::Handle) -> Result<Vec<(u32, Ipv4Addr)>, AddressError> {
    let mut addrs = Vec::new();
    let mut dump = handle.address().get().execute();
    while let Some(msg) = dump.try_next().await.map_err(AddressError::Dump)? {
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
        // point-to-point links, so prefer the former when both are present.
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            addrs.push((msg.header.index, ip));
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn picks_lowest_interface_and_skips_loopback_and_link_local() {
        let addrs = [
            (1, ip("127.0.0.1")),
            (5, ip("10.244.1.1")),
            (2, ip("169.254.3.4")),
            (3, ip("192.0.2.10")),
            (3, ip("192.0.2.11")),
        ];
        let pods: Ipv4Network = "10.244.0.0/16".parse().unwrap();
        assert_eq!(pick(&addrs, pods), Some(ip("192.0.2.10")));
        // The pod bridge, even on a lower index (recreated NIC), is never the node address.
        let addrs = [(2, ip("10.244.1.1")), (4, ip("198.51.100.7"))];
        assert_eq!(pick(&addrs, pods), Some(ip("198.51.100.7")));
        assert_eq!(pick(&[(1, ip("127.0.0.1"))], pods), None);
        assert_eq!(pick(&[], pods), None);
    }
}
