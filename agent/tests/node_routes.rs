//! The pod route reconciler against a real routing table: the table of an `nlt-` namespace
//! (the netlink socket is opened inside it), driven by Nodes in our apiserver (reached from the
//! test's own namespace). Routes someone else installed must survive everything.

mod node_support;

use integration::NetNs;
use k8s_openapi::api::core::v1::Node;
use kube::api::DeleteParams;
use kube::Api;
use netlet_agent::node::route_table::{NetlinkRouteTable, ROUTE_PROTOCOL};
use netlet_agent::node::routes::RouteReconciler;
use node_support::{in_netns, put_node, routes, set_pod_cidr, wait_for};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_nodes_and_leave_foreign_routes_alone() {
    let ns = NetNs::new("routes");
    for cmd in [
        // The node's NIC (a veth: this kernel has no dummy module), on the nodes' subnet.
        "link add d0 type veth peer name d1",
        "addr add 192.0.2.1/24 dev d0",
        "link set d1 up",
        "link set d0 up",
        // Someone else's route, to a CIDR a Node will claim later.
        "route add 10.244.50.0/24 via 192.0.2.50 proto static",
        // Left over by a previous agent run: ours (proto 78), and no Node wants it.
        "route add 10.244.60.0/24 via 192.0.2.60 proto 78",
    ] {
        ns.run_ok("ip", &cmd.split(' ').collect::<Vec<_>>());
    }
    assert_eq!(ROUTE_PROTOCOL, 78);
    let ours = || routes(&ns, &["proto", "78"]);

    let server = integration::TestApiserver::start_with(&["--disable-controllers"]);
    // The test plays the control plane's node IPAM (it sets podCIDRs itself); serve's own
    // controllers would assign one first.
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    put_node(&nodes, "me", Some("10.244.0.0/24"), "192.0.2.1").await;
    put_node(&nodes, "n2", Some("10.244.2.0/24"), "192.0.2.2").await;
    put_node(&nodes, "n3", Some("10.244.3.0/24"), "192.0.2.3").await;
    put_node(&nodes, "no-cidr", None, "192.0.2.4").await;

    let (connection, handle, _) = in_netns(&ns.path(), rtnetlink::new_connection).unwrap();
    tokio::spawn(connection);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        RouteReconciler {
            api: nodes.clone(),
            node_name: "me".into(),
            node_ip: "192.0.2.1".parse().unwrap(),
            table: NetlinkRouteTable::new(handle),
            resync: Duration::from_secs(1),
        }
        .run(cancel.clone()),
    );
    let log = || format!("routes: {:?}\n{}", routes(&ns, &[]), server.log());
    let expect = |want: &'static [&'static str]| {
        let ours = &ours;
        async move {
            wait_for(&format!("proto 78 routes {want:?}"), WAIT, log, || async {
                (ours() == want).then_some(())
            })
            .await
        }
    };

    // The initial list: one route per other node, the leftover gone.
    expect(&["10.244.2.0/24 via 192.0.2.2", "10.244.3.0/24 via 192.0.2.3"]).await;

    // A node's CIDR changes; another node's address changes.
    set_pod_cidr(&nodes, "n3", "10.244.33.0/24").await;
    put_node(&nodes, "n2", None, "192.0.2.22").await;
    expect(&[
        "10.244.2.0/24 via 192.0.2.22",
        "10.244.33.0/24 via 192.0.2.3",
    ])
    .await;

    // A node goes away.
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    expect(&["10.244.33.0/24 via 192.0.2.3"]).await;

    // A node claims a CIDR someone else already routes: their route stays as it is.
    put_node(&nodes, "clash", Some("10.244.50.0/24"), "192.0.2.5").await;
    // A route deleted by hand comes back at the next resync.
    ns.run_ok("ip", &["route", "del", "10.244.33.0/24"]);
    put_node(&nodes, "n4", Some("10.244.4.0/24"), "192.0.2.6").await;
    expect(&[
        "10.244.33.0/24 via 192.0.2.3",
        "10.244.4.0/24 via 192.0.2.6",
    ])
    .await;
    assert_eq!(
        routes(&ns, &["10.244.50.0/24"]),
        vec!["10.244.50.0/24 via 192.0.2.50"],
        "the foreign route was touched"
    );
    assert!(
        routes(&ns, &["proto", "static"]).contains(&"10.244.50.0/24 via 192.0.2.50".to_string())
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("reconciler stops on cancel")
        .unwrap();
}
