//! `netlet-control-plane serve --storage etcd`: the same apiserver on a real etcd (Debian's
//! etcd-server) started by the test on 127.0.0.1, driven by the stock kubectl. A restart of the
//! apiserver keeps every object, because etcd, not the data directory, holds them.

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{ChildGuard, Server};

/// A free 127.0.0.1 port (bound and released; etcd binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A single-member etcd in a temporary directory, killed by PID on drop.
struct Etcd {
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
    url: String,
}

impl Etcd {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &format!("t=http://127.0.0.1:{peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd (Debian package etcd-server; cargo xtask deps installs it)");
        let etcd = Etcd {
            _guard: ChildGuard::new(child),
            _dir: dir,
            url,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &etcd.url, "endpoint", "health"])
                .output()
                .expect("running etcdctl");
            if health.status.success() {
                return etcd;
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {} never became healthy",
                etcd.url
            );
            std::thread::sleep(Duration::from_millis(100)); // polling the etcd we started: it offers no readiness event
        }
    }

    /// Keys under `prefix`, as etcdctl lists them.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.url,
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ])
            .output()
            .expect("running etcdctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn kubectl_works_on_etcd_and_objects_live_in_etcd() {
    let etcd = Etcd::start();
    let mut server = Server::start_with(&["--storage", "etcd", "--etcd-endpoints", &etcd.url]);
    server.kubectl_ok(&["create", "namespace", "on-etcd"]);
    server.kubectl_ok(&[
        "-n",
        "on-etcd",
        "create",
        "configmap",
        "c1",
        "--from-literal=a=b",
    ]);
    assert_eq!(
        etcd.keys("/registry/configmaps/on-etcd/"),
        [
            "/registry/configmaps/on-etcd/c1",
            "/registry/configmaps/on-etcd/kube-root-ca.crt"
        ],
        "the apiserver's keys are in etcd"
    );
    server.restart();
    let got = server.kubectl_ok(&[
        "-n",
        "on-etcd",
        "get",
        "configmap",
        "c1",
        "-o",
        "jsonpath={.data.a}",
    ]);
    assert_eq!(got.trim(), "b", "the object survived an apiserver restart");
    let svc = server.kubectl_ok(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(svc.trim(), "10.96.0.1");
}

#[test]
fn etcd_storage_without_endpoints_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_netlet-control-plane"))
        .args(["serve", "--port", "0", "--storage", "etcd", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("running the binary");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--etcd-endpoints"), "{err}");
}
