//! The e2e scenarios, each a function that drives the running cluster through stock `kubectl`
//! and fails with what it saw. Pods report results through their own exit status (a client
//! pod with `restartPolicy: Never` ends `Succeeded` or `Failed`); `streaming.rs` checks exec,
//! attach, port-forward and logs themselves.
//! (busybox 1.35's `wget -T` segfaults, hence `timeout 5 wget`.)

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::kubectl::Kubectl;
use super::pod_lifecycle;
use super::service_frontends;
use super::static_pod;
use super::streaming;
use crate::cluster::underlay;
use crate::images::ECHO_IMAGE;

/// What every scenario gets.
pub struct Ctx {
    /// kubectl for the cluster.
    pub kubectl: Kubectl,
    /// Number of nodes (named `node-1` …).
    pub nodes: u8,
}

/// A scenario: its name and body.
pub type Scenario = (&'static str, fn(&Ctx) -> Result<()>);

/// The scenarios of the `cluster-ebpf` suite (the eBPF service proxy on every node): those
/// that exercise pod networking and Services, plus an agent restart, which must keep the
/// pinned datapath, in the same order as in [`SCENARIOS`].
pub const EBPF_SCENARIOS: &[&str] = &[
    "nodes get distinct pod CIDRs",
    "deployment spreads over nodes",
    "pod to pod across nodes without NAT",
    "pod to outside is masqueraded",
    "service ClusterIP reaches the pods",
    "a pod reaches the apiserver with its service account token",
    "NodePort from outside the cluster is masqueraded",
    "NodePort with externalTrafficPolicy Local keeps the client address",
    "a pod reaches itself through its Service (hairpin)",
    "readiness failure leaves the service endpoints",
    "agent kill -9 keeps its pods running",
    "deleted pods go away",
];

/// The scenarios, in order (later ones use the Deployment the second one creates).
pub const SCENARIOS: &[Scenario] = &[
    (
        "nodes get distinct pod CIDRs",
        nodes_have_distinct_pod_cidrs,
    ),
    (
        "deployment spreads over nodes",
        deployment_spreads_over_nodes,
    ),
    (
        "pod to pod across nodes without NAT",
        pod_to_pod_without_nat,
    ),
    (
        "pod to outside is masqueraded",
        pod_to_outside_is_masqueraded,
    ),
    (
        "service ClusterIP reaches the pods",
        service_cluster_ip_reaches_pods,
    ),
    (
        "a pod reaches the apiserver with its service account token",
        pod_reaches_the_apiserver_with_its_token,
    ),
    (
        "NodePort from outside the cluster is masqueraded",
        service_frontends::node_port_from_outside_is_masqueraded,
    ),
    (
        "NodePort with externalTrafficPolicy Local keeps the client address",
        service_frontends::node_port_local_policy_keeps_source,
    ),
    (
        "a pod reaches itself through its Service (hairpin)",
        service_frontends::hairpin_through_service,
    ),
    ("kubectl logs shows container output", kubectl_logs),
    (
        "kubectl exec and port-forward reach pods on every node",
        streaming::exec_and_port_forward,
    ),
    (
        "kubectl run -i attaches; logs -f of a finished pod returns",
        streaming::attach_and_follow_finished,
    ),
    (
        "liveness failure restarts the container",
        pod_lifecycle::liveness_failure_restarts,
    ),
    (
        "readiness failure leaves the service endpoints",
        pod_lifecycle::readiness_failure_leaves_endpoints,
    ),
    (
        "agent kill -9 keeps its pods running",
        pod_lifecycle::agent_crash_keeps_pods,
    ),
    (
        "unreachable node's pods move to other nodes",
        pod_lifecycle::unreachable_node_pods_move,
    ),
    (
        "graceful delete runs the preStop hook before SIGTERM",
        pod_lifecycle::graceful_delete_runs_prestop,
    ),
    (
        "static pod runs and appears as a mirror pod",
        static_pod::static_pod_has_mirror,
    ),
    ("deleted pods go away", deleted_pods_go_away),
];

pub(super) const NS: &str = "e2e";
pub(super) const POD_TIMEOUT: Duration = Duration::from_secs(90);

fn nodes_have_distinct_pod_cidrs(ctx: &Ctx) -> Result<()> {
    let cidrs = ctx.kubectl.wait_for(
        "a podCIDR on every node",
        &["nodes"],
        Duration::from_secs(30),
        |list| {
            let cidrs: Vec<String> = items(list)
                .iter()
                .filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_string))
                .collect();
            (cidrs.len() == usize::from(ctx.nodes)).then_some(cidrs)
        },
    )?;
    let mut unique = cidrs.clone();
    unique.sort();
    unique.dedup();
    ensure!(
        unique.len() == cidrs.len(),
        "duplicate pod CIDRs: {cidrs:?}"
    );
    Ok(())
}

