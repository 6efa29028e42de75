//! A one-node cluster in throwaway namespaces, and clients that talk from inside them.
//!
//! ```text
//!   pod0 10.244.1.10 ┐                 ┌ client pod 10.244.200.2/30 (default via node)
//!   pod1 10.244.1.11 ├─ br0 ── node ───┤
//!   pod2 10.244.1.12 ┘ 10.244.1.1/24   └ external host 192.168.50.2/24 (default via node)
//!                      node IP 192.168.50.1, default route via the external host
//! ```
//!
//! Service traffic from the client pod and the external host is routed by the node namespace,
//! so it passes nat PREROUTING and filter FORWARD there, where the backend under test installs
//! its rules. Every pod runs a server answering with its own name and the peer address it sees.

use integration::netns::veth_between;
use integration::{ChildGuard, NetNs};
use netlet_proxy::ProxyConfig;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

/// How long a client waits for a connection or an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// The node's name; pods 0 and 1 run on it, pod 2 claims another node.
pub const NODE: &str = "node-a";
/// The node's address on the "LAN" (node ports answer here).
pub const NODE_IP: &str = "192.168.50.1";
/// The node's address on the pod bridge: what masqueraded traffic comes from.
pub const NODE_BRIDGE_IP: &str = "10.244.1.1";
/// The client pod's address.
pub const CLIENT_IP: &str = "10.244.200.2";
/// The external host's address.
pub const EXTERNAL_IP: &str = "192.168.50.2";
/// TCP port of every pod's server (greets, then echoes).
pub const TCP_PORT: u16 = 8080;
/// UDP port of every pod's server (answers each datagram).
pub const UDP_PORT: u16 = 5353;

const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080))
t.listen(128)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 5353))
def serve(c, a):
    try:
        c.sendall(("%s %s\n" % (name, a[0])).encode())
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()
def udp():
    while True:
        d, a = u.recvfrom(4096)
        u.sendto(("%s %s" % (name, a[0])).encode(), a)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, a = t.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
"#;

/// The namespaces and servers of one test; everything goes away on drop.
pub struct Topology {
    // Servers first: they die before their namespaces do.
    _servers: Vec<ChildGuard>,
    /// Where the backend installs its rules.
    pub node: NetNs,
    /// The endpoint pods, `pod0`…`pod2`.
    pub pods: Vec<NetNs>,
    /// A pod without endpoints, the usual client.
    pub client: NetNs,
    /// A host outside the cluster network.
    pub external: NetNs,
}

/// The address of pod `i`.
pub fn pod_ip(i: usize) -> String {
    format!("10.244.1.{}", 10 + i)
}

