//! Shared by the tests that run our apiserver: where its binary is, and the objects they
//! create.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The apiserver binary next to this test's target directory, built once if missing.
pub fn apiserver_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        let bin = profile_dir.join("netlet-control-plane");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "netlet-control-plane",
                "--bin",
                "netlet-control-plane",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "building netlet-control-plane failed");
        }
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// A ClusterIP Service `default/NAME` with port `http` 80 → 8080 and an explicit cluster IP
/// (so the test does not depend on the apiserver allocating one).
pub fn service_json(name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    })
}

/// An EndpointSlice `default/NAME` of `service` with ready endpoints at `ips` on `node-a`, port
/// `http` 8080.
pub fn slice_json(name: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-a"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}
