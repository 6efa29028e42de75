//! e2e scenarios about what the agent does to pods over time: probes restarting containers and
//! gating Service endpoints, an agent crash (kill -9) that must not disturb running pods, and a
//! node that stops reporting, whose pods are evicted and replaced elsewhere.

use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::scenarios::{is_ready, items, name, run_client_pod, Ctx, NS, POD_TIMEOUT};
use crate::cluster::restart;
use crate::images::ECHO_IMAGE;

/// The echo container, its `/healthz` failing after `healthy_for` seconds.
fn echo_container(healthy_for: u32) -> Value {
    json!({
        "name": "echo", "image": ECHO_IMAGE, "imagePullPolicy": "Never",
        "args": ["--healthy-for", healthy_for.to_string()],
        "ports": [{"containerPort": 8080, "name": "http"}],
    })
}

/// A node's Ready condition status (`""` if absent) and whether it has the unreachable taint.
fn node_state(node: &Value) -> (&str, bool) {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or("");
    let tainted = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == "node.kubernetes.io/unreachable");
    (ready, tainted)
}

/// The container status of `pod`'s first container.
fn first_status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

/// A pod whose liveness probe starts failing is restarted, and `kubectl describe` shows why.
pub fn liveness_failure_restarts(ctx: &Ctx) -> Result<()> {
    let mut c = echo_container(3);
    c["livenessProbe"] = json!({
        "httpGet": {"path": "/healthz", "port": 8080},
        "periodSeconds": 1, "failureThreshold": 2,
    });
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "liveness", "namespace": NS, "labels": {"role": "client"}},
        "spec": {"nodeName": "node-2", "containers": [c]},
    }))?;
    ctx.kubectl.wait_for(
        "pod liveness to be restarted by its liveness probe",
        &["-n", NS, "pod", "liveness"],
        POD_TIMEOUT,
        |p| (first_status(p)["restartCount"].as_i64() >= Some(1)).then_some(()),
    )?;
    let describe = ctx
        .kubectl
        .run(&["-n", NS, "describe", "pod", "liveness"])?;
    for want in ["Liveness probe failed", "Unhealthy", "Restart Count:"] {
        ensure!(
            describe.contains(want),
            "kubectl describe pod liveness lacks {want:?}:\n{describe}"
        );
    }
    ensure!(
        !describe.contains("Restart Count:  0"),
        "describe shows no restart:\n{describe}"
    );
    Ok(())
}

/// A pod whose readiness probe starts failing stays Running but leaves its Service's ready
/// endpoints, without a restart.
pub fn readiness_failure_leaves_endpoints(ctx: &Ctx) -> Result<()> {
    let mut c = echo_container(15);
    c["readinessProbe"] = json!({
        "httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1,
    });
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "flip", "namespace": NS, "labels": {"role": "client", "app": "flip"}},
        "spec": {"nodeName": "node-3", "containers": [c]},
    }))?;
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "flip", "namespace": NS},
        "spec": {"selector": {"app": "flip"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }))?;
    let slice_args = [
        "-n",
        NS,
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=flip",
    ];
    let ready_endpoints = |list: &Value| -> Vec<bool> {
        items(list)
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| e["conditions"]["ready"] == true)
            .collect()
    };
    ctx.kubectl.wait_for(
        "pod flip to be a ready endpoint of service flip",
        &slice_args,
        POD_TIMEOUT,
        |list| (ready_endpoints(list) == [true]).then_some(()),
    )?;
    ctx.kubectl.wait_for(
        "pod flip's endpoint to turn not ready once /healthz fails",
        &slice_args,
        POD_TIMEOUT,
        |list| (ready_endpoints(list) == [false]).then_some(()),
    )?;
    let pod = ctx.kubectl.get(&["-n", NS, "pod", "flip"])?;
    ensure!(
        pod["status"]["phase"] == "Running" && !is_ready(&pod),
        "pod flip should be Running and not Ready: {}",
        pod["status"]
    );
    ensure!(
        first_status(&pod)["restartCount"] == 0,
        "a readiness failure must not restart the container: {}",
        first_status(&pod)
    );
    Ok(())
}

/// kill -9 of node-1's agent and a fresh start leave its running pod alone (same container,
/// no restart, still serving), and the new agent runs new pods.
pub fn agent_crash_keeps_pods(ctx: &Ctx) -> Result<()> {
    let pods = ctx.kubectl.get(&[
        "-n",
        NS,
        "pods",
        "-l",
        "app=echo",
        "--field-selector",
        "spec.nodeName=node-1",
    ])?;
    let pod = items(&pods)
        .into_iter()
        .find(is_ready)
        .context("no Ready echo pod on node-1")?;
    let pod_name = name(&pod).to_string();
    let before = first_status(&pod).clone();
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    restart::kill("agent node-1")?;
    restart::start_again("agent node-1")?;

    // A new pod on node-1 running proves the new agent is at work; by then its first relist
    // has seen the old pod.
    run_client_pod(
        ctx,
        "client-after-crash",
        "node-1",
        &format!("timeout 5 wget -qO- http://{ip}:8080/ | grep -q hostname={pod_name}"),
    )
    .context("after the agent restart, a new pod on node-1 reaching the old one")?;
    let after = ctx.kubectl.get(&["-n", NS, "pod", &pod_name])?;
    let after_status = first_status(&after);
    ensure!(
        after_status["containerID"] == before["containerID"]
            && after_status["restartCount"] == before["restartCount"]
            && is_ready(&after),
        "pod {pod_name} changed across the agent restart:\nbefore {before}\nafter {after_status}"
    );
    Ok(())
}

