//! The `cluster` e2e suite: `up` with three nodes, every scenario of [`scenarios`] in order
//! (each counted as one test), then `down` — also when a scenario or `up` fails, so nothing is
//! left behind.

mod kubectl;
mod pod_lifecycle;
mod scenarios;
mod static_pod;
mod streaming;

use anyhow::Result;

use crate::cluster::{self, UpArgs};
use crate::test::Tally;

/// Runs the suite.
pub fn run_cluster_suite() -> Result<Tally> {
    // A previous run that crashed may have left a cluster; start clean.
    cluster::down()?;
    let args = UpArgs {
        nodes: 3,
        release: false,
        agent_args: Vec::new(),
    };
    let mut tally = Tally::default();
    match cluster::up(&args) {
        Ok(()) => {
            let ctx = scenarios::Ctx {
                kubectl: kubectl::Kubectl::new(cluster::cluster_dir().join("admin.kubeconfig")),
                nodes: args.nodes,
            };
            for (name, scenario) in scenarios::SCENARIOS {
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
