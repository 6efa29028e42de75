//! `ipMasq`: one chain and one POSTROUTING jump per network, in the node namespace, and pod
//! traffic leaving the cluster really is masqueraded.

mod common;

use common::*;
use integration::{netns::veth_between, NetNs};
use serde_json::json;

#[test]
fn ip_masq_installs_rules_in_node_ns_only() {
    let mut conf = bridge_conf("1.1.0", "t-masq", "nlbr-masq", "10.244.12.0/24");
    conf["ipMasq"] = json!(true);
    conf["clusterCIDRs"] = json!(["10.244.0.0/16"]);
    let net = Net::new("masq", conf);
    let chain = netlet_cni::naming::masq_chain(net.name());
    let comment = format!("netlet masquerade for network {}", net.name());
    let a = NetNs::new("masqa");
    let b = NetNs::new("masqb");

    net.status().ok();
    let ra = net.add("ctr-a", &a);
    let rules = net.node.run_ok("iptables", &["-t", "nat", "-S"]);
    let jumps: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING") && l.contains(&comment))
        .collect();
    assert_eq!(jumps.len(), 1, "{rules}");
    assert!(
        jumps[0].contains("-s 10.244.12.0/24") && jumps[0].ends_with(&format!("-j {chain}")),
        "{rules}"
    );
    for want in [
        format!("-A {chain} -d 10.244.12.0/24 -j RETURN"),
        format!("-A {chain} -d 10.244.0.0/16 -j RETURN"),
        format!("-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE"),
    ] {
        assert!(
            rules.lines().any(|l| l == want),
            "missing {want:?}:\n{rules}"
        );
    }

    // A second ADD does not duplicate anything.
    let rb = net.add("ctr-b", &b);
    let rules2 = net.node.run_ok("iptables", &["-t", "nat", "-S"]);
    assert_eq!(rules2, rules, "second ADD changed the nat table");

    // Pod -> outside: the "outside" host has no route back to the pod subnet, so the ping only
    // works if the node rewrote the source to its own address.
    let outside = NetNs::new("masqout");
    veth_between(&net.node, "up-node", &outside, "up-out");
    net.node
        .run_ok("ip", &["addr", "add", "198.18.2.1/30", "dev", "up-node"]);
    outside.run_ok("ip", &["addr", "add", "198.18.2.2/30", "dev", "up-out"]);
    ping(&a, "198.18.2.2");
    let counters = net
        .node
        .run_ok("iptables", &["-t", "nat", "-L", &chain, "-v", "-x", "-n"]);
    let masq_pkts: u64 = counters
        .lines()
        .find(|l| l.contains("MASQUERADE"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MASQUERADE counter in {counters}"));
    assert!(masq_pkts >= 1, "{counters}");
    // Pod -> pod stays un-NATed (and works).
    ping(&a, &result_ip(&rb));
    ping(&b, &result_ip(&ra));
    let counters2 = net
        .node
        .run_ok("iptables", &["-t", "nat", "-L", &chain, "-v", "-x", "-n"]);
    let masq_pkts2: u64 = counters2
        .lines()
        .find(|l| l.contains("MASQUERADE"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(
        masq_pkts, masq_pkts2,
        "pod-to-pod traffic was masqueraded:\n{counters2}"
    );

    // The container namespaces got no NAT rules.
    for ns in [&a, &b] {
        let r = ns.run_ok("iptables", &["-t", "nat", "-S"]);
        assert!(!r.contains("netlet"), "{r}");
    }

    net.del("ctr-a", None).ok();
    net.del("ctr-b", None).ok();
    assert!(net.allocations().is_empty());
}
