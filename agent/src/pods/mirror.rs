//! Mirror pods: the API's view of this node's static pods, as the kubelet keeps them.
//!
//! A mirror pod has the static pod's name, namespace, labels, annotations and spec, plus the
//! annotation `kubernetes.io/config.mirror: <hash>` and an ownerReference to this Node. The
//! static pod's worker writes its status there. The mirror is only a view: deleting it through
//! the API does not stop the static pod — the next check force-deletes what is left of it
//! (a bound pod is deleted gracefully) and creates it again. A mirror of another version of
//! the manifest (another hash) is replaced the same way.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client};

use super::static_pods::{annotation, is_mirror, CONFIG_HASH, CONFIG_MIRROR};
use super::worker::key;

/// Errors of keeping a mirror pod; logged, retried at the next check.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// An API call failed.
    #[error("{op} mirror pod {pod}: {source}")]
    Api {
        /// What was being done.
        op: &'static str,
        /// `namespace/name`.
        pod: String,
        /// The API error (boxed: it is large).
        #[source]
        source: Box<kube::Error>,
    },
    /// The Node is not in the API, so the mirror cannot be owned by it (the kubelet also
    /// waits for its Node).
    #[error("creating mirror pod {pod}: node {node} is not registered")]
    NoNode {
        /// `namespace/name`.
        pod: String,
        /// The node.
        node: String,
    },
    /// A pod of that name exists and is not a mirror pod: it is left alone.
    #[error("pod {0} exists and is not a mirror pod; not replacing it")]
    NotAMirror(String),
}

/// What [`sync_mirror`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorSync {
    /// The mirror was there and current.
    Unchanged,
    /// A mirror was created (it has no status yet).
    Created,
}

/// Makes the API hold a current mirror of static pod `pod` on node `node`.
pub async fn sync_mirror(
    client: &Client,
    node: &str,
    pod: &Pod,
) -> Result<MirrorSync, MirrorError> {
    let pods = api(client, pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let hash = annotation(pod, CONFIG_HASH).unwrap_or_default();
    let err = |op| {
        move |e| MirrorError::Api {
            op,
            pod: key(pod),
            source: Box::new(e),
        }
    };
    if let Some(m) = pods.get_opt(&name).await.map_err(err("reading"))? {
        if !is_mirror(&m) {
            return Err(MirrorError::NotAMirror(key(pod)));
        }
        if annotation(&m, CONFIG_MIRROR) == Some(hash) && m.metadata.deletion_timestamp.is_none() {
            return Ok(MirrorSync::Unchanged);
        }
        force_delete(&pods, &m).await.map_err(err("deleting"))?;
        tracing::info!(pod = %key(pod), "replacing the mirror pod");
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let owner = nodes
        .get_opt(node)
        .await
        .map_err(err("reading the node of"))?
        .ok_or_else(|| MirrorError::NoNode {
            pod: key(pod),
            node: node.into(),
        })?;
    let mut mirror = pod.clone();
    mirror.status = None;
    let m = &mut mirror.metadata;
    m.uid = None;
    m.resource_version = None;
    m.annotations
        .get_or_insert_with(Default::default)
        .insert(CONFIG_MIRROR.into(), hash.into());
    m.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: owner.metadata.uid.unwrap_or_default(),
        controller: Some(true),
        ..Default::default()
    }]);
    pods.create(&PostParams::default(), &mirror)
        .await
        .map_err(err("creating"))?;
    tracing::info!(pod = %key(pod), "mirror pod created");
    Ok(MirrorSync::Created)
}

/// Deletes the mirror of static pod `pod` (the manifest is gone), if there is one.
pub async fn delete_mirror(client: &Client, pod: &Pod) -> Result<(), MirrorError> {
    let pods = api(client, pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let err = |op| {
        move |e| MirrorError::Api {
            op,
            pod: key(pod),
            source: Box::new(e),
        }
    };
    match pods.get_opt(&name).await.map_err(err("reading"))? {
        Some(m) if is_mirror(&m) => {
            force_delete(&pods, &m).await.map_err(err("deleting"))?;
            tracing::info!(pod = %key(pod), "mirror pod deleted");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Deletes `m` at once (grace 0), only this uid; already gone counts as done.
async fn force_delete(pods: &Api<Pod>, m: &Pod) -> Result<(), kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: m.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods
        .delete(m.metadata.name.as_deref().unwrap_or_default(), &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The pods of `pod`'s namespace.
fn api(client: &Client, pod: &Pod) -> Api<Pod> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    Api::namespaced(client.clone(), ns)
}
