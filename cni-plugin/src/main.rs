//! The `netlet-cni` binary: see the library for everything.
fn main() {}
