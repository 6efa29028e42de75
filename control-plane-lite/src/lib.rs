//! `netlet-control-plane`: the small control plane beside the agents.
//!
//! Its job (filled in by the apiserver and scheduler/controllers issues): a Kubernetes REST API
//! that stock `kubectl` drives, storage (embedded default, and etcd), the scheduler, the
//! controllers and leader election. Every other component talks to it over HTTP only.
//!
//! This crate is a placeholder so the workspace has its final shape; it serves nothing yet.
