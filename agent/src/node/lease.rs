//! The node's heartbeat: a Lease `kube-node-lease/<node>` renewed every heartbeat.
//!
//! The node lifecycle controller reads `renewTime` to tell a live node from a dead one, which
//! lets the Node status be written rarely. The Lease is owned by the Node (an ownerReference
//! with the Node's uid), so deleting the Node garbage-collects it; a Lease deleted under us is
//! created again at the next renewal.

use super::registration::patch_params;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where node Leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// `leaseDurationSeconds` (the kubelet's `nodeLeaseDurationSeconds`): four missed renewals
/// before the node counts as gone.
pub const LEASE_DURATION_SECS: i32 = 40;

/// Why a renewal failed (logged, retried at the next heartbeat).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// An API call on the Lease or its owning Node failed.
    #[error("{op} Lease {LEASE_NAMESPACE}/{node}: {source}")]
    Api {
        /// What was attempted.
        op: &'static str,
        /// The node (and Lease) name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Renews one node's Lease.
pub struct NodeLease {
    leases: Api<Lease>,
    nodes: Api<Node>,
    node_name: String,
}

/// The ownerReference pointing at `node`.
fn owner_of(node: &Node) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.metadata.name.clone()?,
        uid: node.metadata.uid.clone()?,
        ..OwnerReference::default()
    })
}

impl NodeLease {
    /// A renewer for the Lease of `node_name`.
    pub fn new(client: Client, node_name: &str) -> Self {
        Self {
            leases: Api::namespaced(client.clone(), LEASE_NAMESPACE),
            nodes: Api::all(client),
            node_name: node_name.into(),
        }
    }

    fn err(&self, op: &'static str) -> impl FnOnce(kube::Error) -> LeaseError + '_ {
        move |source| LeaseError::Api {
            op,
            node: self.node_name.clone(),
            source,
        }
    }

    /// Renews the Lease once (creating it if missing); returns the renew time written.
    pub async fn renew(&self) -> Result<MicroTime, LeaseError> {
        let now = MicroTime(Timestamp::now());
        let existing = self
            .leases
            .get_opt(&self.node_name)
            .await
            .map_err(self.err("reading"))?;
        // The owning Node's uid is looked up only when the Lease has no Node owner yet (new, or
        // created before the Node existed), so a plain renewal is one read and one write.
        let has_owner = existing.as_ref().is_some_and(|l| {
            l.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Node" && o.name == self.node_name)
        });
        let owner = if has_owner {
            None
        } else {
            self.nodes
                .get_opt(&self.node_name)
                .await
                .map_err(self.err("reading the Node owning"))?
                .as_ref()
                .and_then(owner_of)
        };
        if existing.is_some() {
            let mut patch = json!({"spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": LEASE_DURATION_SECS,
                "renewTime": now,
            }});
            if let Some(owner) = owner {
                patch["metadata"] = json!({"ownerReferences": [owner]});
            }
            // A Lease deleted between our read and this write fails with 404 and is
            // recreated at the next renewal.
            self.leases
                .patch(&self.node_name, &patch_params(), &Patch::Merge(patch))
                .await
                .map_err(self.err("renewing"))?;
            return Ok(now);
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.node_name.clone()),
                namespace: Some(LEASE_NAMESPACE.into()),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node_name.clone()),
                lease_duration_seconds: Some(LEASE_DURATION_SECS),
                acquire_time: Some(now.clone()),
                renew_time: Some(now.clone()),
                ..LeaseSpec::default()
            }),
        };
        // A concurrent create (409) is renewed at the next round.
        self.leases
            .create(&PostParams::default(), &lease)
            .await
            .map_err(self.err("creating"))?;
        tracing::info!(node = %self.node_name, "created node Lease");
        Ok(now)
    }

    /// Renews every `interval` until `cancel` fires; failures are logged and retried.
    pub async fn run(self, interval: Duration, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.renew().await {
                tracing::warn!("{e}");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
