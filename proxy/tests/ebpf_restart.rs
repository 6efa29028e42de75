//! A real `netlet-proxy --backend ebpf` process killed with SIGKILL: the datapath it attached
//! keeps serving an established connection and new service traffic with no process at all, and
//! a new process re-adopts the pinned maps (the established connection survives its first
//! sync, which it would not if the conntrack map had been recreated) and programs new
//! Services. Runs in the conformance topology (`conformance/topology.rs`) with our apiserver
//! on the node namespace's loopback; needs root and clang-19.
//!
//! The proxy is started with `nsenter --net` rather than `ip netns exec`: the latter gives the
//! process a private mount namespace, so its bpffs mount (and the pins) would die with it.

#[macro_use]
#[allow(unused_macros)]
mod conformance;
mod support;

use conformance::topology::{in_ns, tcp_connect, tcp_hellos, Topology, NODE};
use conformance::{service, slice};
use integration::{ChildGuard, NetNs};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Our apiserver in the node namespace, and the files of this test.
struct Api {
    dir: tempfile::TempDir,
    _server: ChildGuard,
}

impl Api {
    fn start(node: &NetNs) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let child = node
            .command(&support::apiserver_bin().display().to_string())
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start netlet-control-plane");
        let api = Self {
            dir,
            _server: ChildGuard::new(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !api.kubectl(node, &["get", "services", "-A"]).0 {
            assert!(
                Instant::now() < deadline,
                "apiserver not serving within 20s; log:\n{}",
                api.read("server.log")
            );
            std::thread::sleep(Duration::from_millis(100)); // polling the spawned apiserver: no readiness event
        }
        api
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn kubectl(&self, node: &NetNs, args: &[&str]) -> (bool, String) {
        let out = node
            .command("kubectl")
            .env("HOME", self.dir.path())
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn apply(&self, node: &NetNs, name: &str, mut obj: Value, api_version: &str, kind: &str) {
        obj["apiVersion"] = api_version.into();
        obj["kind"] = kind.into();
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&obj).unwrap()).unwrap();
        let (ok, err) = self.kubectl(node, &["apply", "-f", &path.display().to_string()]);
        assert!(ok, "kubectl apply {name}: {err}");
    }

    /// Starts `netlet-proxy --backend ebpf` in `node`'s network namespace only.
    fn proxy(&self, node: &NetNs, state: &Path, log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log");
        Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg(env!("CARGO_BIN_EXE_netlet-proxy"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["--backend", "ebpf", "--node-name", NODE])
            .args([
                "--cluster-cidr",
                "10.244.0.0/16",
                "--min-sync-interval-ms",
                "100",
            ])
            .arg("--ebpf-state-dir")
            .arg(state)
            .args(["--ebpf-interface", "vp*", "--ebpf-interface", "vc0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start netlet-proxy")
    }
}

/// Connects from the client pod until a connection to `vip` goes through (each attempt is
/// bounded by CLIENT_TIMEOUT; before the proxy programs the service a SYN is never answered).
fn wait_reachable(topo: &Topology, vip: SocketAddr, api: &Api, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match in_ns(&topo.client, || tcp_connect(vip)) {
            Ok(_) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{vip} not reachable within 30s ({e}); proxy log:\n{}",
                api.read(log)
            ),
        }
    }
}

#[test]
fn sigkilled_proxy_leaves_traffic_flowing_and_a_new_process_readopts() {
    let topo = Topology::new();
    let api = Api::start(&topo.node);
    // Under the conformance tests' state base, so their sweep unmounts it if this test dies.
    let state = std::env::temp_dir()
        .join("netlet-ebpf-conformance")
        .join(topo.node.name());
    let pods = [(0, NODE), (1, NODE), (2, "node-b")];
    let web = service("web", "10.96.0.10", serde_json::json!({}));
    api.apply(&topo.node, "web", web, "v1", "Service");
    api.apply(
        &topo.node,
        "web-slice",
        slice("web", &pods),
        "discovery.k8s.io/v1",
        "EndpointSlice",
    );

    let first = ChildGuard::new(api.proxy(&topo.node, &state, "proxy1.log"));
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    wait_reachable(&topo, vip, &api, "proxy1.log");
    let mut conn = in_ns(&topo.client, || tcp_connect(vip)).expect("connect");

    // SIGKILL (Child::kill), no chance to clean up.
    let mut child = first.into_inner();
    child.kill().expect("SIGKILL the proxy");
    child.wait().expect("reap the proxy");

    conn.echo("with no proxy process")
        .expect("established flow survives SIGKILL");
    assert_eq!(
        tcp_hellos(&topo.client, vip, 5).len(),
        5,
        "new connections to the service keep working with no proxy process"
    );

    // A Service created while no proxy runs, programmed by the next process.
    let other = service("other", "10.96.0.30", serde_json::json!({}));
    api.apply(&topo.node, "other", other, "v1", "Service");
    api.apply(
        &topo.node,
        "other-slice",
        slice("other", &[(1, NODE)]),
        "discovery.k8s.io/v1",
        "EndpointSlice",
    );
    let other_vip: SocketAddr = "10.96.0.30:80".parse().unwrap();
    assert!(
        in_ns(&topo.client, || tcp_connect(other_vip)).is_err(),
        "nothing programs the new Service yet"
    );
    let second = ChildGuard::new(api.proxy(&topo.node, &state, "proxy2.log"));
    wait_reachable(&topo, other_vip, &api, "proxy2.log");
    conn.echo("after the new process synced")
        .expect("the new process re-adopted the pinned conntrack map");
    let hellos = tcp_hellos(&topo.client, vip, 20);
    assert!(hellos.iter().all(|h| h.peer.to_string() == "10.244.200.2"));

    drop(second);
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.node.path().display()))
        .arg(env!("CARGO_BIN_EXE_netlet-proxy"))
        .args(["cleanup", "--backend", "ebpf", "--ebpf-state-dir"])
        .arg(&state)
        .output()
        .expect("run netlet-proxy cleanup");
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        in_ns(&topo.client, || tcp_connect(vip)).is_err(),
        "the VIP is dead after cleanup"
    );
}
