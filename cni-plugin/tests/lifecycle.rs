//! CHECK, DEL and GC against real kernel state: CHECK notices tampering, DEL is idempotent and
//! works without the container namespace, GC releases exactly what is not valid.

mod common;

use common::*;
use integration::NetNs;
use std::path::Path;

#[test]
fn check_passes_then_fails_after_tampering() {
    let net = Net::new(
        "check",
        bridge_conf("1.1.0", "t-check", "nlbr-check", "10.91.2.0/24"),
    );
    let c = NetNs::new("checkc");
    let r = net.add("ctr-check", &c);
    let r2 = net.check("ctr-check", &c, &r);
    assert_eq!(r2.ok(), &serde_json::Value::Null, "CHECK prints nothing");
    assert!(r2.stdout.trim().is_empty(), "{}", r2.stdout);

    let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
    c.run_ok("ip", &["addr", "del", &addr, "dev", IFNAME]);
    let bad = net.check("ctr-check", &c, &r);
    let msg = bad.err(100);
    assert!(msg.contains("CHECK"), "{}", bad.stdout);
    assert!(
        bad.stdout.contains(&addr) || bad.stdout.contains("route"),
        "error names what is missing: {}",
        bad.stdout
    );
    assert_eq!(bad.json["cniVersion"], "1.1.0");

    // CHECK also fails when the IPAM no longer holds the address.
    c.run_ok("ip", &["addr", "add", &addr, "dev", IFNAME]);
    net.del("ctr-check", None).ok();
    let gone = net.check("ctr-check", &c, &r);
    gone.err(100);
}

#[test]
fn del_twice_and_del_without_netns_succeed() {
    let net = Net::new(
        "del",
        bridge_conf("1.1.0", "t-del", "nlbr-del", "10.91.3.0/24"),
    );
    let c = NetNs::new("delc");
    let r = net.add("ctr-del", &c);
    let ip: std::net::IpAddr = result_ip(&r).parse().unwrap();
    assert_eq!(
        net.allocations().get(&ip).map(String::as_str),
        Some("ctr-del\r\neth0"),
        "host-local layout"
    );
    assert!(link_exists(&net.node, &net.host_veth("ctr-del")));

    // DEL twice back to back (a runtime retrying), then once more after everything settled.
    let prev = common::merged(&net.conf, serde_json::json!({"prevResult": r}));
    for _ in 0..2 {
        let d = net.call("DEL", "ctr-del", Some(&c.path()), &prev);
        d.ok();
        assert!(
            d.stdout.trim().is_empty(),
            "DEL prints nothing: {}",
            d.stdout
        );
        assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    }
    net.assert_veth_released("ctr-del", Some(&c));
    net.call("DEL", "ctr-del", Some(&c.path()), &prev).ok();

    // A second attachment whose namespace disappears before DEL.
    let gone = NetNs::new("delgone");
    net.add("ctr-gone", &gone);
    let gone_path = gone.path();
    drop(gone);
    assert!(!gone_path.exists());
    assert_eq!(net.allocations().len(), 1);
    net.del("ctr-gone", Some(&gone_path)).ok();
    assert!(net.allocations().is_empty());
    // The kernel tears a namespace down asynchronously; DEL or that teardown removes the pair.
    wait_until("host veth of ctr-gone removed", || {
        !link_exists(&net.node, &net.host_veth("ctr-gone"))
    });

    // DEL naming a namespace that never existed, and DEL with no CNI_NETNS at all.
    let third = NetNs::new("delthird");
    net.add("ctr-third", &third);
    net.del(
        "ctr-third",
        Some(Path::new("/var/run/netns/nlt-never-existed")),
    )
    .ok();
    assert!(net.allocations().is_empty());
    net.assert_veth_released("ctr-third", Some(&third));
    net.add("ctr-fourth", &third);
    net.del("ctr-fourth", None).ok();
    assert!(net.allocations().is_empty());
    net.assert_veth_released("ctr-fourth", Some(&third));
    net.del("ctr-never-added", None).ok();
    net.assert_no_veths_left();
}

#[test]
fn gc_releases_leaked_allocations_and_veths() {
    let net = Net::new(
        "gc",
        bridge_conf("1.1.0", "t-gc", "nlbr-gc", "10.91.4.0/24"),
    );
    let ids = ["ctr-keep", "ctr-leak1", "ctr-leak2"];
    let nss: Vec<NetNs> = ids.iter().map(|_| NetNs::new("gcc")).collect();
    let results: Vec<_> = ids
        .iter()
        .zip(&nss)
        .map(|(id, ns)| net.add(id, ns))
        .collect();
    assert_eq!(net.allocations().len(), 3);
    assert_eq!(net.netlet_veths().len(), 3);

    net.gc(&["ctr-keep"]).ok();

    let left = net.allocations();
    let keep_ip: std::net::IpAddr = result_ip(&results[0]).parse().unwrap();
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), vec![keep_ip]);
    assert_eq!(left[&keep_ip], "ctr-keep\r\neth0");
    for (id, ns) in ids.iter().zip(&nss).skip(1) {
        net.assert_veth_released(id, Some(ns));
    }
    let veths = net.netlet_veths();
    assert_eq!(veths.len(), 1, "{veths:?}");
    assert_eq!(veths[0].name, net.host_veth("ctr-keep"));
    assert_eq!(veths[0].master.as_deref(), Some("nlbr-gc"));
    ping(&nss[0], "10.91.4.1");
    net.check("ctr-keep", &nss[0], &results[0]).ok();

    // GC is idempotent, and an empty list releases the rest.
    net.gc(&["ctr-keep"]).ok();
    assert_eq!(net.allocations().len(), 1);
    net.gc(&[]).ok();
    assert!(net.allocations().is_empty());
    assert!(net.stray_store_files().is_empty());
    net.assert_no_veths_left();
}
