//! The `netlet-proxy` binary end to end with the iptables and the nftables backend, each entirely inside one
//! throwaway network namespace: our apiserver listens on that namespace's 127.0.0.1, `kubectl`
//! and the proxy run there too, and the rules are read back with `iptables-save` / `nft` there. Nothing
//! touches the host's namespace; every process is killed by PID.

mod support;

use integration::{ChildGuard, NetNs};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Cluster {
    ns: NetNs,
    dir: tempfile::TempDir,
    _apiserver: ChildGuard,
}

impl Cluster {
    fn start(tag: &str) -> Self {
        let ns = NetNs::new(tag);
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let child = ns
            .command(&support::apiserver_bin().display().to_string())
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start netlet-control-plane");
        let cluster = Self {
            ns,
            dir,
            _apiserver: ChildGuard::new(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.kubectl(&["get", "services", "-A"]).0 {
            assert!(
                Instant::now() < deadline,
                "apiserver not serving within 20s; log:\n{}",
                cluster.read("server.log")
            );
            std::thread::sleep(Duration::from_millis(100)); // polling the spawned apiserver: no readiness event
        }
        cluster
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// Runs kubectl in the namespace; returns success and stderr.
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .ns
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

    fn apply(&self, name: &str, obj: &Value) {
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(obj).unwrap()).unwrap();
        let (ok, err) = self.kubectl(&["apply", "-f", &path.display().to_string()]);
        assert!(ok, "kubectl apply {name}: {err}");
    }

    fn proxy(&self, args: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log");
        self.ns
            .command(env!("CARGO_BIN_EXE_netlet-proxy"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start netlet-proxy")
    }

    /// The dataplane's state in the namespace, as text.
    fn dump(&self, dp: &Dataplane) -> String {
        self.ns.run_ok(dp.dump[0], &dp.dump[1..])
    }

    /// Polls the dataplane's state in the namespace until `pred` holds.
    fn wait_rules(&self, dp: &Dataplane, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let saved = self.dump(dp);
            if pred(&saved) {
                return saved;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 20s:\n{saved}\nproxy log:\n{}",
                self.read("proxy.log")
            );
            std::thread::sleep(Duration::from_millis(100)); // polling kernel rules the proxy process writes: no event to wait on
        }
    }
}

/// What differs between the backends as seen from outside.
struct Dataplane {
    backend: &'static str,
    /// The command printing the installed state.
    dump: &'static [&'static str],
    /// Text the dump holds while traffic to the service goes to endpoint `ip`.
    endpoint: fn(&str) -> String,
    /// Text the dump holds while anything of ours is installed.
    installed: &'static str,
}

const IPTABLES: Dataplane = Dataplane {
    backend: "iptables",
    dump: &["iptables-save"],
    endpoint: |ip| format!("--to-destination {ip}:8080"),
    installed: "NETLET",
};

const NFTABLES: Dataplane = Dataplane {
    backend: "nftables",
    dump: &["nft", "list", "ruleset"],
    endpoint: |ip| ip.to_string(),
    installed: "netlet",
};

#[test]
fn binary_programs_iptables_from_the_apiserver_and_cleans_up() {
    run_binary(&IPTABLES);
}

#[test]
fn binary_programs_nftables_from_the_apiserver_and_cleans_up() {
    run_binary(&NFTABLES);
}

fn run_binary(dp: &Dataplane) {
    let cluster = Cluster::start(dp.backend);
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let proxy = cluster.proxy(
        &[
            "--kubeconfig",
            &kubeconfig,
            "--backend",
            dp.backend,
            "--node-name",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--min-sync-interval-ms",
            "100",
            // The namespace's own loopback: the fixed port cannot collide with the host's.
            "--metrics-bind",
            "127.0.0.1:10249",
        ],
        "proxy.log",
    );
    let proxy = ChildGuard::new(proxy);
    let endpoint = dp.endpoint;

    cluster.apply("svc", &support::service_json("web", "10.96.0.50"));
    cluster.apply(
        "slice",
        &support::slice_json("web-abc", "web", &["10.244.1.5", "10.244.1.6"]),
    );
    let saved = cluster.wait_rules(dp, "both endpoints of default/web", |s| {
        s.contains(&endpoint("10.244.1.5")) && s.contains(&endpoint("10.244.1.6"))
    });
    assert!(
        saved.contains("10.96.0.50") && saved.contains("default/web"),
        "{saved}"
    );
    if dp.backend == "iptables" {
        assert!(saved.contains(":NETLET-SVC-"), "{saved}");
    }

    let metrics = cluster.ns.run_ok(
        "curl",
        &["-sSf", "--max-time", "5", "http://127.0.0.1:10249/metrics"],
    );
    for line in [
        "netlet_proxy_syncs_total{kind=\"full\",result=\"ok\"} 1",
        "netlet_proxy_endpoints_programmed ",
        "netlet_proxy_last_sync_duration_seconds ",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    cluster.apply(
        "slice",
        &support::slice_json("web-abc", "web", &["10.244.1.5"]),
    );
    cluster.wait_rules(dp, "the removed endpoint gone", |s| {
        s.contains(&endpoint("10.244.1.5")) && !s.contains(&endpoint("10.244.1.6"))
    });

    let (ok, err) = cluster.kubectl(&["delete", "service", "web", "-n", "default"]);
    assert!(ok, "kubectl delete: {err}");
    cluster.wait_rules(dp, "default/web gone", |s| {
        !s.contains("default/web") && !s.contains("10.96.0.50")
    });

    // SIGTERM: the proxy stops cleanly (leaving its rules: a restart must not drop traffic).
    let mut child = proxy.into_inner();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(
        status.success(),
        "proxy exited with {status}; log:\n{}",
        cluster.read("proxy.log")
    );
    assert!(cluster.dump(dp).contains(dp.installed));

    let mut cleanup = cluster.proxy(&["cleanup", "--backend", dp.backend], "cleanup.log");
    let status = wait_exit(&mut cleanup, Duration::from_secs(20));
    assert!(status.success(), "cleanup: {}", cluster.read("cleanup.log"));
    let left = cluster.dump(dp);
    assert!(!left.contains(dp.installed), "left after cleanup:\n{left}");
}

/// Waits for `child` to exit; kills it (by PID) and fails the test after `within`.
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50)); // polling a child's exit with a deadline (std has no wait-with-timeout)
    }
}
