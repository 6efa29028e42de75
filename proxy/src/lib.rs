//! `netlet-proxy`: the service proxy.
//!
//! It turns Services and EndpointSlices into a desired service table (pure code) and programs
//! it through one [`backend::Backend`] trait, with one implementation per dataplane, chosen by
//! config. The watch loop (kube-rs) and conntrack cleanup come in later slices.
//!
//! # Layout
//! - [`model`]: the [`ServiceTable`] and its construction from Kubernetes objects (pure).
//! - [`config`]: [`ProxyConfig`], the node facts rendering depends on.
//! - [`backend`]: the [`Backend`] trait, the factory, and one module per dataplane:
//!   [`backend::iptables`] (render in `render.rs`, kernel edge in `cli.rs`),
//!   [`backend::nftables`] (pure elements in `render.rs`, fixed rules in `base.rs`, netlink in
//!   `netlink.rs`/`expr.rs`, diffing in `apply.rs`), [`backend::none`].
//! - [`exec`]: running kernel tools in the current or a given network namespace.
//! - [`hash`]: stable short names for kernel objects.
//! - [`error`]: the crate's [`Error`].

pub mod backend;
pub mod config;
pub mod error;
pub mod exec;
pub mod hash;
pub mod model;

pub use backend::{new_backend, Backend, BackendConfig, BackendKind, SyncStats};
pub use config::ProxyConfig;
pub use error::{Error, Result};
pub use exec::NetnsExec;
pub use model::{ServiceKey, ServiceTable};
