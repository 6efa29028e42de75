//! `netlet-cni`: a CNI 1.1 plugin, a drop-in replacement for the reference `bridge` plugin.
//!
//! Container runtimes execute the binary with `CNI_*` environment variables and the network
//! config on stdin; it answers on stdout with a result or the spec's error JSON. Everything is a
//! library so that the protocol is unit-tested and the binary is a few lines.
//!
//! # Layout
//! - [`error`], [`version`], [`result`]: the protocol's vocabulary.
//! - [`ipam`]: the built-in host-local compatible allocator and delegation to external IPAM.

pub mod error;
pub mod ipam;
pub mod result;
pub mod version;