fn deployment_spreads_over_nodes(ctx: &Ctx) -> Result<()> {
    ctx.kubectl
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))?;
    let replicas = i64::from(ctx.nodes);
    ctx.kubectl.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {"containers": [{
                    "name": "echo", "image": ECHO_IMAGE, "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080, "name": "http"}],
                }]},
            },
        },
    }))?;
    let pods = running_pods(ctx, "app=echo", replicas as usize)?;
    let nodes = ctx.kubectl.get(&["nodes"])?;
    let mut used = Vec::new();
    for pod in &pods {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let ip: Ipv4Addr = pod["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("pod {} has no IPv4 podIP", name(pod)))?;
        let cidr = items(&nodes)
            .iter()
            .find(|n| name(n) == node)
            .and_then(|n| n["spec"]["podCIDR"].as_str())
            .with_context(|| format!("node {node} of pod {} has no podCIDR", name(pod)))?
            .to_string();
        ensure!(
            in_cidr(ip, &cidr),
            "pod {} on {node} has IP {ip} outside the node's {cidr}",
            name(pod)
        );
        used.push(node.to_string());
    }
    used.sort();
    used.dedup();
    ensure!(
        used.len() == pods.len(),
        "{} replicas landed on only {} nodes: {used:?}",
        pods.len(),
        used.len()
    );
    Ok(())
}

fn pod_to_pod_without_nat(ctx: &Ctx) -> Result<()> {
    let pods = running_pods(ctx, "app=echo", usize::from(ctx.nodes))?;
    let target = &pods[0];
    let target_node = target["spec"]["nodeName"].as_str().unwrap_or_default();
    let client_node = (1..=ctx.nodes)
        .map(|k| format!("node-{k}"))
        .find(|n| n != target_node)
        .context("needs two nodes")?;
    let ip = target["status"]["podIP"].as_str().unwrap_or_default();
    // The echo server answers with the client address it saw; it must be the pod's own.
    let script = format!(
        "me=$(ip -4 -o addr show eth0 | awk '{{print $4}}' | cut -d/ -f1); \
         out=$(timeout 5 wget -qO- http://{ip}:8080/); echo \"me=$me got: $out\"; \
         case \"$out\" in *\"client=$me:\"*) exit 0;; *) exit 1;; esac"
    );
    run_client_pod(ctx, "client-direct", &client_node, &script)
}

fn pod_to_outside_is_masqueraded(ctx: &Ctx) -> Result<()> {
    let echo = crate::util::target_dir().join("images/build/echo");
    let outside = underlay::outside_ns();
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &outside])
        .arg(&echo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} in {outside}", echo.display()))?;
    let _server = integration::ChildGuard::new(child);
    let node_ip = underlay::node_ip(1);
    let script = format!(
        "out=$(timeout 5 wget -qO- http://{}:8080/); echo \"got: $out\"; \
         case \"$out\" in *\"client={node_ip}:\"*) exit 0;; *) exit 1;; esac",
        underlay::outside_ip()
    );
    run_client_pod(ctx, "client-outside", "node-1", &script)
}

