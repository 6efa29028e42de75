//! The kernel edge of pod routing: the main IPv4 routing table of the agent's network
//! namespace, behind [`RouteTable`] so the reconcile logic is tested against a fake.
//!
//! Routes the agent installs carry its own route protocol number, [`ROUTE_PROTOCOL`], the way
//! BIRD or Zebra mark theirs (`ip route` shows `proto 78`). That tag is the ownership record:
//! after a restart the agent reconciles exactly the routes with this protocol and never
//! deletes or replaces anyone else's, and nothing needs to be persisted.

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::RouteMessageBuilder;
use std::future::Future;
use std::net::Ipv4Addr;

/// The route protocol number marking the agent's routes: 0x4e ('N' for netlet), unassigned in
/// `/etc/iproute2/rt_protos` and the kernel's `RTPROT_*` list (which uses 0–4, 8–18, 42, 99,
/// 186–192).
pub const ROUTE_PROTOCOL: u8 = 0x4e;

/// A unicast route of the main table, as far as the reconciler cares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRoute {
    /// Destination prefix.
    pub dst: Ipv4Network,
    /// Next hop, if any (directly connected routes have none).
    pub gateway: Option<Ipv4Addr>,
    /// The route protocol number (who installed it).
    pub protocol: u8,
}

impl KernelRoute {
    /// Whether the agent installed this route.
    pub fn is_ours(&self) -> bool {
        self.protocol == ROUTE_PROTOCOL
    }
}

/// Why a routing table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    /// Dumping the routing table failed.
    #[error("listing IPv4 routes: {0}")]
    List(#[source] rtnetlink::Error),
    /// Adding or replacing a route failed (e.g. the gateway is not on a connected network).
    #[error("replacing route {dst} via {gateway}: {source}")]
    Replace {
        /// Destination.
        dst: Ipv4Network,
        /// Next hop.
        gateway: Ipv4Addr,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting a route failed.
    #[error("deleting route {dst}: {source}")]
    Delete {
        /// Destination.
        dst: Ipv4Network,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
}

/// The main IPv4 routing table of one network namespace.
pub trait RouteTable: Send + Sync {
    /// Every unicast route of the main table.
    fn list(&self) -> impl Future<Output = Result<Vec<KernelRoute>, RouteTableError>> + Send;
    /// Installs `dst via gateway` with [`ROUTE_PROTOCOL`], replacing our route to `dst`.
    fn replace(
        &self,
        dst: Ipv4Network,
        gateway: Ipv4Addr,
    ) -> impl Future<Output = Result<(), RouteTableError>> + Send;
    /// Deletes one of our routes (matching its protocol, so never someone else's).
    fn delete(
        &self,
        route: &KernelRoute,
    ) -> impl Future<Output = Result<(), RouteTableError>> + Send;
}

/// [`RouteTable`] over an rtnetlink connection; the namespace is the one the connection's
/// socket was opened in.
#[derive(Debug, Clone)]
pub struct NetlinkRouteTable {
    handle: rtnetlink::Handle,
}

impl NetlinkRouteTable {
    /// A table reached through `handle`.
    pub fn new(handle: rtnetlink::Handle) -> Self {
        Self { handle }
    }
}

/// The route in `msg`, if it is an IPv4 unicast route of the main table.
fn parse(msg: &RouteMessage) -> Option<KernelRoute> {
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let dst = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let gateway = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    });
    Some(KernelRoute {
        dst: Ipv4Network::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        protocol: u8::from(msg.header.protocol),
    })
}

fn message(dst: Ipv4Network, gateway: Option<Ipv4Addr>) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    if let Some(gw) = gateway {
        b = b.gateway(gw);
    }
    b.build()
}

impl RouteTable for NetlinkRouteTable {
    async fn list(&self) -> Result<Vec<KernelRoute>, RouteTableError> {
        let mut dump = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut routes = Vec::new();
        while let Some(msg) = dump.try_next().await.map_err(RouteTableError::List)? {
            routes.extend(parse(&msg));
        }
        Ok(routes)
    }

    async fn replace(&self, dst: Ipv4Network, gateway: Ipv4Addr) -> Result<(), RouteTableError> {
        self.handle
            .route()
            .add(message(dst, Some(gateway)))
            .replace()
            .execute()
            .await
            .map_err(|source| RouteTableError::Replace {
                dst,
                gateway,
                source,
            })
    }

    async fn delete(&self, route: &KernelRoute) -> Result<(), RouteTableError> {
        // The protocol in the request makes the kernel match it: a route to the same prefix
        // that someone else installed is never the one removed.
        self.handle
            .route()
            .del(message(route.dst, route.gateway))
            .execute()
            .await
            .map_err(|source| RouteTableError::Delete {
                dst: route.dst,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_messages_round_trip_through_parse() {
        let dst: Ipv4Network = "10.244.2.0/24".parse().unwrap();
        let msg = message(dst, Some(Ipv4Addr::new(192, 0, 2, 2)));
        let r = parse(&msg).unwrap();
        assert_eq!(r.dst, dst);
        assert_eq!(r.gateway, Some(Ipv4Addr::new(192, 0, 2, 2)));
        assert!(r.is_ours());
    }
}
