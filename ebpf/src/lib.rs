//! `netlet-ebpf`: eBPF programs written in C and their loader on `aya`.
//!
//! Its job (filled in by the eBPF issue): service NAT in tc programs with O(1) map updates, as the
//! proxy's third backend. The C sources will be compiled by `build.rs` with Debian's clang for
//! target bpf and embedded here; `cargo check` keeps working where clang is absent.
//!
//! This crate is a placeholder so the workspace has its final shape; it loads nothing yet.
