//! `cargo xtask bench cni`: netlet-cni against the reference `bridge` + `host-local` plugins.
//!
//! Each plugin gets a fresh node namespace, `--count` fresh container namespaces (created
//! before any timing) and its own IPAM data dir; then four timed phases run:
//! sequential ADD, sequential DEL (with `prevResult`), ADD with `--concurrency` workers, and
//! DEL with as many workers. Every call is one plugin process, started inside the node
//! namespace the way a runtime on that node would start it (see [`crate::cni_exec`]), and
//! timed from spawn to exit. The reference runs first, then ours, in each of `--runs` rounds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::stats::{self, Summary};
use crate::cni_exec::{self, Attachment, Runtime};
use crate::{interrupt, util};

/// Where Debian's containernetworking-plugins puts the reference plugins.
const REFERENCE_DIR: &str = "/usr/lib/cni";
/// Targets from the issue: netlet's sequential median as a fraction of the reference's.
const ADD_TARGET: f64 = 0.30;
/// See [`ADD_TARGET`].
const DEL_TARGET: f64 = 0.25;

/// Options of `cargo xtask bench cni`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Containers per phase (each phase makes this many plugin calls per plugin).
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Repeat the whole bench this many times and report the median of the per-run figures.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Workers in the concurrent phases.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Bench only the reference plugins (netlet-cni is not built); for developing the bench.
    #[arg(long, hide = true)]
    only_reference: bool,
    /// Bench this netlet-cni binary instead of building one (e.g. a build from another tree).
    #[arg(
        long,
        hide = true,
        value_name = "PATH",
        conflicts_with = "only_reference"
    )]
    netlet_bin: Option<PathBuf>,
}

/// The timed phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// One ADD after another.
    Add,
    /// One DEL after another, undoing [`Phase::Add`].
    Del,
    /// ADDs from `--concurrency` workers at once.
    AddConcurrent,
    /// DELs from `--concurrency` workers at once, undoing [`Phase::AddConcurrent`].
    DelConcurrent,
}

impl Phase {
    /// All phases, in run order.
    const ALL: [Phase; 4] = [
        Phase::Add,
        Phase::Del,
        Phase::AddConcurrent,
        Phase::DelConcurrent,
    ];

    /// The row label in the report.
    fn label(self, concurrency: usize) -> String {
        match self {
            Phase::Add => "ADD sequential".to_owned(),
            Phase::Del => "DEL sequential".to_owned(),
            Phase::AddConcurrent => format!("ADD {concurrency} at a time"),
            Phase::DelConcurrent => format!("DEL {concurrency} at a time"),
        }
    }
}

/// One plugin under test.
#[derive(Debug)]
struct Subject {
    /// Its name in the report.
    name: &'static str,
    /// The `type` of the network config (the binary's name in `CNI_PATH`).
    cni_type: &'static str,
    /// The `ipam.type` of the network config.
    ipam_type: &'static str,
}

/// The reference plugins from Debian.
const REFERENCE: Subject = Subject {
    name: "reference",
    cni_type: "bridge",
    ipam_type: "host-local",
};

/// Ours.
const NETLET: Subject = Subject {
    name: "netlet",
    cni_type: "netlet",
    ipam_type: "netlet",
};

/// What one phase measured.
#[derive(Debug, Clone, Copy)]
struct PhaseResult {
    /// Per-call latency.
    latency: Summary,
    /// Wall time of the whole phase, in ms.
    wall_ms: f64,
}

/// All phases of one plugin in one run, indexed like [`Phase::ALL`].
type RunResult = [PhaseResult; 4];

/// `cargo xtask bench cni`.
pub fn run(args: &Args) -> Result<()> {
    util::require_root("cargo xtask bench cni")?;
    ensure!(args.count >= 1, "--count must be at least 1");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    for p in ["bridge", "host-local"] {
        let path = Path::new(REFERENCE_DIR).join(p);
        ensure!(
            path.is_file(),
            "reference plugin {} is missing; run `cargo xtask deps`",
            path.display()
        );
    }
    let netlet_bin = if args.only_reference {
        None
    } else if let Some(bin) = &args.netlet_bin {
        ensure!(
            bin.is_file(),
            "--netlet-bin {} is not a file",
            bin.display()
        );
        Some(std::path::absolute(bin).context("resolving --netlet-bin")?)
    } else {
        Some(util::build_release_bin("netlet-cni", "netlet-cni").context(
            "netlet-cni must build for the bench (`--only-reference` benches the reference alone)",
        )?)
    };

    let mut subjects = vec![&REFERENCE];
    if netlet_bin.is_some() {
        subjects.push(&NETLET);
    }
    // results[subject][run]
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); subjects.len()];
    for run in 1..=args.runs {
        for (s, subject) in subjects.iter().enumerate() {
            println!(
                "[run {run}/{}] {}: {} containers",
                args.runs, subject.name, args.count
            );
            match bench_one(subject, netlet_bin.as_deref(), args) {
                Ok(r) => results[s].push(r),
                Err(e) => {
                    if results.iter().any(|r| !r.is_empty()) {
                        println!("\npartial results before the failure:");
                        print!("{}", report(&subjects, &results, args));
                    }
                    return Err(e.context(format!("benchmarking {} (run {run})", subject.name)));
                }
            }
        }
    }
    println!();
    print!("{}", report(&subjects, &results, args));
    Ok(())
}

