//! netlet with the reference plugins: chained after it (portmap, tuning, bandwidth read our prevResult) and
//! delegated to from it (host-local as the IPAM plugin).

mod common;

use common::*;
use integration::{netns::veth_between, ChildGuard, NetNs};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;

/// A TCP server answering every connection on `port` with `GREETING`.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello-from-netlet-pod\n")
    c.close()
"#;

/// Connects to argv[1]:argv[2] and prints what the server says.
const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(c.recv(100).decode().strip())
"#;

const GREETING: &str = "hello-from-netlet-pod";

/// Env of a chained plugin invocation for container `id` in `ns`.
fn chain_env(id: &str, ns: &NetNs) -> Vec<(String, String)> {
    vec![
        ("CNI_CONTAINERID".into(), id.into()),
        ("CNI_IFNAME".into(), IFNAME.into()),
        ("CNI_NETNS".into(), ns.path().display().to_string()),
    ]
}

fn run_chained(net: &Net, plugin: &str, cmd: &str, id: &str, ns: &NetNs, conf: &Value) -> Reply {
    let env = chain_env(id, ns);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let program = if plugin == "netlet" {
        PLUGIN.to_string()
    } else {
        ref_plugin(plugin)
    };
    net.invoke(&program, cmd, &env, conf)
}

fn connect(client: &NetNs, ip: &str, port: &str) -> Result<String, String> {
    let out = client.run("/usr/bin/python3", &["-c", CLIENT, ip, port]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn chaining_with_portmap() {
    let name = "t-chain";
    let net = Net::new(
        "chain",
        bridge_conf("1.0.0", name, "nlbr-chain", "10.91.5.0/24"),
    );
    let cont = NetNs::new("chainc");
    let client = NetNs::new("chaincl");
    veth_between(&net.node, "up-node", &client, "up-client");
    net.node
        .run_ok("ip", &["addr", "add", "198.18.1.1/30", "dev", "up-node"]);
    client.run_ok("ip", &["addr", "add", "198.18.1.2/30", "dev", "up-client"]);
    let id = "ctr-chain";

    // 1. netlet.
    let ours = run_chained(&net, "netlet", "ADD", id, &cont, &net.conf);
    let ours = ours.ok().clone();
    assert_eq!(ours["cniVersion"], "1.0.0");
    let pod_ip = result_ip(&ours);

    // 2. portmap, fed our result.
    let pm_conf = json!({
        "cniVersion": "1.0.0", "name": name, "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}
        ]},
        "prevResult": ours,
    });
    let pm = run_chained(&net, "portmap", "ADD", id, &cont, &pm_conf);
    let pm_out = pm.ok().clone();
    for k in ["interfaces", "ips", "routes"] {
        assert_eq!(pm_out[k], ours[k], "portmap passes our {k} through");
    }

    // 3. tuning, fed portmap's result.
    let before = cont.run_ok("cat", &["/proc/sys/net/core/somaxconn"]);
    assert_ne!(before.trim(), "500");
    let tu_conf = json!({
        "cniVersion": "1.0.0", "name": name, "type": "tuning",
        "sysctl": {"net.core.somaxconn": "500"},
        "prevResult": pm_out,
    });
    let tu = run_chained(&net, "tuning", "ADD", id, &cont, &tu_conf);
    let tu_out = tu.ok().clone();
    assert_eq!(tu_out["ips"], ours["ips"]);
    assert_eq!(
        cont.run_ok("cat", &["/proc/sys/net/core/somaxconn"]).trim(),
        "500",
        "tuning applied the sysctl in the container namespace"
    );
    // 4. bandwidth, fed tuning's result: it finds the host veth through our result's
    // interfaces (the one without a sandbox whose peer is the container's interface).
    let bw_conf = json!({
        "cniVersion": "1.0.0", "name": name, "type": "bandwidth",
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 1_000_000,
                                        "egressRate": 8_000_000, "egressBurst": 1_000_000}},
        "prevResult": tu_out,
    });
    let bw = run_chained(&net, "bandwidth", "ADD", id, &cont, &bw_conf);
    let bw_out = bw.ok().clone();
    assert_eq!(bw_out["ips"], ours["ips"]);
    let host_veth = ours["interfaces"][1]["name"].as_str().unwrap().to_string();
    let qdisc = net.node.run_ok("tc", &["qdisc", "show", "dev", &host_veth]);
    assert!(
        qdisc.contains("tbf"),
        "bandwidth shaped {host_veth}: {qdisc}"
    );
    // The chain's final result still passes our CHECK.
    let chk = json!({"prevResult": tu_out});
    run_chained(&net, "netlet", "CHECK", id, &cont, &merged(&net.conf, chk)).ok();

    // The port mapping works: client -> node:18080 -> pod:8080.
    let mut server = cont.command("/usr/bin/python3");
    server
        .args(["-c", SERVER, "8080"])
        .stdout(std::process::Stdio::piped());
    let mut server = server.spawn().expect("starting server");
    let stdout = server.stdout.take().unwrap();
    let server = ChildGuard::new(server);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "server did not start");
    ping(&client, "198.18.1.1");
    let mut got = Err(String::new());
    // Bounded retry, not a settle delay: the first SYN can race portmap's freshly loaded DNAT
    // rules and the bridge port leaving its initial state; three tries 300 ms apart at most.
    for _ in 0..3 {
        got = connect(&client, "198.18.1.1", "18080");
        if got.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let nat = net.node.run_ok("iptables", &["-t", "nat", "-S"]);
    assert_eq!(
        got.as_deref(),
        Ok(GREETING),
        "port mapping to {pod_ip}:8080 failed; node nat table:\n{nat}"
    );
    assert!(nat.contains(&pod_ip), "{nat}");
    drop(server);

    // DEL in reverse order, every plugin succeeds.
    let with_prev = |c: &Value, prev: &Value| merged(c, json!({"prevResult": prev}));
    run_chained(
        &net,
        "bandwidth",
        "DEL",
        id,
        &cont,
        &with_prev(&bw_conf, &bw_out),
    )
    .ok();
    run_chained(
        &net,
        "tuning",
        "DEL",
        id,
        &cont,
        &with_prev(&tu_conf, &tu_out),
    )
    .ok();
    run_chained(
        &net,
        "portmap",
        "DEL",
        id,
        &cont,
        &with_prev(&pm_conf, &tu_out),
    )
    .ok();
    run_chained(
        &net,
        "netlet",
        "DEL",
        id,
        &cont,
        &with_prev(&net.conf, &tu_out),
    )
    .ok();
    let nat = net.node.run_ok("iptables", &["-t", "nat", "-S"]);
    assert!(
        !nat.contains(&pod_ip),
        "portmap DEL removed its DNAT: {nat}"
    );
    assert!(net.allocations().is_empty());
    net.assert_veth_released(id, Some(&cont));
    assert!(
        connect(&client, "198.18.1.1", "18080").is_err(),
        "port closed"
    );
}

