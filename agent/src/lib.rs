//! `netlet-agent`: the node daemon.
//!
//! Its job (filled in by the agent issue): register the Node and renew its Lease, run the pods
//! bound to this node through containerd's CRI, write the CNI config so containerd invokes
//! `netlet-cni`, route to other nodes' pod CIDRs and masquerade traffic leaving the cluster.
//! It also has a network-only mode for running as a DaemonSet beside another kubelet.
//!
//! # Layout
//! - [`config`]: the settings (defaults, JSON file, validation); `main.rs` maps flags onto them.
//! - [`node`]: registration, node status, Lease, CNI config and pod routes — one loop each.
//! - [`cri`]: the only module that speaks CRI — a `runtime.v1` client over containerd's unix
//!   socket; errors name the operation and the pod, container or image.
//! - [`pods`]: the pod manager ([`pods::run`]): watches the pods bound to this node, runs them
//!   (sandbox, init and app containers, lifecycle hooks, restarts with back-off, graceful
//!   deletion), runs static pods from manifest files with mirror pods, and writes their status
//!   and events.
//! - [`server`]: the node API (`/containerLogs`, `/healthz`) on a unix socket, for `kubectl logs`.
//! - [`service_proxy`]: `netlet-proxy`'s sync loop run in-process, in the node's namespace.
//! - [`metrics`]: the Prometheus text of the agent and its proxy (`metricsAddr`).
//! - `tests/cri_containerd.rs`: one pod's whole life on a containerd of the test's own,
//!   confined to an `nlt-` network namespace and a temp dir (`tests/support/containerd.rs`),
//!   with the images of `cargo xtask images`.
//! - `tests/node_routes.rs`: the route reconciler against a real routing table in an `nlt-`
//!   namespace, driven by Nodes in our apiserver.
//! - `tests/node_agent.rs`: the `netlet-agent` binary inside an `nlt-` namespace against our
//!   apiserver: registration, Lease, CNI config, routes.
//! - `tests/agent_proxy.rs`: the binary's in-process proxy programs Services in its namespace.
//! - `tests/pods.rs`: the pod manager on such a containerd against our apiserver;
//!   `tests/hooks.rs`: postStart/preStop hooks; `tests/static_pods.rs`: static pods from a
//!   manifest directory and their mirror pods.
//! - `tests/log_server.rs`: the node API on its unix socket over a temp dir of CRI log files;
//!   `tests/kubectl_logs.rs`: the stock `kubectl logs` through our apiserver to that socket.

pub mod config;
pub mod cri;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod server;
pub mod service_proxy;