/// One plugin, one run: fresh namespaces and data dir, the four timed phases, then cleanup
/// (namespaces by their guards, the temp dir by its own, also on error).
fn bench_one(subject: &Subject, netlet_bin: Option<&Path>, args: &Args) -> Result<RunResult> {
    let tmp = tempfile::Builder::new()
        .prefix("nlt-bench-cni-")
        .tempdir()
        .context("creating a temp dir")?;
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).context("creating the CNI bin dir")?;
    if let Some(bin) = netlet_bin {
        std::os::unix::fs::symlink(bin, bin_dir.join(NETLET.cni_type))
            .context("linking netlet-cni into the CNI bin dir")?;
    }
    let plugin = if subject.cni_type == NETLET.cni_type {
        bin_dir.join(NETLET.cni_type)
    } else {
        Path::new(REFERENCE_DIR).join(subject.cni_type)
    };
    let cni_path = format!("{}:{REFERENCE_DIR}", bin_dir.display());
    let config = network_config(subject, &tmp.path().join("ipam"));

    let node = util::netns("bnode")?;
    let containers = (0..args.count)
        .map(|_| {
            interrupt::check()?;
            util::netns("bctr")
        })
        .collect::<Result<Vec<_>>>()?;
    let netns: Vec<PathBuf> = containers.iter().map(|c| c.path()).collect();
    let runtime = Runtime::new(&plugin, Some(&node.path()), cni_path)?;

    let mut out = Vec::with_capacity(Phase::ALL.len());
    let mut added: Vec<Value> = Vec::new();
    for phase in Phase::ALL {
        let (id_prefix, command, workers) = match phase {
            Phase::Add | Phase::Del => ("c", phase_command(phase), 1),
            Phase::AddConcurrent | Phase::DelConcurrent => {
                ("p", phase_command(phase), args.concurrency)
            }
        };
        let is_add = command == "ADD";
        let call = |i: usize| -> Result<(Duration, Value)> {
            interrupt::check()?;
            let id = format!("{id_prefix}{i}");
            let att = Attachment {
                container_id: &id,
                netns: &netns[i],
                ifname: "eth0",
            };
            let config = if is_add {
                config.clone()
            } else {
                cni_exec::with_prev_result(&config, &added[i])
            };
            let (elapsed, result) = runtime.call(command, att, &config)?;
            if is_add && !result.is_object() {
                bail!(
                    "{} ADD for container {id} printed no result object: {result}",
                    subject.name
                );
            }
            Ok((elapsed, result))
        };
        let (wall, calls) = parallel(args.count, workers, call)?;
        let latencies: Vec<Duration> = calls.iter().map(|(d, _)| *d).collect();
        let latency = Summary::of(&latencies).expect("count >= 1");
        let wall_ms = wall.as_secs_f64() * 1e3;
        println!(
            "  {:<18} median {:>8.2} ms  p99 {:>8.2} ms  wall {:>9.2} ms",
            phase.label(args.concurrency),
            latency.median_ms,
            latency.p99_ms,
            wall_ms
        );
        if is_add {
            added = calls.into_iter().map(|(_, r)| r).collect();
        }
        out.push(PhaseResult { latency, wall_ms });
    }
    Ok(out.try_into().expect("one result per phase"))
}

/// `CNI_COMMAND` of a phase.
fn phase_command(phase: Phase) -> &'static str {
    match phase {
        Phase::Add | Phase::AddConcurrent => "ADD",
        Phase::Del | Phase::DelConcurrent => "DEL",
    }
}

/// The network configuration both plugins get; only `type` and `ipam.type` differ.
///
/// `cniVersion` is 1.0.0 because Debian's reference plugins (v1.1.1) speak no later version.
fn network_config(subject: &Subject, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchnet",
        "type": subject.cni_type,
        "bridge": "nltbr0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "mtu": 1500,
        "ipam": {
            "type": subject.ipam_type,
            "ranges": [[{ "subnet": "10.250.0.0/16" }]],
            "dataDir": ipam_dir,
        },
    })
}

