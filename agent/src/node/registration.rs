//! Registering this node and keeping its status current.
//!
//! The Node is created if absent and adopted if present (our labels merged in, nothing else of
//! its metadata or spec touched). Then every heartbeat the agent recomputes the status and
//! writes it through the `status` subresource when it changed — a condition flipped, an address
//! or the runtime version changed — or when the report interval passed; in between, liveness is
//! the Lease's job, as with the kubelet's `nodeStatusReportFrequency`. Each heartbeat reads the
//! Node (one GET, as the kubelet does), so the comparison is with what the apiserver holds and
//! a Node deleted behind the agent's back is registered again.

use super::cni_config::missing_plugins;
use super::runtime::RuntimeProbe;
use super::status::{
    desired_status, differs_beyond_heartbeat, node_labels, ready_status, StatusInputs,
};
use super::sysinfo::SystemInfo;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Field manager name for our writes, so server-side apply and `managedFields` show who
/// wrote what.
pub const FIELD_MANAGER: &str = "netlet-agent";

/// Why registering or reporting failed (the loop logs these and retries).
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// Reading, creating or patching the Node failed.
    #[error("{op} Node {node}: {source}")]
    Api {
        /// What was attempted.
        op: &'static str,
        /// The node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Whether a kube error is the apiserver's 409 (already exists / conflict).
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Creates the Node `name` with `labels` and `annotations`, or merges them into the existing
/// one (annotations carry what the apiserver needs to reach this agent, e.g. its socket). An
/// annotation mapped to `None` is removed: what an earlier run of the agent set and this one
/// must not leave behind.
pub async fn ensure_node(
    api: &Api<Node>,
    name: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, Option<String>>,
) -> Result<Node, RegistrationError> {
    let err = |op| {
        move |source| RegistrationError::Api {
            op,
            node: name.to_string(),
            source,
        }
    };
    match api.get_opt(name).await.map_err(err("reading"))? {
        Some(existing) => {
            fn contains<'a>(
                have: &Option<BTreeMap<String, String>>,
                mut want: impl Iterator<Item = (&'a String, Option<&'a String>)>,
            ) -> bool {
                let have = have.as_ref();
                want.all(|(k, v)| have.and_then(|h| h.get(k)) == v)
            }
            if contains(
                &existing.metadata.labels,
                labels.iter().map(|(k, v)| (k, Some(v))),
            ) && contains(
                &existing.metadata.annotations,
                annotations.iter().map(|(k, v)| (k, v.as_ref())),
            ) {
                return Ok(existing);
            }
            tracing::info!(
                node = name,
                "adopting existing Node, adding our labels and annotations"
            );
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels, "annotations": annotations}})),
            )
            .await
            .map_err(err("labelling"))
        }
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels.clone()),
                    annotations: Some(
                        annotations
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                            .collect::<BTreeMap<_, _>>(),
                    )
                    .filter(|a| !a.is_empty()),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            };
            match api.create(&PostParams::default(), &node).await {
                Ok(n) => {
                    tracing::info!(node = name, "registered Node");
                    Ok(n)
                }
                // Someone (an admin, a previous agent) created it in between: adopt it.
                Err(e) if is_conflict(&e) => api.get(name).await.map_err(err("reading")),
                Err(e) => Err(err("creating")(e)),
            }
        }
    }
}

/// The status reporter of one node.
pub struct Registration {
    /// Nodes API.
    pub api: Api<Node>,
    /// This node's name.
    pub node_name: String,
    /// Its InternalIP.
    pub node_ip: Ipv4Addr,
    /// The machine.
    pub sys: SystemInfo,
    /// The container runtime, when this agent runs pods; `None`: readiness is the CNI
    /// config's alone.
    pub runtime: Option<Arc<RuntimeProbe>>,
    /// Whether the CNI config for this node's pod CIDR is in place.
    pub cni_ready: watch::Receiver<bool>,
    /// Where the CNI plugins the config names must be installed.
    pub cni_bin_dir: PathBuf,
    /// How often the status is recomputed.
    pub heartbeat: Duration,
    /// How long an unchanged status may go unwritten.
    pub report_interval: Duration,
    /// Annotations kept on the Node, e.g. [`crate::server::SOCKET_ANNOTATION`] with the node
    /// API's socket path; `None`: kept off the Node.
    pub annotations: BTreeMap<String, Option<String>>,
}

impl Registration {
    /// Registers the node and reports its status until `cancel` fires. Errors are logged
    /// and retried at the next heartbeat.
    pub async fn run(mut self, cancel: CancellationToken) {
        let labels = node_labels(&self.node_name, self.sys.architecture);
        // When we last wrote the status; `None`: not yet (by this process).
        let mut last_write: Option<Instant> = None;
        loop {
            match self.sync(&labels, last_write).await {
                Ok(true) => last_write = Some(Instant::now()),
                Ok(false) => {}
                Err(e) => tracing::warn!("{e}"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.heartbeat) => {}
                // A CNI config just appeared or vanished: report it now, not a heartbeat later.
                r = self.cni_ready.changed() => {
                    if r.is_err() {
                        // The CNI config task ended (shutdown): nothing more to report.
                        cancel.cancelled().await;
                        return;
                    }
                }
            }
        }
    }

    /// One heartbeat: makes sure the Node exists (registering it again if it was deleted),
    /// computes the status and writes it if due; returns whether it wrote.
    async fn sync(
        &self,
        labels: &BTreeMap<String, String>,
        last_write: Option<Instant>,
    ) -> Result<bool, RegistrationError> {
        let node = ensure_node(&self.api, &self.node_name, labels, &self.annotations).await?;
        let current = node.status.unwrap_or_default();
        let mut problems = Vec::new();
        let mut runtime_version = None;
        if let Some(probe) = &self.runtime {
            let state = probe.check().await;
            runtime_version = state.version;
            problems.extend(state.problem);
        }
        if !*self.cni_ready.borrow() {
            problems.push(
                "network plugin not ready: no CNI config yet (waiting for the Node's spec.podCIDR)"
                    .to_string(),
            );
        }
        for plugin in missing_plugins(&self.cni_bin_dir) {
            problems.push(format!(
                "network plugin not ready: CNI plugin {} is not installed",
                plugin.display()
            ));
        }
        // Whole seconds: the API stores no more, and a fraction would make every comparison
        // with the stored status differ.
        let now =
            Time(Timestamp::from_second(Timestamp::now().as_second()).expect("now is in range"));
        let status = desired_status(
            &StatusInputs {
                node_name: &self.node_name,
                node_ip: self.node_ip,
                sys: &self.sys,
                runtime_version: runtime_version.as_deref(),
                problems: &problems,
            },
            current.conditions.as_deref(),
            &now,
        );
        let due = differs_beyond_heartbeat(&current, &status)
            || last_write.is_none_or(|at| at.elapsed() >= self.report_interval);
        if !due {
            return Ok(false);
        }
        self.api
            .patch_status(
                &self.node_name,
                &patch_params(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(|source| RegistrationError::Api {
                op: "updating status of",
                node: self.node_name.clone(),
                source,
            })?;
        tracing::debug!(node = %self.node_name, ready = problems.is_empty(), "node status written");
        if ready_status(&current) != ready_status(&status) {
            tracing::info!(node = %self.node_name, ready = problems.is_empty(), problems = ?problems, "node readiness");
        }
        Ok(true)
    }
}

/// Patch parameters naming us as the field manager.
pub(crate) fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}
