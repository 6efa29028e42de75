//! The controllers against our real apiserver. No kubelets run: the tests play the nodes' part
//! (bind pods by patching `spec.nodeName`, report them Running/Ready with a pod IP through the
//! status subresource, and finish graceful deletions).
//!
//! One module per controller family; `harness` starts the apiserver and the controllers.

#[path = "controllers/batch.rs"]
mod batch;
#[path = "controllers/endpoints.rs"]
mod endpoints;
#[path = "controllers/gc.rs"]
mod gc;
#[path = "controllers/harness.rs"]
mod harness;
#[path = "controllers/namespaces.rs"]
mod namespaces;
#[path = "controllers/nodes.rs"]
mod nodes;
#[path = "controllers/statefulsets.rs"]
mod statefulsets;
#[path = "controllers/workloads.rs"]
mod workloads;
