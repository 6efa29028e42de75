//! Controllers: ordinary API clients (kube-rs `Controller` over watchers and reflector stores)
//! that turn declared objects into the objects and fields that implement them.
//!
//! # Layout
//!
//! - [`node_ipam`]: gives each Node a free pod CIDR from the cluster CIDR.
//! - [`node_lifecycle`]: Ready=Unknown, the unreachable taint and pod eviction for silent nodes.
//! - [`endpoints`]: EndpointSlices and core/v1 Endpoints for every Service with a selector.
//! - [`replicaset`]: creates and deletes Pods to match a ReplicaSet's replicas.
//! - [`deployment`]: rolls Deployments out through ReplicaSets (RollingUpdate and Recreate).
//! - [`job`]: runs a Job's pods to completion (completions, parallelism, backoffLimit).
//! - [`daemonset`]: one pod per eligible node, pinned by node affinity.
//! - [`statefulset`]: pods with stable names and ordinals, OrderedReady or Parallel, rolling
//!   updates with a partition; `statefulset_plan.rs` holds its pure decisions.
//! - [`garbage_collector`]: deletes objects whose owners are gone; Foreground and Orphan
//!   deletions.
//! - `rollout.rs`: the rollout arithmetic (surge/unavailable, template hash), pure.
//! - `selector.rs`, `pods.rs`, `owner.rs`: label selectors, pod state and owner references the
//!   controllers share.
//! - `workload.rs`: what the workload controllers share: identity, selector query, listing owned
//!   children, pods from templates, pod deletion, status patches.
//! - `shared_watch.rs`: the one pod watch whose objects every pod-driven controller receives.
//!
//! [`run`] starts them all on one client and stops them when its token is cancelled.

pub mod daemonset;
mod daemonset_update;
pub mod deployment;
pub mod endpoints;
pub mod garbage_collector;
mod history;
pub mod job;
mod job_index;
pub mod node_ipam;
pub mod node_lifecycle;
mod owner;
mod pods;
pub mod replicaset;
mod rollout;
pub(crate) mod selector;
mod shared_watch;
pub mod statefulset;
mod statefulset_plan;
mod workload;

use std::time::Duration;

use futures::{Future, StreamExt};
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{self, Action};
use kube::Resource;
use serde::{Deserialize, Serialize};
use shared_watch::SharedWatch;
use tokio_util::sync::CancellationToken;

/// What the controllers are told at start; every field has the upstream default so the binary
/// can expose them as flags and a config file can omit them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "camelCase", default)]
pub struct ControllersConfig {
    /// The range node pod CIDRs are carved from (kube-controller-manager `--cluster-cidr`).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Network,
    /// Prefix length of each node's pod CIDR (`--node-cidr-mask-size`).
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// How long a node may go without a heartbeat before it counts as unreachable
    /// (`--node-monitor-grace-period`).
    #[arg(long, value_parser = parse_seconds, default_value = "40")]
    #[serde(with = "seconds")]
    pub node_monitor_grace_period: Duration,
    /// The `tolerationSeconds` given to pods for the not-ready and unreachable taints when they
    /// do not set their own (the DefaultTolerationSeconds admission default).
    #[arg(long, default_value_t = 300)]
    pub default_toleration_seconds: i64,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        Self {
            cluster_cidr: Ipv4Network::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16)
                .expect("valid default cluster CIDR"),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(40),
            default_toleration_seconds: 300,
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.trim_end_matches('s').parse().map(Duration::from_secs)
}

/// Durations as whole seconds in config files.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Why a controller could not do its work; each variant names the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// An API call failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What was attempted (`create pod`, `patch node`, ...).
        action: &'static str,
        /// `namespace/name` or name of the object.
        object: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The node CIDR mask does not fit inside the cluster CIDR.
    #[error("node CIDR mask /{mask} does not fit in cluster CIDR {cluster}")]
    InvalidMask {
        /// The cluster CIDR.
        cluster: Ipv4Network,
        /// The requested per-node prefix length.
        mask: u8,
    },
    /// Every node-sized block of the cluster CIDR is taken.
    #[error("no free /{mask} left in cluster CIDR {cluster} for node {node}")]
    CidrExhausted {
        /// The node that got none.
        node: String,
        /// The cluster CIDR.
        cluster: Ipv4Network,
        /// The per-node prefix length.
        mask: u8,
    },
    /// An object's label selector cannot be expressed as a query.
    #[error("invalid selector on {object}: {reason}")]
    InvalidSelector {
        /// `namespace/name` of the owner.
        object: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An object lacks a field the controller needs (name, uid, namespace, spec).
    #[error("{object} has no {field}")]
    MissingField {
        /// `namespace/name` of the object.
        object: String,
        /// The missing field.
        field: &'static str,
    },
}

