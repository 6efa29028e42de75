//! `netlet-control-plane`: the small control plane beside the agents.
//!
//! Its job (filled in by the apiserver and scheduler/controllers issues): a Kubernetes REST API
//! that stock `kubectl` drives, storage (embedded default, and etcd), the scheduler, the
//! controllers and leader election. Every other component talks to it over HTTP only.
//!
//! # Layout
//!
//! - [`storage`]: the versioned key-value store under the apiserver, with etcd's semantics
//!   (revisions, optimistic concurrency, watch, compaction). `storage/mod.rs` holds the
//!   [`storage::Storage`] trait and its types; one file per backend: `embedded.rs` (SQLite, the
//!   default; its group-commit writer in `embedded/writer.rs`) and `memory.rs` (for tests);
//!   `watch.rs` is the watch fan-out they share.
//! - [`apiserver`]: the Kubernetes REST API over the storage, served over HTTPS with client
//!   certificates; its own Layout section maps its files. The binary (`src/main.rs`,
//!   `netlet-control-plane serve`) opens the embedded storage and runs it.
//! - [`scheduler`]: the scheduler, an API client (kube-rs watchers) with an in-memory cache;
//!   its Layout section maps its files.
//! - [`controllers`]: kube-controller-manager's core loops as ordinary API clients (kube-rs
//!   `Controller`s): node IPAM and lifecycle, EndpointSlices/Endpoints, ReplicaSet, Deployment,
//!   Job, DaemonSet, StatefulSet; [`controllers::run`] runs them all until cancelled.
//! - [`leader`]: Lease-based leader election that runs a task only while leading.

pub mod apiserver;
pub mod controllers;
pub mod leader;
pub mod scheduler;
pub mod storage;
