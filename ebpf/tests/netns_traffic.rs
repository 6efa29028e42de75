//! Real traffic through the attached programs, inside throwaway `nlt-*` namespaces only.
//!
//! ```text
//!  client ns                node ns                         backend ns
//!  c0 10.0.1.2/24 ---- n0 10.0.1.1/24   n1 10.0.2.1/24 ---- b0 10.0.2.2/24
//!                      ingress: svc_nat_fwd                 python3 http.server :8080
//!                                                           python3 UDP echo :5353
//!                      egress:  svc_nat_rev
//! ```
//! `n0` plays the node side of the client pod's veth. The client connects to the VIP
//! 10.96.0.10:80; the node routes the DNATed packet to 10.0.2.2:8080 and the reply is SNATed
//! back on its way out of `n0`. The same for UDP: VIP:53 -> 10.0.2.2:5353 (an echo server).

use integration::netns::veth_between;
use integration::{ChildGuard, NetNs};
use netlet_ebpf::{Proto, ServiceNat};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Stdio;

/// Runs `f` on a fresh thread that has entered `ns`; the thread (and its namespace) ends with
/// `f`, so the test's own threads never leave the host namespace.
fn in_netns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(ns.path()).expect("opening the netns file");
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

const CLIENT_SCRIPT: &str = r#"
import sys, time, urllib.request
err = None
for _ in range(int(sys.argv[2])):
    try:
        body = urllib.request.urlopen(sys.argv[1], timeout=2).read().decode()
        print(body, end="")
        sys.exit(0)
    except Exception as e:
        err = e
        time.sleep(0.2)
print(err, file=sys.stderr)
sys.exit(1)
"#;

/// The `tc filter show` lines of our filters on n0, ingress then egress.
fn filter_lines(node: &NetNs) -> Vec<String> {
    ["ingress", "egress"]
        .iter()
        .flat_map(|hook| {
            node.run_ok("tc", &["filter", "show", "dev", "n0", hook])
                .lines()
                .filter(|l| l.contains("svc_nat_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

const UDP_ECHO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.0.2.2", 5353))
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(b"echo:" + data, addr)
"#;

const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.connect(("10.96.0.10", 53))
for _ in range(20):
    s.send(b"ping")
    try:
        print(s.recv(2048).decode(), end="")
        sys.exit(0)
    except OSError as e:
        err = e
print(err, file=sys.stderr)
sys.exit(1)
"#;

const URL: &str = "http://10.96.0.10:80/hello.txt";

#[test]
fn tcp_connect_to_vip_reaches_backend_through_attached_programs() {
    integration::require_root();
    let client = NetNs::new("svcc");
    let node = NetNs::new("svcn");
    let backend = NetNs::new("svcb");
    veth_between(&client, "c0", &node, "n0");
    veth_between(&node, "n1", &backend, "b0");
    client.run_ok("ip", &["addr", "add", "10.0.1.2/24", "dev", "c0"]);
    client.run_ok("ip", &["route", "add", "default", "via", "10.0.1.1"]);
    node.run_ok("ip", &["addr", "add", "10.0.1.1/24", "dev", "n0"]);
    node.run_ok("ip", &["addr", "add", "10.0.2.1/24", "dev", "n1"]);
    node.sysctl("net.ipv4.ip_forward", "1");
    backend.run_ok("ip", &["addr", "add", "10.0.2.2/24", "dev", "b0"]);
    backend.run_ok("ip", &["route", "add", "default", "via", "10.0.2.1"]);

    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("hello.txt"), "served by backend\n").unwrap();
    let _server = ChildGuard::new(
        backend
            .command("/usr/bin/python3")
            .args(["-m", "http.server", "8080", "--bind", "10.0.2.2"])
            .current_dir(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the backend server"),
    );

    let _udp_server = ChildGuard::new(
        backend
            .command("/usr/bin/python3")
            .args(["-c", UDP_ECHO])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the UDP echo server"),
    );

    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let backends = [(Ipv4Addr::new(10, 0, 2, 2), 8080)];
    let mut first = ServiceNat::load().expect("loading the service NAT object");
    first.set_service(vip, 80, Proto::Tcp, &backends).unwrap();
    in_netns(&node, || first.attach("n0")).expect("attaching in the node namespace");
    let before = filter_lines(&node);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before[0].contains("svc_nat_fwd") && before[1].contains("svc_nat_rev"));
    assert!(before.iter().all(|l| l.contains("pref 256")), "{before:?}");

    // A second loader (a restarted agent) replaces the programs in place instead of stacking.
    let mut nat = ServiceNat::load().expect("loading the service NAT object again");
    nat.set_service(vip, 80, Proto::Tcp, &backends).unwrap();
    nat.set_service(vip, 53, Proto::Udp, &[(Ipv4Addr::new(10, 0, 2, 2), 5353)])
        .unwrap();
    in_netns(&node, || nat.attach("n0")).expect("re-attaching in the node namespace");
    let after = filter_lines(&node);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(before, after, "program ids should have changed");
    drop(first);

    // The filters hold the programs and maps: they keep working without the loader.
    drop(nat);

    let out = client.run("/usr/bin/python3", &["-c", CLIENT_SCRIPT, URL, "50"]);
    assert!(
        out.status.success(),
        "client could not reach the VIP: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "served by backend\n");

    // UDP: a connected socket only accepts the reply if it comes back from VIP:53.
    let out = client.run("/usr/bin/python3", &["-c", UDP_CLIENT]);
    assert!(
        out.status.success(),
        "no UDP reply from the VIP: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo:ping");

    in_netns(&node, || netlet_ebpf::detach("n0")).expect("detaching");
    assert_eq!(filter_lines(&node), Vec::<String>::new());
    // Without the programs the VIP is unreachable (the node has no route for it).
    let out = client.run("/usr/bin/python3", &["-c", CLIENT_SCRIPT, URL, "1"]);
    assert!(!out.status.success(), "VIP reachable without the datapath?");
    // Detaching twice is fine.
    in_netns(&node, || netlet_ebpf::detach("n0")).expect("detaching again");
}
