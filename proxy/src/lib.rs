//! `netlet-proxy`: the service proxy.
//!
//! It turns Services and EndpointSlices into a desired service table (pure code) and programs
//! it through one [`backend::Backend`] trait, with one implementation per dataplane, chosen by
//! config. [`sync_loop`] keeps a backend in step with the apiserver through the generic
//! [`watch`] helper, and after each sync deletes stale UDP conntrack entries ([`conntrack`]).
//!
//! # Layout
//! - [`model`]: the [`ServiceTable`] and its construction from Kubernetes objects (pure).
//! - [`config`]: [`ProxyConfig`], the node facts rendering depends on.
//! - [`backend`]: the [`Backend`] trait, the factory, and one module per dataplane:
//!   [`backend::iptables`] (render in `render.rs`, kernel edge in `cli.rs`),
//!   [`backend::nftables`] (pure elements in `render.rs`, fixed rules in `base.rs`, netlink in
//!   `netlink.rs`/`expr.rs`, diffing in `apply.rs`), [`backend::none`].
//! - [`conntrack`]: which UDP conntrack entries a table change makes stale (pure) and their
//!   deletion over ctnetlink (`conntrack/ctnetlink.rs`).
//! - [`exec`]: running kernel tools in the current or a given network namespace.
//! - [`health_check`]: the healthCheckNodePort HTTP server of `externalTrafficPolicy: Local`
//!   LoadBalancer Services (backend-independent, run by the sync loop).
//! - [`hash`]: stable short names for kernel objects.
//! - [`watch`]: generic kube-rs watch of two kinds into stores, debounced, calling back with the
//!   changed keys (meant to be shared by other controllers).
//! - [`sync_loop`]: the proxy's use of it: stores → [`ServiceTable`] → full or partial sync;
//!   [`sync_loop::SyncMetrics`] for the binary's metrics endpoint.
//! - [`setup`]: backend and syncer construction from node settings, shared by the
//!   `netlet-proxy` binary and `netlet-agent` (which runs the proxy in-process).
//! - [`metrics_http`]: the tiny Prometheus text endpoint both binaries serve.
//! - [`error`]: the crate's [`Error`].
//!
//! The `netlet-proxy` binary (`src/main.rs`) only parses arguments and calls these;
//! `netlet-agent` calls the same [`setup`] and [`sync_loop::run`].

pub mod backend;
pub mod config;
pub mod conntrack;
pub mod error;
pub mod exec;
pub mod hash;
pub mod health_check;
pub mod metrics_http;
pub mod model;
pub mod setup;
pub mod sync_loop;
pub mod watch;

pub use backend::{new_backend, Backend, BackendConfig, BackendKind, SyncStats};
pub use config::ProxyConfig;
pub use error::{Error, Result};
pub use exec::NetnsExec;
pub use model::{ServiceKey, ServiceTable};