#[test]
fn delegated_ipam_host_local() {
    // Debian's host-local speaks CNI up to 1.0.0.
    let mut conf = bridge_conf("1.0.0", "t-hl", "nlbr-hl", "10.91.6.0/24");
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.91.6.0/24", "gateway": "10.91.6.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    });
    let net = Net::new("hl", conf);
    let a = NetNs::new("hla");
    let b = NetNs::new("hlb");
    let ra = net.add("ctr-hl-a", &a);
    let rb = net.add("ctr-hl-b", &b);
    for r in [&ra, &rb] {
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["ips"][0]["gateway"], "10.91.6.1");
        assert_eq!(r["ips"][0]["interface"], 2);
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
    }
    let allocs = net.allocations();
    let ip_a: IpAddr = result_ip(&ra).parse().unwrap();
    let ip_b: IpAddr = result_ip(&rb).parse().unwrap();
    assert_eq!(allocs.len(), 2, "{allocs:?}");
    assert!(
        allocs[&ip_a].starts_with("ctr-hl-a"),
        "host-local wrote {:?}",
        allocs[&ip_a]
    );
    assert!(allocs[&ip_b].starts_with("ctr-hl-b"));
    ping(&a, &ip_b.to_string());
    ping(&b, "10.91.6.1");
    net.check("ctr-hl-a", &a, &ra).ok();

    net.del("ctr-hl-a", Some(&a.path())).ok();
    let allocs = net.allocations();
    assert_eq!(allocs.keys().copied().collect::<Vec<_>>(), vec![ip_b]);
    net.assert_veth_released("ctr-hl-a", Some(&a));
    net.del("ctr-hl-a", Some(&a.path())).ok();
    net.del("ctr-hl-b", None).ok();
    assert!(net.allocations().is_empty());
    net.assert_no_veths_left();

    // A failing IPAM plugin's error reaches the runtime with its code, and nothing is left.
    let bad = merged(
        &net.conf,
        json!({"ipam": {"type": "host-local", "dataDir": net.data_dir(),
            "ranges": [[{"subnet": "10.91.6.0/24", "rangeStart": "10.91.7.1"}]]}}),
    );
    let r = net.call("ADD", "ctr-hl-bad", Some(&a.path()), &bad);
    assert_ne!(r.code, 0);
    assert!(r.json["code"].as_u64().is_some(), "{}", r.stdout);
    assert!(r.stdout.contains("host-local"), "{}", r.stdout);
    assert!(!link_exists(&a, IFNAME));
    assert!(net.netlet_veths().is_empty());
}
