//! Node lifecycle: a node whose kubelet has not posted a heartbeat (Ready condition
//! `lastHeartbeatTime` or its Lease in `kube-node-lease`) for the node-monitor grace period gets
//! `Ready=Unknown` and the `node.kubernetes.io/unreachable:NoExecute` taint; its pods are
//! evicted once their toleration of that taint runs out (pods without one get the default
//! `tolerationSeconds`, as the DefaultTolerationSeconds admission plugin would have given them).
//! When heartbeats resume the taint is removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use serde_json::json;

use super::daemonset::tolerates;
use super::{pods, ControllerError, ControllersConfig};

/// The taint of a node whose kubelet stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

struct Ctx {
    client: Client,
    grace: Duration,
    default_toleration: i64,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The newest sign of life: Ready heartbeat or Lease renewal; the node's creation if it never
/// reported.
fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let ready = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let created = || node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    ready.max(renewed).or_else(created)
}

/// Time from `now` to `later` (zero if already past).
fn until(later: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(later.duration_since(now)).unwrap_or_default()
}

/// When a pod on a node tainted at `tainted_at` must go: `None` for never.
fn eviction_time(
    pod: &Pod,
    taint: &Taint,
    tainted_at: Timestamp,
    default_secs: i64,
) -> Option<Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let seconds = match tolerations.iter().find(|t| tolerates(t, taint)) {
        Some(t) => t.toleration_seconds?,
        None => default_secs,
    };
    Some(tainted_at + Duration::from_secs(seconds.max(0) as u64))
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let object = format!("node {name}");
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let lease = Api::<Lease>::namespaced(ctx.client.clone(), "kube-node-lease")
        .get_opt(&name)
        .await
        .map_err(ControllerError::kube("get lease of", object.clone()))?;
    let now = Timestamp::now();
    let heartbeat = last_heartbeat(&node, lease.as_ref()).unwrap_or(now);
    let deadline = heartbeat + ctx.grace;
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tainted = taints
        .iter()
        .find(|t| t.key == UNREACHABLE_TAINT && t.effect == "NoExecute")
        .cloned();

    if now < deadline {
        if tainted.is_some() {
            tracing::info!(node = %name, "node reports again; removing unreachable taint");
            let rest: Vec<&Taint> = taints
                .iter()
                .filter(|t| t.key != UNREACHABLE_TAINT)
                .collect();
            let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
                               "spec": {"taints": rest}});
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(ControllerError::kube("untaint", object.clone()))?;
        }
        // Look again when the grace period would run out.
        return Ok(Action::requeue(
            until(deadline, now) + Duration::from_millis(100),
        ));
    }

    if ready_condition(&node).is_none_or(|c| c.status != "Unknown") {
        tracing::warn!(node = %name, grace = ?ctx.grace, "node stopped posting status; marking Ready=Unknown");
        let mut conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        conditions.retain(|c| c.type_ != "Ready");
        conditions.push(NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            reason: Some("NodeStatusUnknown".into()),
            message: Some("Kubelet stopped posting node status.".into()),
            last_heartbeat_time: ready_condition(&node).and_then(|c| c.last_heartbeat_time.clone()),
            last_transition_time: Some(Time(now)),
        });
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conditions}})),
            )
            .await
            .map_err(ControllerError::kube(
                "mark Ready=Unknown on",
                object.clone(),
            ))?;
    }
    let taint = match tainted {
        Some(t) => t,
        None => {
            let t = Taint {
                key: UNREACHABLE_TAINT.into(),
                effect: "NoExecute".into(),
                time_added: Some(Time(now)),
                value: None,
            };
            let mut all = taints.clone();
            all.push(t.clone());
            let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
                               "spec": {"taints": all}});
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(ControllerError::kube("taint unreachable", object.clone()))?;
            t
        }
    };
    let tainted_at = taint.time_added.as_ref().map_or(now, |t| t.0);
    let on_node = Api::<Pod>::all(ctx.client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await
        .map_err(ControllerError::kube("list pods on", object.clone()))?
        .items;
    let mut next: Option<Timestamp> = None;
    for pod in on_node.iter().filter(|p| !pods::is_terminating(p)) {
        let Some(at) = eviction_time(pod, &taint, tainted_at, ctx.default_toleration) else {
            continue;
        };
        if at > now {
            next = Some(next.map_or(at, |n| n.min(at)));
            continue;
        }
        let (ns, pod_name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        tracing::info!(node = %name, pod = %format!("{ns}/{pod_name}"), "evicting pod from unreachable node");
        match Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .delete(&pod_name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if super::is_not_found(&e) => {}
            Err(e) => {
                return Err(ControllerError::kube(
                    "evict pod",
                    format!("{ns}/{pod_name}"),
                )(e))
            }
        }
    }
    // Pods may be bound to the node later, and heartbeats may resume: look again regularly.
    let again = next.map_or(ctx.grace, |n| until(n, now).min(ctx.grace));
    Ok(Action::requeue(again + Duration::from_millis(100)))
}

/// The controller future (runs until its watch ends).
pub async fn run(client: Client, config: ControllersConfig) {
    let controller = Controller::new(Api::<Node>::all(client.clone()), watcher::Config::default());
    let ctx = Arc::new(Ctx {
        client,
        grace: config.node_monitor_grace_period,
        default_toleration: config.default_toleration_seconds,
    });
    super::drain(
        "node-lifecycle",
        controller.run(reconcile, super::on_error, ctx),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_follows_tolerations() {
        let taint = Taint {
            key: UNREACHABLE_TAINT.into(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        let t0 = Timestamp::now();
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [], "tolerations": tolerations}}))
                .unwrap()
        };
        assert_eq!(
            eviction_time(&pod(json!([])), &taint, t0, 300),
            Some(t0 + Duration::from_secs(300))
        );
        let short = pod(
            json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
        );
        assert_eq!(
            eviction_time(&short, &taint, t0, 300),
            Some(t0 + Duration::from_secs(5))
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_time(&forever, &taint, t0, 300), None);
    }
}
