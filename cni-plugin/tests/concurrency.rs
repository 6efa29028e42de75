//! Many plugin processes at once, and plugin processes killed half-way: the store lock keeps
//! addresses distinct, and GC cleans whatever a killed ADD left behind.

mod common;

use common::*;
use integration::NetNs;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

#[test]
fn hundred_concurrent_adds_get_distinct_ips() {
    const N: usize = 100;
    let net = Net::new(
        "hundred",
        bridge_conf("1.1.0", "t-hundred", "nlbr-hundred", "10.92.0.0/24"),
    );
    let nss: Vec<NetNs> = (0..N).map(|_| NetNs::new("h")).collect();
    let ids: Vec<String> = (0..N).map(|i| format!("ctr-{i:03}")).collect();

    // Spawn all, then wait for all: 100 plugin processes race for the bridge and the store.
    let children: Vec<_> = ids
        .iter()
        .zip(&nss)
        .map(|(id, ns)| net.spawn_add(id, ns))
        .collect();
    let replies: Vec<Reply> = children.into_iter().map(finish).collect();

    let mut ips = BTreeSet::new();
    for (id, r) in ids.iter().zip(&replies) {
        let v = r.ok();
        assert_eq!(v["ips"][0]["gateway"], "10.92.0.1", "{id}: {v}");
        let ip: IpAddr = result_ip(v).parse().unwrap();
        assert!(ips.insert(ip), "{ip} handed out twice");
    }
    assert_eq!(ips.len(), N);
    let allocs = net.allocations();
    assert_eq!(allocs.len(), N);
    assert_eq!(allocs.keys().copied().collect::<BTreeSet<_>>(), ips);
    for (id, r) in ids.iter().zip(&replies) {
        let ip: IpAddr = result_ip(&r.json).parse().unwrap();
        assert_eq!(allocs[&ip], format!("{id}\r\neth0"));
    }
    assert_eq!(net.netlet_veths().len(), N);
    assert_eq!(
        addrs_v4(&net.node, "nlbr-hundred"),
        vec!["10.92.0.1/24".to_string()],
        "one gateway address despite the race"
    );
    // A few of them actually work.
    for i in [0, N / 2, N - 1] {
        ping(&nss[i], "10.92.0.1");
    }
    ping(&nss[1], &result_ip(&replies[N - 2].json));

    // Concurrent DELs release everything.
    let dels: Vec<_> = ids
        .iter()
        .map(|id| {
            net.spawn(
                PLUGIN,
                "DEL",
                &[("CNI_CONTAINERID", id), ("CNI_IFNAME", IFNAME)],
                &net.conf,
            )
        })
        .collect();
    for d in dels {
        finish(d).ok();
    }
    assert!(net.allocations().is_empty());
    assert!(net.stray_store_files().is_empty());
    net.assert_no_veths_left();
}

#[test]
fn kill_during_add_then_gc_leaves_no_leak() {
    const N: u64 = 20;
    let net = Net::new(
        "kill",
        bridge_conf("1.1.0", "t-kill", "nlbr-kill", "10.92.1.0/24"),
    );
    let nss: Vec<NetNs> = (0..N).map(|_| NetNs::new("k")).collect();
    // Calibrate: kill delays spread from 0 to 1.5 times a normal ADD (at least i * 300 µs), so
    // some ADDs finish and the others die at different points of the way.
    let warm = NetNs::new("kwarm");
    let t = std::time::Instant::now();
    net.add("ctr-warm", &warm);
    let add_time = t.elapsed();
    net.del("ctr-warm", None).ok();
    drop(warm);
    let step = Duration::from_micros(300).max(add_time * 3 / 2 / N as u32);
    let mut completed = 0;
    let mut killed = 0;
    for (i, ns) in nss.iter().enumerate() {
        let mut child = net.spawn_add(&format!("ctr-kill-{i}"), ns);
        // The delay is the point of the test, not a wait: kill ADD number i after i steps so
        // the kills land at different stages of ADD (before IPAM, mid-netlink, after).
        std::thread::sleep(step * i as u32);
        let _ = child.kill(); // SIGKILL; by PID, a process this test started
        let r = finish(child);
        if r.code == 0 {
            completed += 1;
        } else {
            killed += 1;
            r.assert_no_panic();
        }
    }
    assert!(killed > 0, "no ADD was killed (step {step:?})");
    eprintln!(
        "ADD takes {add_time:?}, kill step {step:?}: {completed} ADDs completed, {killed} killed; \
         {} allocations, {} aliased veths, {} veths",
        net.allocations().len(),
        net.netlet_veths().len(),
        veths(&net.node).len()
    );

    // The runtime forgot all of them: GC must release everything.
    net.gc(&[]).ok();
    assert!(
        net.allocations().is_empty(),
        "allocations leaked: {:?}",
        net.allocations()
    );
    assert!(
        net.stray_store_files().is_empty(),
        "{:?}",
        net.stray_store_files()
    );
    net.assert_no_veths_left();
    // Including veths killed between creation and aliasing: GC recognises them by name shape
    // on the network's bridge. Deletion is handed to reapers, so wait (bounded) for it.
    wait_until("GC removed every veth, aliased or not", || {
        let left = veths(&net.node);
        if !left.is_empty() {
            eprintln!("left after GC: {left:?}");
        }
        left.is_empty()
    });
    drop(nss);
    wait_until("no veths left in the node namespace", || {
        veths(&net.node).is_empty()
    });

    // The network still works after all that.
    let fresh = NetNs::new("kfresh");
    let r = net.add("ctr-fresh", &fresh);
    ping(&fresh, "10.92.1.1");
    net.del("ctr-fresh", None).ok();
    assert!(r["ips"][0]["address"].is_string());
    assert!(net.allocations().is_empty());
}
