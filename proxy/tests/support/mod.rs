//! Shared by the tests that run our apiserver: where its binary is, and the objects they
//! create.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use serde_json::{json, Value};

#[allow(unused_imports)] // used by some of the test binaries only
pub use integration::apiserver::apiserver_bin;

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
