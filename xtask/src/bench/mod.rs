//! `cargo xtask bench <name>`: one subcommand per benchmark; each compares netlet with the
//! component it replaces, in one process run, and prints a table.

mod cni;
mod stats;

use anyhow::Result;
use clap::Subcommand;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// netlet-cni against the reference bridge + host-local plugins: ADD/DEL latency,
    /// sequential and concurrent. Needs root.
    Cni(cni::Args),
}

/// Runs the chosen benchmark.
pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Cni(args) => cni::run(&args),
    }
}
