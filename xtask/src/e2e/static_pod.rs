//! e2e scenario: a static pod (a manifest in a node's `--pod-manifest-path`) runs on its node
//! and appears in the API as a mirror pod, and removing the manifest stops it.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::scenarios::{items, Ctx, NS, POD_TIMEOUT};
use crate::cluster::manifests_dir;
use crate::images::ECHO_IMAGE;

/// The node the static pod runs on.
const NODE: u8 = 1;

/// Writes a manifest into node-1's manifest dir, waits for the Running mirror pod
/// `<name>-node-1` owned by the Node, then removes the manifest and waits for the mirror pod
/// to go.
pub fn static_pod_has_mirror(ctx: &Ctx) -> Result<()> {
    let manifest = manifests_dir(NODE).join("static-web.json");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "static-web", "namespace": NS, "labels": {"role": "static"}},
        "spec": {"containers": [{
            "name": "echo", "image": ECHO_IMAGE, "imagePullPolicy": "Never",
            "ports": [{"containerPort": 8080}],
        }]},
    });
    std::fs::write(&manifest, serde_json::to_vec_pretty(&pod)?)
        .with_context(|| format!("writing {}", manifest.display()))?;
    let mirror = format!("static-web-node-{NODE}");
    let seen = ctx.kubectl.wait_for(
        &format!("mirror pod {mirror} to be Running"),
        &["-n", NS, "pod", &mirror],
        POD_TIMEOUT,
        |p| (p["status"]["phase"] == "Running").then(|| p.clone()),
    );
    // Removed whatever happened, so the node does not keep running it.
    std::fs::remove_file(&manifest).with_context(|| format!("removing {}", manifest.display()))?;
    let seen = seen?;
    check_mirror(&seen, &mirror)?;
    ctx.kubectl.wait_for(
        &format!("mirror pod {mirror} to go once its manifest is removed"),
        &["-n", NS, "pods", "-l", "role=static"],
        POD_TIMEOUT,
        |list| items(list).is_empty().then_some(()),
    )
}

/// The mirror pod is marked as one, bound to its node and owned by the Node object.
fn check_mirror(p: &Value, name: &str) -> Result<()> {
    let annotations = &p["metadata"]["annotations"];
    ensure!(
        annotations["kubernetes.io/config.mirror"].is_string()
            && annotations["kubernetes.io/config.source"] == "file",
        "{name} lacks the mirror/source annotations: {annotations}"
    );
    let node = format!("node-{NODE}");
    ensure!(
        p["spec"]["nodeName"] == node.as_str(),
        "{name} is bound to {} instead of {node}",
        p["spec"]["nodeName"]
    );
    let owner = &p["metadata"]["ownerReferences"][0];
    ensure!(
        owner["kind"] == "Node" && owner["name"] == node.as_str(),
        "{name} is not owned by Node {node}: {}",
        p["metadata"]["ownerReferences"]
    );
    Ok(())
}
