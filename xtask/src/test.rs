//! `cargo xtask test`: everything CI checks, with one tally at the end.
//!
//! The steps: make sure the Debian packages are there, `cargo fmt --check`, clippy with
//! warnings denied, `cargo test --workspace`, then the e2e suites of [`SUITES`]. Every step
//! runs even when an earlier one failed, so one run shows everything that is wrong. The last
//! line is `N passed, M failed`: the libtest counts summed over all test binaries and the
//! suites' own tallies, plus one failure per step that failed as a whole (fmt, clippy, a
//! `cargo test` that broke without a failing test, a suite that could not run).

use std::io::{Read, Write};
use std::process::Stdio;

use anyhow::{Context, Result};

use crate::{deps, util};

/// Passed and failed counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Tests (or steps) that passed.
    pub passed: u64,
    /// Tests (or steps) that failed.
    pub failed: u64,
}

impl Tally {
    /// Adds `other` into `self`.
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// An end-to-end suite: a scenario across crates (agent, plugin, proxy, control plane) that
/// does not fit in one crate's `cargo test`. Later issues add entries to [`SUITES`]; each
/// reports its own tally and is run by `cargo xtask test` and `cargo xtask e2e [name]`.
pub struct Suite {
    /// The name `cargo xtask e2e NAME` selects it by.
    pub name: &'static str,
    /// Runs the suite; an `Err` means it could not run at all and counts as one failure.
    pub run: fn() -> Result<Tally>,
}

/// The registered e2e suites, run in this order.
pub const SUITES: &[Suite] = &[
    Suite {
        name: "cluster",
        run: crate::e2e::run_cluster_suite,
    },
    Suite {
        name: "cluster-ebpf",
        run: crate::e2e::run_cluster_ebpf_suite,
    },
];

/// `cargo xtask test`; `Ok(false)` when anything failed.
pub fn run() -> Result<bool> {
    util::require_root("cargo xtask test")?;
    deps::ensure()?;
    let mut total = Tally::default();
    let mut failed_steps: Vec<String> = Vec::new();

    for (name, args) in [
        ("cargo fmt --check", &["fmt", "--all", "--", "--check"][..]),
        (
            "cargo clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ][..],
        ),
    ] {
        let ok = util::status(&mut util::cargo(args)).is_ok_and(|s| s.success());
        record(name, ok, &mut total, &mut failed_steps);
    }

    match cargo_test() {
        Ok((tally, success)) => {
            total.add(tally);
            if !success && tally.failed == 0 {
                // Exited non-zero without a failing test: a build error or a crashed binary.
                record("cargo test", false, &mut total, &mut failed_steps);
            } else if tally.failed > 0 {
                failed_steps.push(format!("cargo test ({} failed)", tally.failed));
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            record("cargo test", false, &mut total, &mut failed_steps);
        }
    }

    run_suites(SUITES.iter(), &mut total, &mut failed_steps);
    Ok(finish(total, &failed_steps))
}

/// `cargo xtask e2e [name]`: the e2e suites alone; `Ok(false)` when anything failed.
pub fn run_e2e(name: Option<&str>) -> Result<bool> {
    util::require_root("cargo xtask e2e")?;
    let selected: Vec<&Suite> = SUITES
        .iter()
        .filter(|s| name.is_none_or(|n| n == s.name))
        .collect();
    if let (Some(n), true) = (name, selected.is_empty()) {
        let known: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
        anyhow::bail!("no e2e suite named {n:?} (known: {known:?})");
    }
    if selected.is_empty() {
        println!("no e2e suites are registered yet");
    }
    let mut total = Tally::default();
    let mut failed_steps = Vec::new();
    run_suites(selected.into_iter(), &mut total, &mut failed_steps);
    Ok(finish(total, &failed_steps))
}

/// Runs `suites` in order, adding their tallies; a suite that cannot run counts as one failure.
fn run_suites<'a>(
    suites: impl Iterator<Item = &'a Suite>,
    total: &mut Tally,
    failed_steps: &mut Vec<String>,
) {
    for suite in suites {
        println!("== e2e suite {}", suite.name);
        match (suite.run)() {
            Ok(t) => {
                total.add(t);
                if t.failed > 0 {
                    failed_steps.push(format!("e2e {} ({} failed)", suite.name, t.failed));
                }
            }
            Err(e) => {
                eprintln!("error: e2e suite {}: {e:#}", suite.name);
                record(&format!("e2e {}", suite.name), false, total, failed_steps);
            }
        }
    }
}

/// Counts a whole step: a failure is one failed test; a success adds nothing, so that
/// "passed" stays the number of tests.
fn record(step: &str, ok: bool, total: &mut Tally, failed_steps: &mut Vec<String>) {
    if !ok {
        total.failed += 1;
        failed_steps.push(step.to_owned());
    }
}

/// Prints what failed and the final tally line; returns whether everything passed.
fn finish(total: Tally, failed_steps: &[String]) -> bool {
    println!();
    for step in failed_steps {
        println!("FAILED: {step}");
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    total.failed == 0
}

/// Runs `cargo test --workspace --no-fail-fast`, passing its stdout through while summing the
/// libtest summary lines; returns the tally and whether cargo exited successfully.
fn cargo_test() -> Result<(Tally, bool)> {
    let mut cmd = util::cargo(["test", "--workspace", "--no-fail-fast"]);
    println!("$ {}", util::display(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut tally = Tally::default();
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut term = std::io::stdout();
    loop {
        let n = stdout.read(&mut buf).context("reading cargo test output")?;
        if n == 0 {
            break;
        }
        // Forward at once (libtest prints "test x ... " before the verdict); parse by line.
        let _ = term.write_all(&buf[..n]);
        let _ = term.flush();
        for &b in &buf[..n] {
            if b == b'\n' {
                if let Some(t) = parse_summary(&String::from_utf8_lossy(&line)) {
                    tally.add(t);
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    if let Some(t) = parse_summary(&String::from_utf8_lossy(&line)) {
        tally.add(t);
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((tally, status.success()))
}

/// Parses a libtest summary such as
/// `test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; ...`.
fn parse_summary(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_verdict, counts) = rest.split_once(". ")?;
    let mut tally = Tally::default();
    let mut seen = 0;
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => tally.passed = n,
            "failed" => tally.failed = n,
            _ => continue,
        }
        seen += 1;
    }
    (seen == 2).then_some(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_and_failed_summaries() {
        let ok = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(
            parse_summary(ok),
            Some(Tally {
                passed: 12,
                failed: 0
            })
        );
        let bad = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s";
        assert_eq!(
            parse_summary(bad),
            Some(Tally {
                passed: 3,
                failed: 2
            })
        );
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(parse_summary("test foo ... ok"), None);
        assert_eq!(parse_summary("running 3 tests"), None);
        assert_eq!(parse_summary("test result: garbage"), None);
    }
}
