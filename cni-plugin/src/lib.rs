//! `netlet-cni`: a CNI 1.1 plugin, a drop-in replacement for the reference `bridge` plugin.
//!
//! Container runtimes execute the binary with `CNI_*` environment variables and the network
//! config on stdin; it answers on stdout with a result or the spec's error JSON. Everything is a
//! library so that the protocol is unit-tested and the binary is a few lines.
//!
//! # Layout
//! - [`error`], [`version`], [`result`]: the protocol's vocabulary.
//! - [`env`], [`config`]: the `CNI_*` environment and the network config on stdin.
//! - [`plugin`]: one invocation — dispatch, version gating, error JSON; [`logging`] to a file.
//! - [`commands`]: ADD, DEL, CHECK, GC, STATUS, one file each, and the IPAM choice.
//! - [`ipam`]: the built-in host-local compatible allocator and delegation to external IPAM.
//! - [`link`], [`netns`]: netlink (rtnetlink) and namespace switching; [`naming`] of host veths.
//! - [`masq`], [`sysctl`]: masquerade rules and forwarding in the node namespace.
//! - [`reaper`]: deferred unregistering of veths that DEL already detached.

pub mod commands;
pub mod config;
pub mod env;
pub mod error;
#[cfg(test)]
mod fuzz_props;
pub mod ipam;
pub mod link;
pub mod logging;
pub mod masq;
pub mod naming;
pub mod netns;
pub mod plugin;
pub mod reaper;
pub mod result;
pub mod sysctl;
pub mod version;