/// node-3 stops (its agent is killed): the node turns Ready=Unknown with the unreachable
/// taint, its pod is evicted after its toleration and replaced on another node; when the agent
/// returns the node is Ready again and the evicted pod is finally removed.
pub fn unreachable_node_pods_move(ctx: &Ctx) -> Result<()> {
    ctx.kubectl.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "mover", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "mover"}},
            "template": {
                "metadata": {"labels": {"app": "mover"}},
                "spec": {
                    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "preference": {"matchExpressions": [{
                            "key": "kubernetes.io/hostname", "operator": "In", "values": ["node-3"],
                        }]},
                    }]}},
                    "tolerations": [{
                        "key": "node.kubernetes.io/unreachable", "operator": "Exists",
                        "effect": "NoExecute", "tolerationSeconds": 2,
                    }],
                    "terminationGracePeriodSeconds": 2,
                    "containers": [echo_container(3600)],
                },
            },
        },
    }))?;
    let first = ctx.kubectl.wait_for(
        "the mover pod Running on node-3",
        &["-n", NS, "pods", "-l", "app=mover"],
        POD_TIMEOUT,
        |list| {
            items(list)
                .into_iter()
                .find(|p| p["spec"]["nodeName"] == "node-3" && is_ready(p))
                .map(|p| name(&p).to_string())
        },
    )?;
    let killed_at = SystemTime::now();
    restart::kill("agent node-3")?;
    // Lease grace (40 s by default) + tolerationSeconds + rescheduling.
    let limit = Duration::from_secs(120);
    ctx.kubectl.wait_for(
        "node-3 to turn Ready=Unknown with the unreachable taint",
        &["node", "node-3"],
        limit,
        |n| (node_state(n) == ("Unknown", true)).then_some(()),
    )?;
    let replacement = ctx.kubectl.wait_for(
        "a replacement mover pod Ready on another node",
        &["-n", NS, "pods", "-l", "app=mover"],
        limit,
        |list| {
            items(list)
                .into_iter()
                .find(|p| {
                    name(p) != first
                        && p["spec"]["nodeName"] != "node-3"
                        && p["metadata"]["deletionTimestamp"].is_null()
                        && is_ready(p)
                })
                .map(|p| name(&p).to_string())
        },
    )?;
    println!(
        "  {first} replaced by {replacement} {:.0} s after node-3's agent died",
        killed_at.elapsed().unwrap_or_default().as_secs_f64()
    );
    restart::start_again("agent node-3")?;
    ctx.kubectl.wait_for(
        "node-3 Ready again without the unreachable taint",
        &["node", "node-3"],
        limit,
        |n| (node_state(n) == ("True", false)).then_some(()),
    )?;
    ctx.kubectl.wait_for(
        &format!("the evicted pod {first} to be removed once node-3's agent is back"),
        &["-n", NS, "pods", "-l", "app=mover"],
        limit,
        |list| (!items(list).iter().any(|p| name(p) == first)).then_some(()),
    )?;
    ctx.kubectl
        .run(&["-n", NS, "delete", "deployment", "mover", "--wait=false"])?;
    Ok(())
}

/// `kubectl delete pod` of a pod with a preStop hook runs the hook, then SIGTERM, and returns
/// once the agent has confirmed the deletion. The container and its hook append to a file in a
/// hostPath directory of the cluster dir, which this process reads after the delete: the order
/// of the lines is the order things happened in.
pub fn graceful_delete_runs_prestop(ctx: &Ctx) -> Result<()> {
    let dir = crate::cluster::cluster_dir().join("e2e-prestop");
    // Left over from an earlier run of the suite.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let main = "trap 'echo term >> /out/order; exit 0' TERM; echo started > /out/order; \
                while true; do sleep 1; done";
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "prestop", "namespace": NS, "labels": {"role": "client"}},
        "spec": {
            "nodeName": "node-2",
            "terminationGracePeriodSeconds": 30,
            "volumes": [{"name": "out", "hostPath": {"path": dir, "type": "Directory"}}],
            "containers": [{
                "name": "main", "image": ECHO_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", main],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                "lifecycle": {"preStop": {"exec": {
                    "command": ["/bin/sh", "-c", "echo prestop >> /out/order"],
                }}},
            }],
        },
    }))?;
    ctx.kubectl.wait_for(
        "pod prestop to be Running",
        &["-n", NS, "pod", "prestop"],
        POD_TIMEOUT,
        |p| (p["status"]["phase"] == "Running").then_some(()),
    )?;
    // kubectl waits until the pod object is gone, i.e. the agent confirmed the deletion.
    ctx.kubectl.run(&["-n", NS, "delete", "pod", "prestop"])?;
    let order = std::fs::read_to_string(dir.join("order"))
        .with_context(|| format!("reading {}/order", dir.display()))?;
    ensure!(
        order == "started\nprestop\nterm\n",
        "expected the container to start, then the preStop hook, then SIGTERM; the pod wrote:\n{order}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