impl Topology {
    /// Builds the namespaces, links and routes, and starts the pods' servers.
    pub fn new() -> Self {
        let node = NetNs::new("node");
        node.sysctl("net.ipv4.ip_forward", "1");
        node.run_ok("ip", &["link", "add", "br0", "type", "bridge"]);
        node.run_ok(
            "ip",
            &["addr", "add", &format!("{NODE_BRIDGE_IP}/24"), "dev", "br0"],
        );
        node.run_ok("ip", &["link", "set", "br0", "up"]);
        let mut pods = Vec::new();
        for i in 0..3 {
            let pod = NetNs::new(&format!("pod{i}"));
            let port = format!("vp{i}");
            veth_between(&node, &port, &pod, "eth0");
            node.run_ok("ip", &["link", "set", &port, "master", "br0"]);
            // As netlet-cni sets it: with br_netfilter a pod reaching itself through its
            // Service is DNATed while bridged and must go back out the port it came in on.
            node.run_ok(
                "ip",
                &[
                    "link",
                    "set",
                    &port,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ],
            );
            pod.run_ok(
                "ip",
                &["addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"],
            );
            pod.run_ok("ip", &["route", "add", "default", "via", NODE_BRIDGE_IP]);
            pods.push(pod);
        }

        let client = NetNs::new("client");
        veth_between(&node, "vc0", &client, "eth0");
        node.run_ok("ip", &["addr", "add", "10.244.200.1/30", "dev", "vc0"]);
        client.run_ok(
            "ip",
            &["addr", "add", &format!("{CLIENT_IP}/30"), "dev", "eth0"],
        );
        client.run_ok("ip", &["route", "add", "default", "via", "10.244.200.1"]);

        let external = NetNs::new("ext");
        veth_between(&node, "vx0", &external, "eth0");
        node.run_ok(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", "vx0"],
        );
        external.run_ok(
            "ip",
            &["addr", "add", &format!("{EXTERNAL_IP}/24"), "dev", "eth0"],
        );
        external.run_ok("ip", &["route", "add", "default", "via", NODE_IP]);
        // The node's default gateway is the external host (which does not forward): service
        // addresses without a rule still route, as on a real node, so filter FORWARD sees them.
        node.run_ok("ip", &["route", "add", "default", "via", EXTERNAL_IP]);

        let mut starting = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let mut child = pod
                .command("python3")
                .args(["-c", SERVER, &format!("pod{i}")])
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting python3 server");
            let out = child.stdout.take().expect("piped stdout");
            starting.push((ChildGuard::new(child), out));
        }
        let mut servers = Vec::new();
        for (guard, out) in starting {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready", "pod server did not start");
            servers.push(guard);
        }
        Self {
            _servers: servers,
            node,
            pods,
            client,
            external,
        }
    }

    /// The proxy config matching this topology.
    pub fn config(&self) -> ProxyConfig {
        ProxyConfig {
            node_ips: vec![NODE_IP.parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..ProxyConfig::new(NODE)
        }
    }
}

/// Runs `f` on a thread that has entered `ns`'s network namespace; sockets it creates stay
/// in that namespace wherever they are used afterwards.
pub fn in_ns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    let path = ns.path();
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = std::fs::File::open(&path).expect("opening netns file");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("client thread panicked")
    })
}

/// The answer of a pod server: who answered and whom it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The pod's name (`pod0`…).
    pub pod: String,
    /// The client address the pod saw.
    pub peer: IpAddr,
}

fn parse_hello(s: &str) -> Hello {
    let (pod, peer) = s
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("bad hello {s:?}"));
    Hello {
        pod: pod.to_string(),
        peer: peer.parse().unwrap(),
    }
}

/// An open TCP connection to a service.
pub struct Conn {
    stream: TcpStream,
    /// The greeting.
    pub hello: Hello,
}

impl Conn {
    /// Sends a line and checks it comes back.
    pub fn echo(&mut self, text: &str) -> std::io::Result<()> {
        self.stream.write_all(format!("{text}\n").as_bytes())?;
        let mut buf = vec![0; text.len() + 1];
        self.stream.read_exact(&mut buf)?;
        assert_eq!(String::from_utf8_lossy(&buf).trim(), text);
        Ok(())
    }
}

/// Opens a TCP connection (inside the calling thread's namespace) and reads the greeting.
pub fn tcp_connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(Conn {
        hello: parse_hello(&line),
        stream,
    })
}

/// `n` fresh TCP connections from `ns` to `addr`, each closed after its greeting.
pub fn tcp_hellos(ns: &NetNs, addr: SocketAddr, n: usize) -> Vec<Hello> {
    in_ns(ns, || {
        (0..n)
            .map(|i| match tcp_connect(addr) {
                Ok(c) => c.hello,
                Err(e) => panic!("connection {i} to {addr}: {e}"),
            })
            .collect()
    })
}

/// One datagram from a fresh socket (so a fresh conntrack entry); the answer or the error.
pub fn udp_ask(addr: SocketAddr) -> std::io::Result<Hello> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(addr)?;
    sock.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    sock.send(b"hi")?;
    let mut buf = [0; 512];
    let n = sock.recv(&mut buf)?;
    Ok(parse_hello(&String::from_utf8_lossy(&buf[..n])))
}
