//! `cargo xtask bench scheduler`: upstream scheduler_perf's `SchedulingBasic` shape (5,000
//! nodes of 4 CPU / 32 Gi / 110 pods, 10,000 pods requesting 100m / 500 Mi) through a real
//! `netlet-control-plane serve` on embedded storage, its in-process scheduler binding every
//! pod; then `kubectl scale`'s request (a PATCH of a Deployment's scale subresource to 1,000)
//! until 1,000 pods are bound; and the algorithm alone in memory (the same binary's hidden
//! `bench-scheduler-algorithm`).
//!
//! Pods bound per second is wall time from the first create request to the watch event of the
//! last bind, as scheduler_perf measures it. The reference is upstream's published floor for
//! this test (680 pods/s): kube-scheduler is not installed here and cannot be fetched.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use serde_json::{json, Value};

use super::api_client::{rss_mb, Api};
use super::server::Server;
use crate::{interrupt, util};

/// Upstream's published floor for `SchedulingBasic` 5,000 nodes (pods/s).
const UPSTREAM_FLOOR: f64 = 680.0;
/// The issue's target through the apiserver on this machine (pods/s).
const TARGET: f64 = 2000.0;
/// How long binding may take before the bench gives up.
const BIND_TIMEOUT: Duration = Duration::from_secs(600);
/// The namespace of the `SchedulingBasic` pods.
const BASIC_NS: &str = "bench";
/// The namespace of the scaled Deployment.
const SCALE_NS: &str = "bench-scale";

/// Options of `cargo xtask bench scheduler`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes to create.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods to create and have bound.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Replicas the Deployment is scaled to (0 skips that phase).
    #[arg(long, default_value_t = 1000)]
    scale: usize,
    /// Concurrent create connections.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Use this netlet-control-plane binary instead of building the release one.
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

/// `cargo xtask bench scheduler`.
pub fn run(args: &Args) -> Result<()> {
    ensure!(
        args.nodes >= 1 && args.pods >= 1 && args.clients >= 1,
        "--nodes, --pods and --clients must be at least 1"
    );
    let bin = match &args.server_bin {
        Some(bin) => std::path::absolute(bin).context("resolving --server-bin")?,
        None => util::build_release_bin("netlet-control-plane", "netlet-control-plane")?,
    };
    println!(
        "scheduler: {} nodes, {} pods (SchedulingBasic shape), scale to {}",
        args.nodes, args.pods, args.scale
    );
    let algorithm = algorithm_alone(&bin, args)?;
    println!("  algorithm alone (in memory)   {:>8.0} pods/s", algorithm);
    // Controllers run (the Deployment phase needs them) with a node-monitor grace period
    // longer than the bench, since these nodes have no agent renewing Leases. The nodes come
    // with their podCIDR from the /10 cluster CIDR, so node IPAM only records them instead of
    // writing 5,000 patches while the scheduler is measured.
    let server = Server::start(
        &bin,
        &[
            "--node-monitor-grace-period",
            "3600",
            "--cluster-cidr",
            "100.64.0.0/10",
        ],
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let measured = runtime
        .block_on(phases(&server.api, args))
        .with_context(|| server.log_tail())?;
    let rss = rss_mb(server.guard.id())?;
    println!();
    println!(
        "scheduler ({} nodes, {} pods): {:.0} pods/s through the apiserver \
         (first create → last bind {:.2} s; the creates alone took {:.2} s)",
        args.nodes,
        args.pods,
        measured.basic_per_s,
        measured.basic_wall.as_secs_f64(),
        measured.creates_wall.as_secs_f64()
    );
    println!(
        "  vs upstream's floor {UPSTREAM_FLOOR:.0} pods/s: {:.2}x   target ≥ {TARGET:.0} pods/s: {}",
        measured.basic_per_s / UPSTREAM_FLOOR,
        if measured.basic_per_s >= TARGET {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("  algorithm alone: {algorithm:.0} pods/s");
    if let Some(scale) = measured.scale_wall {
        println!(
            "  scale deployment to {}: all bound after {:.2} s",
            args.scale,
            scale.as_secs_f64()
        );
    }
    println!("  apiserver + scheduler + controllers RSS {rss:.1} MB");
    Ok(())
}

/// The hidden subcommand's decisions per second.
fn algorithm_alone(bin: &std::path::Path, args: &Args) -> Result<f64> {
    let out = Command::new(bin)
        .args(["bench-scheduler-algorithm", "--nodes"])
        .arg(args.nodes.to_string())
        .arg("--pods")
        .arg(args.pods.to_string())
        .output()
        .with_context(|| format!("running {} bench-scheduler-algorithm", bin.display()))?;
    ensure!(
        out.status.success(),
        "bench-scheduler-algorithm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing its JSON")?;
    ensure!(
        v["unschedulable"] == 0,
        "in memory, some pods fit nowhere: {v}"
    );
    v["pods_per_second"]
        .as_f64()
        .context("no pods_per_second in its output")
}

/// What the API phases measured.
struct Measured {
    basic_per_s: f64,
    basic_wall: Duration,
    creates_wall: Duration,
    scale_wall: Option<Duration>,
}

async fn phases(api: &Api, args: &Args) -> Result<Measured> {
    let mut conn = api.connect().await?;
    for ns in [BASIC_NS, SCALE_NS] {
        conn.call(
            Method::POST,
            "/api/v1/namespaces",
            "application/json",
            Some(("application/json", json!({"metadata": {"name": ns}}))),
        )
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    }
    let t = Instant::now();
    create_all(api, args.clients, args.nodes, |i| {
        ("/api/v1/nodes".to_string(), node(i))
    })
    .await
    .context("creating the nodes")?;
    println!(
        "  {} nodes created in {:.2} s",
        args.nodes,
        t.elapsed().as_secs_f64()
    );

    // (1) SchedulingBasic: the watch is open before the first create, so no bind is missed.
    // A watch holds its HTTP/1.1 connection: each gets its own.
    let watch = api
        .connect()
        .await?
        .open(&format!("/api/v1/namespaces/{BASIC_NS}/pods?watch=true"))
        .await?;
    let bound = tokio::spawn(count_bound(watch, args.pods));
    let start = Instant::now();
    create_all(api, args.clients, args.pods, |i| {
        (format!("/api/v1/namespaces/{BASIC_NS}/pods"), pod(i))
    })
    .await
    .context("creating the pods")?;
    let creates_wall = start.elapsed();
    let last_bind = bound.await.context("watch task")??;
    let basic_wall = last_bind.saturating_duration_since(start);
    println!(
        "  {} pods bound in {:.2} s",
        args.pods,
        basic_wall.as_secs_f64()
    );

    // (2) Scale a Deployment from 0 as `kubectl scale` does, until every replica is bound.
    let mut scale_wall = None;
    if args.scale > 0 {
        interrupt::check()?;
        conn.call(
            Method::POST,
            &format!("/apis/apps/v1/namespaces/{SCALE_NS}/deployments"),
            "application/json",
            Some(("application/json", deployment())),
        )
        .await
        .context("creating the Deployment")?;
        let watch = api
            .connect()
            .await?
            .open(&format!("/api/v1/namespaces/{SCALE_NS}/pods?watch=true"))
            .await?;
        let bound = tokio::spawn(count_bound(watch, args.scale));
        let start = Instant::now();
        conn.call(
            Method::PATCH,
            &format!("/apis/apps/v1/namespaces/{SCALE_NS}/deployments/scaled/scale"),
            "application/json",
            Some((
                "application/merge-patch+json",
                json!({"spec": {"replicas": args.scale}}),
            )),
        )
        .await
        .context("scaling the Deployment")?;
        let last = bound.await.context("watch task")??;
        scale_wall = Some(last.saturating_duration_since(start));
    }
    Ok(Measured {
        basic_per_s: args.pods as f64 / basic_wall.as_secs_f64().max(1e-9),
        basic_wall,
        creates_wall,
        scale_wall,
    })
}

/// POSTs `count` objects from `clients` connections; `object(i)` gives the path and body.
async fn create_all(
    api: &Api,
    clients: usize,
    count: usize,
    object: fn(usize) -> (String, Value),
) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.min(count) {
        let (api, next) = (api.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = api.connect().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                if i % 256 == 0 {
                    interrupt::check()?;
                }
                let (path, body) = object(i);
                conn.call(
                    Method::POST,
                    &path,
                    "application/json",
                    Some(("application/json", body)),
                )
                .await
                .with_context(|| format!("creating object {i} at {path}"))?;
            }
        }));
    }
    for task in tasks {
        task.await.context("create task")??;
    }
    Ok(())
}