/// Runs `f(0..n)` on `workers` threads that each take the next index when free; returns the
/// wall time and the results in index order. Stops handing out work at the first error.
fn parallel<T, F>(n: usize, workers: usize, f: F) -> Result<(Duration, Vec<T>)>
where
    T: Send,
    F: Fn(usize) -> Result<T> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let start = Instant::now();
    let per_worker: Vec<Result<Vec<(usize, T)>>> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers.min(n))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        match f(i) {
                            Ok(v) => done.push((i, v)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let wall = start.elapsed();
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(n).collect();
    for worker in per_worker {
        for (i, v) in worker? {
            slots[i] = Some(v);
        }
    }
    let results = slots
        .into_iter()
        .map(|v| v.expect("every index ran once"))
        .collect();
    Ok((wall, results))
}

/// The median over runs of one figure of one phase.
fn across_runs(runs: &[RunResult], phase: usize, figure: impl Fn(&PhaseResult) -> f64) -> f64 {
    let values: Vec<f64> = runs.iter().map(|r| figure(&r[phase])).collect();
    stats::median(&values).unwrap_or(f64::NAN)
}

/// The results table, with netlet/reference ratios and the targets when both plugins ran.
fn report(subjects: &[&Subject], results: &[Vec<RunResult>], args: &Args) -> String {
    let mut s = String::new();
    let runs = results.iter().map(Vec::len).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "CNI bench: {} calls per phase, {} run(s){}; latency per call in ms",
        args.count,
        runs,
        if runs > 1 {
            " (each figure: median of the per-run figures)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "{:<18} {:<10} {:>9} {:>9} {:>10}  median netlet/ref",
        "phase", "plugin", "median", "p99", "wall"
    );
    // The medians per subject and phase, for ratios (None when that subject did not finish).
    let median = |subject: usize, phase: usize| -> Option<f64> {
        let runs = &results[subject];
        (!runs.is_empty()).then(|| across_runs(runs, phase, |p| p.latency.median_ms))
    };
    let ratio = |phase: usize| -> Option<f64> {
        let reference = subjects.iter().position(|s| s.name == REFERENCE.name)?;
        let ours = subjects.iter().position(|s| s.name == NETLET.name)?;
        Some(median(ours, phase)? / median(reference, phase)?)
    };
    for (p, phase) in Phase::ALL.iter().enumerate() {
        for (i, subject) in subjects.iter().enumerate() {
            let runs = &results[i];
            if runs.is_empty() {
                continue;
            }
            let ratio_cell = match ratio(p) {
                Some(r) if subject.name == NETLET.name => format!("{r:.2}"),
                _ => String::new(),
            };
            let row = format!(
                "{:<18} {:<10} {:>9.2} {:>9.2} {:>10.2}  {}",
                phase.label(args.concurrency),
                subject.name,
                across_runs(runs, p, |r| r.latency.median_ms),
                across_runs(runs, p, |r| r.latency.p99_ms),
                across_runs(runs, p, |r| r.wall_ms),
                ratio_cell
            );
            let _ = writeln!(s, "{}", row.trim_end());
        }
    }
    let mut targets = Vec::new();
    for (phase, target) in [(Phase::Add, ADD_TARGET), (Phase::Del, DEL_TARGET)] {
        let p = Phase::ALL.iter().position(|x| *x == phase).expect("listed");
        let name = phase_command(phase);
        targets.push(match ratio(p) {
            Some(r) if r <= target => format!("{name} {r:.2} <= {target:.2}: met"),
            Some(r) => format!("{name} {r:.2} > {target:.2}: NOT met"),
            None => format!("{name} <= {target:.2}: not measured"),
        });
    }
    let _ = writeln!(
        s,
        "targets (netlet/reference, sequential median): {}",
        targets.join("; ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_index_order_and_runs_each_index_once() {
        let (_, out) = parallel(50, 8, |i| Ok(i * 2)).unwrap();
        assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn parallel_returns_the_first_error() {
        let r = parallel(20, 4, |i| if i == 7 { bail!("boom at {i}") } else { Ok(i) });
        assert_eq!(r.unwrap_err().to_string(), "boom at 7");
    }

    #[test]
    fn configs_differ_only_in_plugin_types() {
        let dir = Path::new("/tmp/x");
        let mut a = network_config(&REFERENCE, dir);
        let mut b = network_config(&NETLET, dir);
        assert_eq!(a["ipam"]["type"], "host-local");
        assert_eq!(b["type"], "netlet");
        for c in [&mut a, &mut b] {
            c["type"] = Value::Null;
            c["ipam"]["type"] = Value::Null;
        }
        assert_eq!(a, b);
    }
}
