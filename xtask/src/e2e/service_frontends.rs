//! Service frontends beyond the ClusterIP: a node port reached from the host outside the
//! cluster (masqueraded with `externalTrafficPolicy: Cluster`, the client's address kept and
//! only the node's own pod used with `Local`), and a pod reaching itself through its Service
//! (hairpin, masqueraded). They use the `echo` Deployment (one pod per node).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;

use super::scenarios::{name, running_pods, Ctx, NS, POD_TIMEOUT};
use crate::cluster::underlay;
use crate::images::ECHO_IMAGE;
use crate::util;

/// How long a frontend may take to answer after its Service appeared (the proxies' debounce
/// and the EndpointSlice controller).
const PROGRAMMED_WITHIN: Duration = Duration::from_secs(30);

/// One answer of the echo app: which pod served, and the client address it saw.
#[derive(Debug)]
struct Answer {
    hostname: String,
    client: Ipv4Addr,
}

fn parse_answer(body: &str) -> Option<Answer> {
    let mut hostname = None;
    let mut client = None;
    for word in body.split_whitespace() {
        if let Some(h) = word.strip_prefix("hostname=") {
            hostname = Some(h.to_string());
        } else if let Some(c) = word.strip_prefix("client=") {
            client = c.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok());
        }
    }
    Some(Answer {
        hostname: hostname?,
        client: client?,
    })
}

/// `GET url` from the host outside the cluster (busybox wget in its namespace).
fn get_from_outside(url: &str) -> Result<Answer> {
    let out = Command::new("ip")
        .args(["netns", "exec", &underlay::outside_ns()])
        .args(["timeout", "5", "/bin/busybox", "wget", "-qO-", url])
        .output()
        .context("running wget in the outside namespace")?;
    let body = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "GET {url} from outside failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_answer(&body).with_context(|| format!("GET {url}: unexpected answer {body:?}"))
}

/// Creates Service `svc` for the echo pods with `spec` merged in; returns it as the API has it.
fn echo_service(ctx: &Ctx, svc: &str, spec: serde_json::Value) -> Result<serde_json::Value> {
    let mut full = json!({
        "selector": {"app": "echo"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    });
    if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(extra.clone());
    }
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc, "namespace": NS},
        "spec": full,
    }))?;
    ctx.kubectl.get(&["-n", NS, "service", svc])
}

/// Requests `url` from outside `n` times (after the first answer), returning the answers.
fn answers_from_outside(url: &str, n: usize) -> Result<Vec<Answer>> {
    let mut last = None;
    let first = util::poll(
        PROGRAMMED_WITHIN,
        Duration::from_millis(500),
        || match get_from_outside(url) {
            Ok(a) => Some(a),
            Err(e) => {
                last = Some(e);
                None
            }
        },
    );
    let first = match (first, last) {
        (Some(a), _) => a,
        (None, Some(e)) => return Err(e.context(format!("{url} never answered"))),
        (None, None) => anyhow::bail!("{url} never answered"),
    };
    let mut out = vec![first];
    for _ in 1..n {
        out.push(get_from_outside(url)?);
    }
    Ok(out)
}

fn node_port(svc: &serde_json::Value) -> Result<u64> {
    svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .context("the Service got no nodePort")
}

/// A NodePort Service (`externalTrafficPolicy: Cluster`) answers on a node's address from
/// outside the cluster, from pods on several nodes, and the pods never see the outside
/// client's address.
pub fn node_port_from_outside_is_masqueraded(ctx: &Ctx) -> Result<()> {
    running_pods(ctx, "app=echo", usize::from(ctx.nodes))?;
    let svc = echo_service(ctx, "echo-nodeport", json!({"type": "NodePort"}))?;
    let url = format!("http://{}:{}/", underlay::node_ip(1), node_port(&svc)?);
    let answers = answers_from_outside(&url, 12)?;
    let outside = underlay::outside_ip();
    ensure!(
        answers.iter().all(|a| a.client != outside),
        "node port traffic must be masqueraded: {answers:?}"
    );
    let served: std::collections::BTreeSet<&str> =
        answers.iter().map(|a| a.hostname.as_str()).collect();
    ensure!(
        served.len() >= 2,
        "12 requests all went to one pod, expected a spread over the nodes: {answers:?}"
    );
    ctx.kubectl
        .run(&["-n", NS, "delete", "service", "echo-nodeport"])?;
    Ok(())
}

/// With `externalTrafficPolicy: Local` a node port serves only from the node's own pod and
/// the pod sees the outside client's real address.
pub fn node_port_local_policy_keeps_source(ctx: &Ctx) -> Result<()> {
    let pods = running_pods(ctx, "app=echo", usize::from(ctx.nodes))?;
    let on_node_1: Vec<&str> = pods
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "node-1")
        .map(name)
        .collect();
    ensure!(
        on_node_1.len() == 1,
        "expected one echo pod on node-1, found {on_node_1:?}"
    );
    let svc = echo_service(
        ctx,
        "echo-local",
        json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
    )?;
    let url = format!("http://{}:{}/", underlay::node_ip(1), node_port(&svc)?);
    let answers = answers_from_outside(&url, 8)?;
    let outside = underlay::outside_ip();
    ensure!(
        answers
            .iter()
            .all(|a| a.client == outside && a.hostname == on_node_1[0]),
        "every answer must come from {} and see the client {outside}: {answers:?}",
        on_node_1[0]
    );
    ctx.kubectl
        .run(&["-n", NS, "delete", "service", "echo-local"])?;
    Ok(())
}

/// A pod reaching itself through its own Service is answered by itself, masqueraded (its own
/// address as the source would be dropped by its kernel).
pub fn hairpin_through_service(ctx: &Ctx) -> Result<()> {
    let pod = "hairpin";
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": NS, "labels": {"app": "hairpin", "role": "client"}},
        "spec": {
            "nodeName": "node-2",
            "containers": [{
                "name": "echo", "image": ECHO_IMAGE, "imagePullPolicy": "Never",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
            }],
        },
    }))?;
    ctx.kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": pod, "namespace": NS},
        "spec": {"selector": {"app": "hairpin"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }))?;
    let p = ctx.kubectl.wait_for(
        "the hairpin pod to be Ready",
        &["-n", NS, "pod", pod],
        POD_TIMEOUT,
        |p| super::scenarios::is_ready(p).then(|| p.clone()),
    )?;
    let own_ip = p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let svc = ctx.kubectl.get(&["-n", NS, "service", pod])?;
    let vip = svc["spec"]["clusterIP"]
        .as_str()
        .context("the hairpin Service has no clusterIP")?
        .to_string();
    let script = format!(
        "for i in $(seq 1 30); do out=$(timeout 5 wget -qO- http://{vip}/) && break; sleep 1; done; echo \"$out\""
    );
    let out = ctx
        .kubectl
        .run(&["-n", NS, "exec", pod, "--", "sh", "-c", &script])?;
    let answer = parse_answer(&out).with_context(|| format!("hairpin GET: {out:?}"))?;
    ensure!(
        answer.hostname == pod && answer.client.to_string() != own_ip,
        "the pod must reach itself, masqueraded (own address {own_ip}): {answer:?}"
    );
    ctx.kubectl
        .run(&["-n", NS, "delete", "service", pod, "--wait=false"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_answers_parse() {
        let a = parse_answer("hostname=echo-1 client=10.244.1.1:40000\n").unwrap();
        assert_eq!(a.hostname, "echo-1");
        assert_eq!(a.client, Ipv4Addr::new(10, 244, 1, 1));
        assert!(parse_answer("nothing here").is_none());
    }
}
