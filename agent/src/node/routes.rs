//! Routes to the other nodes' pods: for every other Node with a `spec.podCIDR` and an
//! InternalIP, `podCIDR via nodeIP` in the agent's namespace (the host-gw model: nodes share
//! an L2 network, no encapsulation).
//!
//! In kube-rs style: a reflector keeps every Node; after the initial list and after each
//! change (plus a periodic resync that repairs routes deleted by hand) the desired set is
//! recomputed by [`desired_routes`], diffed against the table by [`plan`] and applied by
//! [`apply`]. Only routes tagged with [`ROUTE_PROTOCOL`](super::route_table::ROUTE_PROTOCOL)
//! are ever replaced or deleted. Routes stay in place when the agent stops, so a restart does
//! not interrupt pod traffic; the next start reconciles them.

use super::route_table::{KernelRoute, RouteTable, RouteTableError};
use futures::StreamExt;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Destination prefix → next hop.
pub type DesiredRoutes = BTreeMap<Ipv4Network, Ipv4Addr>;

/// A Node's IPv4 InternalIP.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The routes this node should have, from all Nodes: one per other node with an IPv4 pod
/// CIDR and InternalIP. When two nodes claim one CIDR (a control-plane bug) the node whose
/// name sorts first wins, so every agent picks the same.
pub fn desired_routes(nodes: &[Arc<Node>], own_name: &str, own_ip: Ipv4Addr) -> DesiredRoutes {
    let mut sorted: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = DesiredRoutes::new();
    for node in sorted {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if name == own_name {
            continue;
        }
        let Some(cidr) = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse::<Ipv4Network>().ok())
        else {
            continue;
        };
        let Some(ip) = internal_ip(node).filter(|ip| *ip != own_ip) else {
            continue;
        };
        let cidr = Ipv4Network::new(cidr.network(), cidr.prefix()).expect("prefix is valid");
        out.entry(cidr).or_insert(ip);
    }
    out
}

/// What [`apply`] will do to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Routes to add or re-point (`ip route replace … proto 78`).
    pub replace: Vec<(Ipv4Network, Ipv4Addr)>,
    /// Our routes no node wants any more.
    pub delete: Vec<KernelRoute>,
    /// Wanted destinations that already have a route someone else installed: left alone.
    pub blocked: Vec<Ipv4Network>,
}

/// Diffs `desired` against the table's `current` routes.
pub fn plan(desired: &DesiredRoutes, current: &[KernelRoute]) -> Plan {
    let mut p = Plan::default();
    for (dst, gw) in desired {
        let same_dst = current.iter().filter(|r| r.dst == *dst);
        if same_dst.clone().any(|r| !r.is_ours()) {
            p.blocked.push(*dst);
        } else if !same_dst.clone().any(|r| r.gateway == Some(*gw)) {
            p.replace.push((*dst, *gw));
        }
    }
    for r in current.iter().filter(|r| r.is_ours()) {
        let keep = desired.get(&r.dst) == Some(&r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED))
            && !p.blocked.contains(&r.dst);
        if !keep && !p.replace.iter().any(|(dst, _)| *dst == r.dst) {
            p.delete.push(r.clone());
        }
    }
    p
}

/// Why a reconcile round failed.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// Reading the table failed; nothing was changed.
    #[error(transparent)]
    List(RouteTableError),
    /// Some changes failed (the others were made).
    #[error("{} route change(s) failed, first: {}", .0.len(), .0[0])]
    Apply(Vec<RouteTableError>),
}

