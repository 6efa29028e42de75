//! The node side of the agent: everything that makes this machine a Kubernetes node with
//! working pod networking, apart from running pods.
//!
//! Each concept is one file and one loop; `main.rs` runs the loops side by side until shutdown.
//! - [`registration`]: create or adopt the Node, write its status when it changes
//!   ([`status`] builds it from [`sysinfo`], [`runtime`] readiness and the CNI config).
//! - [`lease`]: the `kube-node-lease` heartbeat.
//! - [`cni_config`]: the conflist for this node's `spec.podCIDR`.
//! - [`routes`]: routes to other nodes' pod CIDRs over the [`route_table`] kernel edge.
//! - [`address`]: the node IP when none is configured.

pub mod address;
pub mod cni_config;
pub mod lease;
pub mod registration;
pub mod route_table;
pub mod routes;
pub mod runtime;
pub mod status;
pub mod sysinfo;
