//! `cargo xtask`: the one entry point for netlet developers and CI.
//!
//! # Layout
//! - [`deps`]: installs the Debian packages the project needs and the Python client's venv.
//! - [`test`]: fmt, clippy, the workspace tests and the e2e suites, with one pass/fail tally.
//! - [`bench`]: benchmarks (`bench cni`: our plugin against the reference bridge plugin).
//! - [`demo`]: two containers on one node wired by netlet-cni, pinging each other.
//! - [`images`]: the pause and busybox test images, built locally as OCI archives.
//! - [`cni_exec`]: invokes a CNI plugin exactly as a container runtime does.
//! - [`interrupt`]: Ctrl-C becomes an error, so namespace guards still clean up.
//! - [`util`]: running commands, paths, temp namespaces.

mod bench;
mod cluster;
mod cni_exec;
mod demo;
mod deps;
mod e2e;
mod images;
mod interrupt;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer tasks for the netlet workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about, long_about = None)]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    command: Command,
}

/// The tasks `cargo xtask` knows.
#[derive(Debug, Subcommand)]
enum Command {
    /// Installs the Debian packages the project needs (idempotent; root only if something is
    /// missing) and creates `target/py-venv` with the pinned Python Kubernetes client.
    Deps,
    /// Runs everything CI runs: fmt check, clippy, workspace tests, e2e suites. Needs root.
    Test,
    /// Runs the end-to-end suites alone (optionally only the one named).
    E2e {
        /// Run only the suite with this name.
        name: Option<String>,
    },
    /// Benchmarks; see `cargo xtask bench --help`.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        which: bench::Bench,
    },
    /// Two containers on one node wired by netlet-cni: ADD, ping, CHECK, DEL. Needs root.
    Demo(demo::Args),
    /// Builds the test images (pause, busybox testapp) as OCI archives in target/images,
    /// optionally importing them into a containerd. No network, no docker.
    Images(images::Args),
    /// Starts a local cluster: the control plane and N nodes (containerd + netlet-agent each),
    /// all inside `nlt-up-` network namespaces. Needs root. Prints the KUBECONFIG to use.
    Up(cluster::UpArgs),
    /// Stops and removes everything `up` started (idempotent, also after a crash). Needs root.
    Down,
    /// Internal (started by `up`): relays TCP from listeners in node namespaces to the API.
    #[command(hide = true)]
    Forward(cluster::forward::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tasks that create namespaces must unwind on Ctrl-C; `test` and `deps` keep the default
    // (their children get the signal too, and stopping at once is what the user wants).
    if matches!(cli.command, Command::Bench { .. } | Command::Demo(_)) {
        if let Err(e) = interrupt::catch() {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Deps => deps::run().map(|()| true),
        Command::Test => test::run(),
        Command::E2e { name } => test::run_e2e(name.as_deref()),
        Command::Bench { which } => bench::run(which).map(|()| true),
        Command::Demo(args) => demo::run(&args).map(|()| true),
        Command::Images(args) => images::run(&args).map(|()| true),
        Command::Up(args) => cluster::up(&args).map(|()| true),
        Command::Down => cluster::down().map(|()| true),
        Command::Forward(args) => cluster::forward::run(&args).map(|()| true),
    };
    // `Ok(false)`: the task ran to the end and already reported what failed (e.g. a test tally).
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
