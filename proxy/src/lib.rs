//! `netlet-proxy`: the service proxy.
//!
//! Its job (filled in by the proxy issues): watch Services and EndpointSlices, compute the
//! desired service table (pure code) and apply it through one backend trait with an iptables,
//! an nftables and an eBPF implementation, chosen by config.
//!
//! This crate is a placeholder so the workspace has its final shape; it programs nothing yet.
