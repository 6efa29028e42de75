//! The `cluster` e2e suite: `up` with three nodes, every scenario of [`scenarios`] in order
//! (each counted as one test), then `down` — also when a scenario or `up` fails, so nothing is
//! left behind. The `cluster-ebpf` suite does the same with the eBPF service proxy on every
//! node and the networking scenarios only.

mod kubectl;
mod pod_lifecycle;
mod scenarios;
mod service_frontends;
mod static_pod;
mod streaming;

use anyhow::Result;

use crate::cluster::{self, UpArgs};
use crate::test::Tally;

/// Runs the `cluster` suite (the agents' default service proxy, nftables).
pub fn run_cluster_suite() -> Result<Tally> {
    run_suite(Vec::new(), |_| true)
}

/// Runs the `cluster-ebpf` suite.
pub fn run_cluster_ebpf_suite() -> Result<Tally> {
    run_suite(vec!["--proxy-backend=ebpf".to_string()], |name| {
        scenarios::EBPF_SCENARIOS.contains(&name)
    })
}

fn run_suite(agent_args: Vec<String>, selected: impl Fn(&str) -> bool) -> Result<Tally> {
    // A previous run that crashed may have left a cluster; start clean.
    cluster::down()?;
    let args = UpArgs {
        nodes: 3,
        release: false,
        agent_args,
    };
    let mut tally = Tally::default();
    match cluster::up(&args) {
        Ok(()) => {
            let ctx = scenarios::Ctx {
                kubectl: kubectl::Kubectl::new(cluster::cluster_dir().join("admin.kubeconfig")),
                nodes: args.nodes,
            };
            for (name, scenario) in scenarios::SCENARIOS.iter().filter(|(n, _)| selected(n)) {
                match scenario(&ctx) {
                    Ok(()) => {
                        println!("e2e {name} ... ok");
                        tally.passed += 1;
                    }
                    Err(e) => {
                        println!("e2e {name} ... FAILED\n{e:#}");
                        tally.failed += 1;
                    }
                }
            }
        }
        Err(e) => {
            println!("e2e cluster up ... FAILED\n{e:#}");
            let dir = cluster::cluster_dir();
            for log in ["control-plane/log", "node-1/agent.log"] {
                let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                println!("--- last lines of {log}:");
                for l in tail.into_iter().rev() {
                    println!("{l}");
                }
            }
            tally.failed += 1;
        }
    }
    cluster::down()?;
    Ok(tally)
}