/// Reads a pod watch until `want` distinct pods have been seen with a `nodeName`; returns
/// when the last one arrived.
async fn count_bound(mut body: Incoming, want: usize) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + BIND_TIMEOUT;
    let mut bound: HashSet<String> = HashSet::with_capacity(want);
    let mut buf: Vec<u8> = Vec::new();
    let mut last = Instant::now();
    while bound.len() < want {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {want} pods bound after {} s",
                    bound.len(),
                    BIND_TIMEOUT.as_secs()
                )
            })?
            .context("the pod watch ended")?
            .context("reading the pod watch")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if let Some(name) = bound_pod(&line) {
                if bound.insert(name) {
                    last = Instant::now();
                }
            }
        }
    }
    Ok(last)
}

/// The name of the pod in a watch event line if the pod has a node, found without parsing
/// the whole object (the bench shares two cores with the server it measures).
fn bound_pod(line: &[u8]) -> Option<String> {
    find(line, b"\"nodeName\":\"")?;
    let meta = find(line, b"\"metadata\":{")?;
    let at = meta + find(&line[meta..], b"\"name\":\"")? + b"\"name\":\"".len();
    let len = line[at..].iter().position(|&b| b == b'"')?;
    String::from_utf8(line[at..at + len].to_vec()).ok()
}

/// The offset of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A node as `SchedulingBasic`'s template: Ready, 4 CPU, 32 Gi, 110 pods.
fn node(i: usize) -> Value {
    let name = format!("node-{i:05}");
    let cidr = format!("100.{}.{}.0/24", 64 + i / 256, i % 256);
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// The pod spec of `SchedulingBasic`: one container requesting 100m / 500 Mi, and no service
/// account token volume: upstream's scheduler_perf apiserver runs without the ServiceAccount
/// admission, so its pods carry none (with it, every pod is about 400 bytes of JSON larger in
/// every watch).
fn pod_spec() -> Value {
    json!({"automountServiceAccountToken": false, "containers": [{
        "name": "pause", "image": "localhost/netlet-pause:1",
        "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}},
    }]})
}

/// Pod `i` of the `SchedulingBasic` phase.
fn pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:06}")},
        "spec": pod_spec(),
    })
}

/// The Deployment the scale phase scales from 0.
fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "scaled"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "scaled"}},
            "template": {"metadata": {"labels": {"app": "scaled"}}, "spec": pod_spec()},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_pods_are_recognised_by_name() {
        let bound = br#"{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"labels":{"app":"x"},"name":"pod-000001","namespace":"bench"},"spec":{"nodeName":"node-00003"}}}"#;
        assert_eq!(bound_pod(bound).as_deref(), Some("pod-000001"));
        let pending = br#"{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"pod-000002"},"spec":{}}}"#;
        assert_eq!(bound_pod(pending), None);
    }
}