/// What in-cluster clients do, with a real one: stock `kubectl` (a static Go binary, bind-mounted
/// from this host) in a pod with no kubeconfig uses client-go's in-cluster config — the
/// mounted token, `ca.crt` and namespace, and `KUBERNETES_SERVICE_HOST`/`_PORT`, that is the
/// `kubernetes` Service's ClusterIP, which the node's service proxy sends to the control
/// plane's LAN address. It verifies the serving certificate against that IP. (busybox's wget
/// cannot be the client: its TLS sends no signature_algorithms, which rustls requires.)
fn pod_reaches_the_apiserver_with_its_token(ctx: &Ctx) -> Result<()> {
    let kubectl = crate::util::which("kubectl")
        .context("kubectl is not on PATH; it is mounted into the pod as the client")?;
    let script = "out=$(kubectl get pod client-api -o 'jsonpath={.metadata.name}/{.spec.serviceAccountName}' 2>&1); \
         echo \"got: $out\"; [ \"$out\" = client-api/default ]";
    run_pod_to_completion(
        ctx,
        "client-api",
        "node-2",
        json!({
            "nodeName": "node-2",
            "restartPolicy": "Never",
            "containers": [{
                "name": "client", "image": ECHO_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                // kubectl keeps its discovery cache under $HOME.
                "env": [{"name": "HOME", "value": "/tmp"}],
                "volumeMounts": [{"name": "kubectl", "mountPath": "/bin/kubectl", "readOnly": true}],
            }],
            "volumes": [{"name": "kubectl", "hostPath": {"path": kubectl, "type": "File"}}],
        }),
    )
}

fn service_cluster_ip_reaches_pods(ctx: &Ctx) -> Result<()> {
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": NS},
        "spec": {
            "selector": {"app": "echo"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }))?;
    let svc = ctx.kubectl.get(&["-n", NS, "service", "echo"])?;
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .context("service echo has no clusterIP")?
        .to_string();
    // The EndpointSlice must list the pods before the proxies can program them.
    ctx.kubectl.wait_for(
        "the echo EndpointSlice to list every replica as ready",
        &[
            "-n",
            NS,
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=echo",
        ],
        POD_TIMEOUT,
        |list| {
            let ready = items(list)
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] == true)
                .count();
            (ready == usize::from(ctx.nodes)).then_some(())
        },
    )?;
    // Through the ClusterIP the backend still sees the client pod's own address (no SNAT for
    // pod → service → pod); the retries cover the proxies' debounce after the slice appeared.
    let script = format!(
        "me=$(ip -4 -o addr show eth0 | awk '{{print $4}}' | cut -d/ -f1); \
         for i in $(seq 1 20); do out=$(timeout 5 wget -qO- http://{ip}/); \
         case \"$out\" in *\"client=$me:\"*) echo \"ok: $out\"; exit 0;; esac; sleep 1; done; \
         echo \"me=$me last: $out\"; exit 1"
    );
    run_client_pod(ctx, "client-service", "node-2", &script)
}

fn kubectl_logs(ctx: &Ctx) -> Result<()> {
    let pods = running_pods(ctx, "app=echo", usize::from(ctx.nodes))?;
    let pod = name(&pods[0]).to_string();
    let logs = ctx.kubectl.run(&["-n", NS, "logs", &pod])?;
    ensure!(
        logs.contains("echo: http :8080"),
        "kubectl logs {pod} lacks the echo banner; got:\n{logs}"
    );
    Ok(())
}

