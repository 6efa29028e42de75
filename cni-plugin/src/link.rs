//! Netlink operations on links, addresses and routes, over one rtnetlink socket per namespace.
//!
//! Each operation is one request/ack round trip, and ADD is built to need few of them: the veth
//! pair is created with its host end already enslaved to the bridge and its container end created
//! directly inside the container namespace under its final name, in a single RTM_NEWLINK.

use crate::cni_err;
use crate::error::{CniError, Result};
use crate::result::Route;
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;

/// What we need to know of a link after finding or creating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index in its namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// `IFLA_IFALIAS`, where netlet records which container owns a host-side veth.
    pub alias: Option<String>,
    /// Index of the bridge this link is a port of.
    pub controller: Option<u32>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: Option<u32>,
}

/// A netlink socket in one network namespace.
pub struct Netlink {
    handle: Handle,
}

/// The negative errno of a netlink NACK, as a positive errno.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_err(what: String, e: rtnetlink::Error) -> CniError {
    let detail = match errno(&e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    cni_err!(Internal, what, "{detail}")
}

/// Formats a MAC address the way `ip link` prints it.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<Vec<u8>> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| cni_err!(InvalidNetworkConfig, "invalid MAC address", "{s:?}"))?;
    if bytes.len() != 6 {
        return Err(cni_err!(
            InvalidNetworkConfig,
            "invalid MAC address",
            "{s:?}"
        ));
    }
    Ok(bytes)
}

/// A random locally administered unicast MAC: set at creation so no read-back is needed.
pub fn random_mac() -> Vec<u8> {
    let mut m: [u8; 6] = rand::random();
    m[0] = (m[0] & 0xfe) | 0x02;
    m.to_vec()
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: String::new(),
        alias: None,
        controller: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        mtu: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(m) => info.mac = format_mac(m),
            LinkAttribute::IfAlias(s) if !s.is_empty() => info.alias = Some(s.clone()),
            LinkAttribute::Controller(c) => info.controller = Some(*c),
            LinkAttribute::Mtu(m) => info.mtu = Some(*m),
            _ => {}
        }
    }
    info
}

impl Netlink {
    /// Opens a socket in the calling thread's current namespace and drives it on the runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| cni_err!(Internal, "opening netlink socket", "{e}"))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a socket inside the namespace `ns` (the thread returns to its own namespace).
    pub fn connect_in(ns: &std::fs::File, path: &str) -> Result<Self> {
        crate::netns::within(ns, path, Self::connect)?
    }

