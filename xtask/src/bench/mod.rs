//! `cargo xtask bench <name>`: one subcommand per benchmark; each compares netlet with the
//! component it replaces, in one process run, and prints a table.

mod api_client;
mod apiserver;
mod cni;
mod podstart;
mod proxy;
mod proxy_datapath;
mod scheduler;
mod server;
mod stats;

use anyhow::Result;
use clap::Subcommand;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// netlet-cni against the reference bridge + host-local plugins: ADD/DEL latency,
    /// sequential and concurrent. Needs root.
    Cni(cni::Args),
    /// netlet-proxy's iptables, nftables and eBPF backends against kube-proxy's rulesets: full
    /// sync of N services x 5 endpoints and one endpoint change; then the eBPF datapath's
    /// throughput against direct pod-to-pod and its per-packet cost. Needs root.
    Proxy(proxy::Args),
    /// netlet-control-plane on embedded storage against etcd: create, LIST, watch delivery,
    /// RSS and durable writes/s. Needs the Debian etcd-server package.
    Apiserver(apiserver::Args),
    /// 100 pods created at once on a one-node `xtask up` cluster: create → Ready p50/p99 and
    /// the agent's RSS. Needs root.
    Podstart(podstart::Args),
    /// upstream scheduler_perf's SchedulingBasic (5,000 nodes, 10,000 pods) through the
    /// apiserver, scaling a Deployment to 1,000, and the algorithm alone in memory.
    Scheduler(scheduler::Args),
}

/// Runs the chosen benchmark.
pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Cni(args) => cni::run(&args),
        Bench::Proxy(args) => proxy::run(&args),
        Bench::Apiserver(args) => apiserver::run(&args),
        Bench::Podstart(args) => podstart::run(&args),
        Bench::Scheduler(args) => scheduler::run(&args),
    }
}
