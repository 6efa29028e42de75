//! `cargo xtask bench podstart`: `--pods` pods (default 100) created at once on a one-node
//! `cargo xtask up` cluster, timed from each create request to the watch event that first shows
//! the pod Ready; then the agent's RSS. The path measured is the whole stack: apiserver,
//! scheduler, agent, containerd CRI, netlet-cni.
//!
//! The reference (kubelet) is not installed on these machines and cannot be fetched (no
//! internet), so the report compares against the targets instead of a ratio.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};

use super::api_client::{rss_mb, Api};
use super::stats;
use crate::cluster::{self, UpArgs};
use crate::images::ECHO_IMAGE;

/// Targets from the issue.
const P99_TARGET_S: f64 = 0.5;
/// See [`P99_TARGET_S`].
const RSS_TARGET_MB: f64 = 40.0;
/// How long all pods may take to become Ready.
const TIMEOUT: Duration = Duration::from_secs(300);
const NAMESPACE: &str = "bench";

/// Options of `cargo xtask bench podstart`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pods to start.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Concurrent create connections.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Use debug binaries (quicker to build; the numbers are then not representative).
    #[arg(long)]
    debug: bool,
    /// Extra argument for the node's netlet-agent, repeatable
    /// (e.g. `--agent-arg=--parallel-pod-starts=8`).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

/// What one run measured.
struct Measured {
    /// Create-to-Ready latency per pod.
    latencies: Vec<Duration>,
    /// Wall time from the first create to the last Ready.
    wall: Duration,
    /// Agent VmRSS after all pods are Ready, MB.
    rss_mb: f64,
}

/// `cargo xtask bench podstart`.
pub fn run(args: &Args) -> Result<()> {
    cluster::down()?;
    cluster::up(&UpArgs {
        nodes: 1,
        release: !args.debug,
        agent_args: args.agent_args.clone(),
    })?;
    let measured = measure(args);
    cluster::down()?;
    let m = measured?;
    let secs: Vec<f64> = m.latencies.iter().map(Duration::as_secs_f64).collect();
    let p50 = stats::percentile(&secs, 50.0).unwrap_or(f64::NAN);
    let p99 = stats::percentile(&secs, 99.0).unwrap_or(f64::NAN);
    println!();
    println!(
        "podstart: {} pods on 1 node ({} build)",
        args.pods,
        if args.debug { "debug" } else { "release" }
    );
    println!("  create → Ready  p50 {p50:.3} s   p99 {p99:.3} s   (target p99 ≤ {P99_TARGET_S} s)");
    println!(
        "  all {} Ready after {:.2} s ({:.1} pods/s)",
        args.pods,
        m.wall.as_secs_f64(),
        args.pods as f64 / m.wall.as_secs_f64()
    );
    println!(
        "  agent RSS {:.1} MB (target ≤ {RSS_TARGET_MB} MB)",
        m.rss_mb
    );
    println!("  reference: kubelet is not installed here (no internet), so no side-by-side ratio");
    Ok(())
}

fn measure(args: &Args) -> Result<Measured> {
    let kubeconfig = cluster::cluster_dir().join("admin.kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let api = Api::from_kubeconfig(&text)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (latencies, wall) = runtime.block_on(async {
        let mut conn = api.connect().await?;
        conn.call(
            Method::POST,
            "/api/v1/namespaces",
            "application/json",
            Some((
                "application/json",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            )),
        )
        .await?;
        let mut watch_conn = api.connect().await?;
        let mut body = watch_conn
            .open(&format!("/api/v1/namespaces/{NAMESPACE}/pods?watch=1"))
            .await?;
        // Ready times by pod name, filled by the watch reader.
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                let now = Instant::now();
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if let Ok(event) = serde_json::from_slice::<Value>(&line) {
                        let pod = &event["object"];
                        if is_ready(pod) {
                            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                            let _ = ready_tx.send((name.to_string(), now));
                        }
                    }
                }
            }
        });
        let first = Instant::now();
        let mut creators = Vec::new();
        for c in 0..args.clients.max(1) {
            let api = api.clone();
            let names: Vec<usize> = (0..args.pods)
                .filter(|i| i % args.clients.max(1) == c)
                .collect();
            creators.push(tokio::spawn(async move {
                let mut conn = api.connect().await?;
                let mut started = Vec::new();
                for i in names {
                    let name = format!("p-{i:04}");
                    started.push((name.clone(), Instant::now()));
                    conn.call(
                        Method::POST,
                        &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
                        "application/json",
                        Some(("application/json", pod(&name))),
                    )
                    .await?;
                }
                anyhow::Ok(started)
            }));
        }
        let mut created: HashMap<String, Instant> = HashMap::new();
        for c in creators {
            created.extend(c.await??);
        }
        let mut ready: HashMap<String, Instant> = HashMap::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while ready.len() < args.pods {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some((name, at))) => {
                    ready.entry(name).or_insert(at);
                }
                Ok(None) => bail!(
                    "the watch ended with {} of {} pods Ready",
                    ready.len(),
                    args.pods
                ),
                Err(_) => bail!(
                    "only {} of {} pods Ready after {} s",
                    ready.len(),
                    args.pods,
                    TIMEOUT.as_secs()
                ),
            }
        }
        let last = ready.values().max().copied().unwrap_or(first);
        let latencies = ready
            .iter()
            .filter_map(|(name, at)| Some(at.saturating_duration_since(*created.get(name)?)))
            .collect::<Vec<_>>();
        anyhow::Ok((latencies, last - first))
    })?;
    let pid = cluster::pid_of("agent node-1").context("the agent of node-1 is not running")?;
    Ok(Measured {
        latencies,
        wall,
        rss_mb: rss_mb(pid)?,
    })
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "podstart"}},
        "spec": {"containers": [{
            "name": "echo", "image": ECHO_IMAGE, "imagePullPolicy": "Never",
        }]},
    })
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