    /// Finds a link by name; `None` when it does not exist.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(link_info)),
            Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(None),
            Err(e) => Err(nl_err(format!("looking up link {name}"), e)),
        }
    }

    /// Lists every link in the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("listing links".into(), e))?;
        Ok(msgs.iter().map(link_info).collect())
    }

    /// Returns the bridge `name`, creating it (up, with `mtu`) if absent.
    ///
    /// Concurrent ADDs race to create it; losing the race (EEXIST) just means looking it up.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        promisc: bool,
    ) -> Result<LinkInfo> {
        if let Some(l) = self.link_by_name(name).await? {
            if !l.up {
                self.set_up(l.index, name).await?;
            }
            return Ok(l);
        }
        // An explicit MAC pins the bridge address; otherwise the kernel keeps switching it to the
        // lowest port MAC as pods come and go, and pods hold stale gateway ARP entries.
        let mut b = LinkBridge::new(name)
            .promiscuous(promisc)
            .address(random_mac());
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        match self.handle.link().add(b.build()).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(nl_err(format!("creating bridge {name}"), e)),
        }
        self.link_by_name(name)
            .await?
            .ok_or_else(|| cni_err!(Internal, format!("bridge {name} vanished after creation")))
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl_err(format!("setting link {name} up"), e))
    }

    /// Creates a veth pair: `host` (up, port of `bridge`) in this namespace and
    /// `peer` inside the namespace `peer_ns`, both with the given MACs and MTU.
    ///
    /// Returns `Ok(false)` when a link of either name already exists.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_veth(
        &self,
        host: &str,
        host_mac: &[u8],
        bridge: u32,
        mtu: Option<u32>,
        peer: &str,
        peer_mac: &[u8],
        peer_ns: BorrowedFd<'_>,
    ) -> Result<bool> {
        let mut peer_msg = LinkUnspec::new_with_name(peer)
            .address(peer_mac.to_vec())
            .setns_by_fd(peer_ns.as_raw_fd());
        if let Some(m) = mtu {
            peer_msg = peer_msg.mtu(m);
        }
        let mut b = LinkVeth::new(host, peer)
            .address(host_mac.to_vec())
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())));
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        match self.handle.link().add(b.build()).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
            Err(e) => Err(nl_err(format!("creating veth pair {host}/{peer}"), e)),
        }
    }

    /// Sets the ownership alias and, if asked, hairpin mode on a bridge port, in one message
    /// addressed by name (no index lookup). The kernel ignores `IFLA_IFALIAS` when creating a
    /// link, so this cannot ride on the veth's RTM_NEWLINK.
    pub async fn set_port_attrs(&self, name: &str, alias: &str, hairpin: bool) -> Result<()> {
        let mut b = LinkBridgePort::new(0)
            .name(name.to_string())
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()));
        if hairpin {
            b = b.append_info_data(InfoBridgePort::HairpinMode(true));
        }
        self.handle
            .link()
            .set_port(b.build())
            .execute()
            .await
            .map_err(|e| nl_err(format!("setting alias/hairpin on {name}"), e))
    }

    /// Takes a bridge port out of service at once: down and off its bridge, in one message by
    /// name. `Ok(false)` when the link does not exist.
    pub async fn detach(&self, name: &str) -> Result<bool> {
        let msg = LinkUnspec::new_with_name(name)
            .down()
            .nocontroller()
            .build();
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(false),
            Err(e) => Err(nl_err(format!("detaching link {name}"), e)),
        }
    }

    /// Deletes a link by name; `Ok(false)` when it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(false),
            Err(e) => Err(nl_err(format!("deleting link {name}"), e)),
        }
    }

    /// Adds an address; an address already present is success.
    pub async fn add_address(&self, index: u32, name: &str, addr: IpNetwork) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, addr.ip(), addr.prefix())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(nl_err(format!("adding address {addr} to {name}"), e)),
        }
    }

    /// The address messages of a link, for reading or deleting.
    async fn address_messages(&self, index: u32, name: &str) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("listing addresses of {name}"), e))
    }

    /// The addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        let msgs = self
            .address_messages(index, &format!("link {index}"))
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNetwork::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Removes addresses of `family` on the bridge that are not `keep` (forceAddress).
    pub async fn replace_bridge_address(
        &self,
        index: u32,
        name: &str,
        keep: IpNetwork,
    ) -> Result<()> {
        for m in self.address_messages(index, name).await? {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                let same_family = ip.is_ipv4() == keep.is_ipv4();
                let is_link_local =
                    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                if same_family
                    && !is_link_local
                    && (ip != keep.ip() || m.header.prefix_len != keep.prefix())
                {
                    self.handle
                        .address()
                        .del(m)
                        .execute()
                        .await
                        .map_err(|e| nl_err(format!("removing old address {ip} from {name}"), e))?;
                }
            }
        }
        self.add_address(index, name, keep).await
    }

    /// Adds a route through link `index`; an identical existing route is success.
    pub async fn add_route(&self, index: u32, name: &str, r: &Route) -> Result<()> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .map_err(|e| {
                cni_err!(
                    InvalidNetworkConfig,
                    format!("invalid route {}", r.dst),
                    "{e}"
                )
            })?
            .output_interface(index);
        if let Some(gw) = r.gw {
            b = b.gateway(gw).map_err(|e| {
                cni_err!(InvalidNetworkConfig, format!("invalid gateway {gw}"), "{e}")
            })?;
        } else {
            b = b.scope(RouteScope::Link);
        }
        if let Some(p) = r.priority {
            b = b.priority(p);
        }
        if let Some(t) = r.table {
            b = b.table_id(t);
        }
        if let Some(s) = r.scope {
            b = b.scope(RouteScope::from(s));
        }
        let mut msg = b.build();
        let mut metrics = vec![];
        if let Some(m) = r.mtu {
            metrics.push(RouteMetric::Mtu(m));
        }
        if let Some(m) = r.advmss {
            metrics.push(RouteMetric::Advmss(m));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(nl_err(
                format!("adding route {} via {:?} on {name}", r.dst, r.gw),
                e,
            )),
        }
    }

    /// Routes of one family whose output interface is `index` (main table), as (dst, gw).
    pub async fn routes(&self, index: u32, v4: bool) -> Result<Vec<(IpNetwork, Option<IpAddr>)>> {
        let filter = if v4 {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        };
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("listing routes".into(), e))?;
        let addr = |a: &RouteAddress| match a {
            RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
            RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
            _ => None,
        };
        let mut out = vec![];
        for m in msgs {
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if oif != Some(index) {
                continue;
            }
            let dst_ip = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => addr(d),
                _ => None,
            });
            let gw = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => addr(g),
                _ => None,
            });
            let dst_ip = dst_ip.unwrap_or(if v4 {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            });
            let fam_ok = match m.header.address_family {
                AddressFamily::Inet => v4,
                AddressFamily::Inet6 => !v4,
                _ => false,
            };
            if let (true, Ok(dst)) = (
                fam_ok,
                IpNetwork::new(dst_ip, m.header.destination_prefix_length),
            ) {
                out.push((dst, gw));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_random_is_local_unicast() {
        let m = random_mac();
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 2, "locally administered");
        assert_eq!(parse_mac(&format_mac(&m)).unwrap(), m);
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
        assert!(parse_mac("00:00:00").is_err());
    }
}