impl ControllerError {
    /// Wraps a client error with the action and object it failed on.
    pub(crate) fn kube(
        action: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Self {
        let object = object.into();
        move |source| Self::Kube {
            action,
            object,
            source,
        }
    }
}

/// Whether a client error is the apiserver's 404 (already gone is fine when deleting).
pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// `namespace/name` of an object, for logs and errors.
pub(crate) fn key<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// Retry delay after a failed reconcile: short enough for tests, long enough not to spin.
pub(crate) const ERROR_REQUEUE: Duration = Duration::from_secs(2);

/// The error policy all controllers share: log and retry after [`ERROR_REQUEUE`].
pub(crate) fn on_error<K: Resource, C>(
    obj: std::sync::Arc<K>,
    err: &ControllerError,
    _ctx: std::sync::Arc<C>,
) -> Action {
    tracing::warn!(object = %key(obj.as_ref()), error = %err, "reconcile failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

/// Drains a controller's result stream, logging failures the error policy did not see
/// (watch errors, queue errors).
pub(crate) async fn drain<S, K, E, Q>(name: &'static str, stream: S)
where
    S: futures::Stream<
        Item = Result<(kube::runtime::reflector::ObjectRef<K>, Action), controller::Error<E, Q>>,
    >,
    K: Resource,
    E: std::error::Error + 'static,
    Q: std::error::Error + 'static,
{
    stream
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::trace!(controller = name, object = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(err) => tracing::warn!(controller = name, error = %err, "controller watch or queue failed"),
            }
        })
        .await;
}

/// Runs every controller on `client` until `cancel` is cancelled; fails early only on a config
/// that cannot work (a node CIDR mask that does not fit the cluster CIDR).
pub async fn run(
    client: kube::Client,
    config: ControllersConfig,
    cancel: CancellationToken,
) -> Result<(), ControllerError> {
    let ipam = node_ipam::run(client.clone(), &config)?;
    tracing::info!(cluster_cidr = %config.cluster_cidr, "controllers started");
    // One task per controller: joined in one future, their state machines added up to more
    // than a tokio worker's 2 MiB stack in debug builds (it overflowed once the StatefulSet
    // controller joined). Dropping the set (on cancel) aborts them all.
    let mut set = tokio::task::JoinSet::new();
    // One pod watch for the five controllers that react to pods.
    let mut pods = SharedWatch::new(kube::Api::<Pod>::all(client.clone()));
    set.spawn(ipam);
    set.spawn(endpoints::run(client.clone(), pods.subscribe()));
    set.spawn(replicaset::run(client.clone(), pods.subscribe()));
    set.spawn(deployment::run(client.clone()));
    set.spawn(job::run(client.clone(), pods.subscribe()));
    set.spawn(daemonset::run(client.clone(), pods.subscribe()));
    set.spawn(statefulset::run(client.clone(), pods.subscribe()));
    set.spawn(pods.run());
    set.spawn(node_lifecycle::run(client.clone(), config.clone()));
    set.spawn(garbage_collector::run(client.clone()));
    let all = async move { while set.join_next().await.is_some() {} };
    until_cancelled(all, cancel).await;
    tracing::info!("controllers stopped");
    Ok(())
}

/// Runs `fut` until it ends or `cancel` fires.
async fn until_cancelled(fut: impl Future<Output = ()>, cancel: CancellationToken) {
    tokio::select! {
        _ = fut => {}
        _ = cancel.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_upstream() {
        let c = ControllersConfig::default();
        assert_eq!(c.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.node_cidr_mask_size, 24);
        assert_eq!(c.node_monitor_grace_period, Duration::from_secs(40));
        assert_eq!(c.default_toleration_seconds, 300);
        let parsed: ControllersConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, c);
        let round: ControllersConfig =
            serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn clap_defaults_match_serde_defaults() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            c: ControllersConfig,
        }
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.c, ControllersConfig::default());
        let cli = Cli::parse_from([
            "x",
            "--cluster-cidr",
            "10.0.0.0/8",
            "--node-monitor-grace-period",
            "10s",
        ]);
        assert_eq!(cli.c.cluster_cidr.to_string(), "10.0.0.0/8");
        assert_eq!(cli.c.node_monitor_grace_period, Duration::from_secs(10));
    }
}