/// Brings the table in line with `desired`; returns the plan it carried out.
pub async fn apply<T: RouteTable>(table: &T, desired: &DesiredRoutes) -> Result<Plan, RoutesError> {
    let current = table.list().await.map_err(RoutesError::List)?;
    let p = plan(desired, &current);
    let mut failures = Vec::new();
    for dst in &p.blocked {
        tracing::warn!(%dst, "a route to this pod CIDR exists that netlet did not install; leaving it");
    }
    for r in &p.delete {
        match table.delete(r).await {
            Ok(()) => tracing::info!(dst = %r.dst, "deleted pod route"),
            Err(e) => failures.push(e),
        }
    }
    for (dst, gw) in &p.replace {
        match table.replace(*dst, *gw).await {
            Ok(()) => tracing::info!(%dst, via = %gw, "installed pod route"),
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(p)
    } else {
        Err(RoutesError::Apply(failures))
    }
}

/// The route reconciler of one node.
pub struct RouteReconciler<T> {
    /// All Nodes.
    pub api: Api<Node>,
    /// This node (its own CIDR is reached through the bridge, not a route).
    pub node_name: String,
    /// This node's address (a Node claiming it is us under another name: skipped).
    pub node_ip: Ipv4Addr,
    /// The routing table.
    pub table: T,
    /// Interval of full resyncs.
    pub resync: Duration,
}

impl<T: RouteTable> RouteReconciler<T> {
    /// Reconciles until `cancel` fires. A failed round is retried at the next change or
    /// resync.
    pub async fn run(self, cancel: CancellationToken) {
        let (store, writer) = reflector::store::<Node>();
        let mut events = std::pin::pin!(reflector(
            writer,
            watcher(self.api.clone(), watcher::Config::default())
        )
        .default_backoff());
        let mut synced = false;
        let mut resync = tokio::time::interval(self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let go = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = events.next() => match ev {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!("watching Nodes for routes: {e}");
                        false
                    }
                    // The store is complete only once the initial list is done.
                    Some(Ok(watcher::Event::InitDone)) => { synced = true; true }
                    Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => false,
                    Some(Ok(_)) => synced,
                },
                _ = resync.tick() => synced,
            };
            if go {
                self.reconcile(&store).await;
            }
        }
    }

    async fn reconcile(&self, store: &Store<Node>) {
        let desired = desired_routes(&store.state(), &self.node_name, self.node_ip);
        match apply(&self.table, &desired).await {
            Ok(_) => tracing::debug!(routes = desired.len(), "pod routes in sync"),
            Err(e) => tracing::warn!("reconciling pod routes: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::route_table::ROUTE_PROTOCOL;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use std::sync::Mutex;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Arc<Node> {
        Arc::new(Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(Into::into),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: ip.map(|ip| {
                    vec![
                        NodeAddress {
                            type_: "Hostname".into(),
                            address: name.into(),
                        },
                        NodeAddress {
                            type_: "InternalIP".into(),
                            address: ip.into(),
                        },
                    ]
                }),
                ..Default::default()
            }),
        })
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn route(dst: &str, gw: Option<&str>, protocol: u8) -> KernelRoute {
        KernelRoute {
            dst: net(dst),
            gateway: gw.map(ip),
            protocol,
        }
    }

    #[test]
    fn desired_skips_self_incomplete_and_duplicate_nodes() {
        let nodes = vec![
            node("me", Some("10.244.0.0/24"), Some("192.0.2.1")),
            node("b", Some("10.244.1.0/24"), Some("192.0.2.2")),
            node("a", Some("10.244.1.0/24"), Some("192.0.2.9")),
            node("no-cidr", None, Some("192.0.2.3")),
            node("no-ip", Some("10.244.4.0/24"), None),
            node("v6", Some("fd00::/64"), Some("192.0.2.5")),
            node("alias", Some("10.244.6.0/24"), Some("192.0.2.1")),
            node("c", Some("10.244.7.5/24"), Some("192.0.2.7")),
        ];
        let d = desired_routes(&nodes, "me", ip("192.0.2.1"));
        assert_eq!(
            d,
            DesiredRoutes::from([
                (net("10.244.1.0/24"), ip("192.0.2.9")),
                (net("10.244.7.0/24"), ip("192.0.2.7")),
            ])
        );
    }

    #[test]
    fn plan_touches_only_our_routes() {
        let desired = DesiredRoutes::from([
            (net("10.244.1.0/24"), ip("192.0.2.2")), // present and right
            (net("10.244.2.0/24"), ip("192.0.2.3")), // ours, wrong gateway
            (net("10.244.3.0/24"), ip("192.0.2.4")), // missing
            (net("10.244.4.0/24"), ip("192.0.2.5")), // someone else's static route
        ]);
        let current = vec![
            route("0.0.0.0/0", Some("192.0.2.254"), 3),
            route("192.0.2.0/24", None, 2),
            route("10.244.1.0/24", Some("192.0.2.2"), ROUTE_PROTOCOL),
            route("10.244.2.0/24", Some("192.0.2.99"), ROUTE_PROTOCOL),
            route("10.244.4.0/24", Some("192.0.2.50"), 4),
            route("10.244.9.0/24", Some("192.0.2.9"), ROUTE_PROTOCOL), // node gone
            route("10.99.0.0/16", Some("192.0.2.8"), 4),               // not ours
        ];
        let p = plan(&desired, &current);
        assert_eq!(
            p.replace,
            vec![
                (net("10.244.2.0/24"), ip("192.0.2.3")),
                (net("10.244.3.0/24"), ip("192.0.2.4")),
            ]
        );
        assert_eq!(
            p.delete,
            vec![route("10.244.9.0/24", Some("192.0.2.9"), ROUTE_PROTOCOL)]
        );
        assert_eq!(p.blocked, vec![net("10.244.4.0/24")]);
        assert_eq!(plan(&DesiredRoutes::new(), &current[..2]), Plan::default());
    }

    /// An in-memory table behaving like the kernel's for our three operations.
    #[derive(Default)]
    struct FakeTable {
        routes: Mutex<Vec<KernelRoute>>,
        unreachable: Option<Ipv4Addr>,
    }

    impl RouteTable for FakeTable {
        async fn list(&self) -> Result<Vec<KernelRoute>, RouteTableError> {
            Ok(self.routes.lock().unwrap().clone())
        }
        async fn replace(
            &self,
            dst: Ipv4Network,
            gateway: Ipv4Addr,
        ) -> Result<(), RouteTableError> {
            if Some(gateway) == self.unreachable {
                return Err(RouteTableError::Replace {
                    dst,
                    gateway,
                    source: rtnetlink::Error::RequestFailed,
                });
            }
            let mut r = self.routes.lock().unwrap();
            r.retain(|x| !(x.dst == dst && x.is_ours()));
            r.push(route(
                &dst.to_string(),
                Some(&gateway.to_string()),
                ROUTE_PROTOCOL,
            ));
            Ok(())
        }
        async fn delete(&self, route: &KernelRoute) -> Result<(), RouteTableError> {
            self.routes.lock().unwrap().retain(|x| x != route);
            Ok(())
        }
    }

    #[tokio::test]
    async fn apply_converges_and_reports_failures_without_stopping() {
        let foreign = route("10.0.0.0/8", Some("192.0.2.254"), 4);
        let table = FakeTable {
            routes: Mutex::new(vec![
                foreign.clone(),
                route("10.244.9.0/24", Some("192.0.2.9"), ROUTE_PROTOCOL),
            ]),
            unreachable: Some(ip("198.51.100.1")),
        };
        let desired = DesiredRoutes::from([
            (net("10.244.1.0/24"), ip("192.0.2.2")),
            (net("10.244.2.0/24"), ip("198.51.100.1")),
        ]);
        let err = apply(&table, &desired).await.unwrap_err();
        assert!(
            err.to_string().contains("10.244.2.0/24 via 198.51.100.1"),
            "{err}"
        );
        let mut now = table.routes.lock().unwrap().clone();
        now.sort();
        assert_eq!(
            now,
            vec![
                foreign.clone(),
                route("10.244.1.0/24", Some("192.0.2.2"), ROUTE_PROTOCOL)
            ]
        );
        // A second round with a reachable set changes nothing more.
        let desired = DesiredRoutes::from([(net("10.244.1.0/24"), ip("192.0.2.2"))]);
        assert_eq!(apply(&table, &desired).await.unwrap(), Plan::default());
        assert!(table.routes.lock().unwrap().contains(&foreign));
    }
}
