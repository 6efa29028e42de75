//! Two containers on one netlet bridge reach each other and their gateway, and the ADD result
//! describes exactly what was configured in the kernel.

mod common;

use common::*;
use integration::NetNs;

#[test]
fn two_containers_ping_each_other_and_gateway() {
    let net = Net::new(
        "ping",
        bridge_conf("1.1.0", "t-ping", "nlbr-ping", "10.91.1.0/24"),
    );
    let a = NetNs::new("pinga");
    let b = NetNs::new("pingb");
    let ra = net.add("ctr-a", &a);
    let rb = net.add("ctr-b", &b);

    for (id, ns, r) in [("ctr-a", &a, &ra), ("ctr-b", &b, &rb)] {
        assert_eq!(r["cniVersion"], "1.1.0", "{r}");
        let ifaces = r["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 3, "{r}");
        assert_eq!(ifaces[0]["name"], "nlbr-ping");
        assert_eq!(ifaces[1]["name"], net.host_veth(id).as_str());
        assert!(ifaces[0].get("sandbox").is_none() && ifaces[1].get("sandbox").is_none());
        assert_eq!(ifaces[2]["name"], IFNAME);
        assert_eq!(
            ifaces[2]["sandbox"].as_str(),
            Some(ns.path().to_str().unwrap())
        );
        let ips = r["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "{r}");
        assert_eq!(ips[0]["interface"], 2);
        assert_eq!(ips[0]["gateway"], "10.91.1.1");
        assert!(ips[0].get("version").is_none(), "no ip version in 1.1.0");
        let addr = ips[0]["address"].as_str().unwrap();
        assert!(
            addr.starts_with("10.91.1.") && addr.ends_with("/24"),
            "{addr}"
        );
        let routes = r["routes"].as_array().expect("routes");
        assert!(
            routes
                .iter()
                .any(|rt| rt["dst"] == "0.0.0.0/0" && rt["gw"] == "10.91.1.1"),
            "no default route in {r}"
        );

        // The container matches the result: address, MAC, default route.
        assert_eq!(addrs_v4(ns, IFNAME), vec![addr.to_string()]);
        let link = ip_json(ns, &["link", "show", "dev", IFNAME]);
        assert_eq!(link[0]["address"], ifaces[2]["mac"], "container MAC");
        assert!(
            link[0]["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "UP"),
            "{link}"
        );
        let def = ip_json(ns, &["-4", "route", "show", "default"]);
        assert_eq!(def[0]["gateway"], "10.91.1.1", "{def}");
        assert_eq!(def[0]["dev"], IFNAME, "{def}");

        // The node side: a bridge port with our alias and hairpin on, and the matching MAC.
        let hv = veths(&net.node)
            .into_iter()
            .find(|v| v.name == net.host_veth(id))
            .unwrap_or_else(|| panic!("host veth {} missing", net.host_veth(id)));
        assert_eq!(hv.master.as_deref(), Some("nlbr-ping"));
        assert_eq!(hv.alias.as_deref(), Some(net.alias(id).as_str()));
        assert_eq!(hv.hairpin, Some(true));
        let hl = ip_json(&net.node, &["link", "show", "dev", &hv.name]);
        assert_eq!(hl[0]["address"], ifaces[1]["mac"], "host veth MAC");
    }
    // The bridge holds the gateway address and its MAC is the result's.
    assert_eq!(
        addrs_v4(&net.node, "nlbr-ping"),
        vec!["10.91.1.1/24".to_string()]
    );
    let br = ip_json(&net.node, &["link", "show", "dev", "nlbr-ping"]);
    assert_eq!(br[0]["address"], ra["interfaces"][0]["mac"]);
    assert_eq!(ra["interfaces"][0]["mac"], rb["interfaces"][0]["mac"]);
    assert_eq!(
        net.node
            .run_ok("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1",
        "forwarding enabled in the node namespace"
    );

    let (ip_a, ip_b) = (result_ip(&ra), result_ip(&rb));
    assert_ne!(ip_a, ip_b);
    ping(&a, &ip_b);
    ping(&a, "10.91.1.1");
    ping(&b, &ip_a);
    ping(&b, "10.91.1.1");
    ping(&net.node, &ip_a);

    assert_eq!(net.allocations().len(), 2);
    net.del("ctr-a", Some(&a.path())).ok();
    net.del("ctr-b", Some(&b.path())).ok();
    assert!(net.allocations().is_empty());
    net.assert_no_veths_left();
    assert!(!net.log().is_empty(), "logFile was written");
}