fn deleted_pods_go_away(ctx: &Ctx) -> Result<()> {
    // Scaling to zero makes the ReplicaSet delete its pods gracefully, and the agents must
    // stop them and confirm the deletion.
    ctx.kubectl
        .run(&["-n", NS, "scale", "deployment", "echo", "--replicas=0"])?;
    ctx.kubectl.run(&[
        "-n",
        NS,
        "delete",
        "pods",
        "-l",
        "role=client",
        "--wait=false",
    ])?;
    ctx.kubectl.wait_for(
        "every pod in namespace e2e to be gone",
        &["-n", NS, "pods"],
        POD_TIMEOUT,
        |list| items(list).is_empty().then_some(()),
    )?;
    // The garbage collector removes the Deployment's ReplicaSets after it.
    ctx.kubectl
        .run(&["-n", NS, "delete", "deployment", "echo"])?;
    ctx.kubectl.wait_for(
        "the echo ReplicaSets to be garbage-collected",
        &["-n", NS, "replicasets"],
        POD_TIMEOUT,
        |list| items(list).is_empty().then_some(()),
    )
}

/// Runs a busybox script in a pod pinned to `node` and requires it to exit 0.
pub(super) fn run_client_pod(ctx: &Ctx, pod: &str, node: &str, script: &str) -> Result<()> {
    let spec = json!({
        "nodeName": node,
        "restartPolicy": "Never",
        "containers": [{
            "name": "client", "image": ECHO_IMAGE, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", script],
        }],
    });
    run_pod_to_completion(ctx, pod, node, spec)
}

/// Creates client pod `pod` with `spec` (`restartPolicy: Never`) and waits until it
/// succeeded; fails with its status and output otherwise.
fn run_pod_to_completion(ctx: &Ctx, pod: &str, node: &str, spec: Value) -> Result<()> {
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": NS, "labels": {"role": "client"}},
        "spec": spec,
    }))?;
    let phase = ctx.kubectl.wait_for(
        &format!("pod {pod} to finish"),
        &["-n", NS, "pod", pod],
        POD_TIMEOUT,
        |p| match p["status"]["phase"].as_str() {
            Some(ph @ ("Succeeded" | "Failed")) => Some(ph.to_string()),
            _ => None,
        },
    )?;
    if phase != "Succeeded" {
        let status = ctx.kubectl.get(&["-n", NS, "pod", pod])?;
        let logs = ctx
            .kubectl
            .run(&["-n", NS, "logs", pod])
            .unwrap_or_else(|e| format!("(no logs: {e:#})"));
        bail!(
            "client pod {pod} on {node} failed: {}\nits output: {logs}",
            status["status"]["containerStatuses"]
        );
    }
    Ok(())
}

/// Waits until `count` pods with `selector` are Running and Ready; returns them.
pub(super) fn running_pods(ctx: &Ctx, selector: &str, count: usize) -> Result<Vec<Value>> {
    ctx.kubectl.wait_for(
        &format!("{count} Running and Ready pods {selector}"),
        &["-n", NS, "pods", "-l", selector],
        POD_TIMEOUT,
        |list| {
            let ready: Vec<Value> = items(list)
                .into_iter()
                .filter(|p| p["status"]["phase"] == "Running" && is_ready(p))
                .collect();
            (ready.len() == count).then_some(ready)
        },
    )
}

pub(super) fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

pub(super) fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

pub(super) fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("?")
}

/// Whether `ip` lies in the IPv4 `cidr` (`a.b.c.d/len`).
fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebpf_suite_names_existing_scenarios_in_order() {
        let order: Vec<usize> = EBPF_SCENARIOS
            .iter()
            .map(|n| {
                SCENARIOS
                    .iter()
                    .position(|(s, _)| s == n)
                    .unwrap_or_else(|| panic!("{n} is not a scenario"))
            })
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    #[test]
    fn cidr_membership() {
        assert!(in_cidr("10.244.1.7".parse().unwrap(), "10.244.1.0/24"));
        assert!(!in_cidr("10.244.2.7".parse().unwrap(), "10.244.1.0/24"));
        assert!(in_cidr("1.2.3.4".parse().unwrap(), "0.0.0.0/0"));
        assert!(!in_cidr("1.2.3.4".parse().unwrap(), "garbage"));
    }
}
