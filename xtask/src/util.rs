//! Helpers shared by the tasks: the workspace layout, running commands, root checks, and
//! network namespaces that fail with an error instead of a panic.

use std::ffi::OsStr;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};
use integration::NetNs;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` like cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Whether this process runs as root (effective UID 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A `cargo` command run from the workspace root with backtraces on.
///
/// This is the `cargo` on `PATH` (the rustup proxy), not `$CARGO`, so `rust-toolchain.toml`
/// and external subcommands such as `cargo fmt` resolve as they do in a shell.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("cargo");
    cmd.args(args)
        .current_dir(workspace_root())
        .env("RUST_BACKTRACE", "1");
    cmd
}

/// The command line of `cmd` as a shell user would type it (for logs, not for re-parsing).
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Prints `cmd`, runs it with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    println!("$ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("starting `{}`", display(cmd)))
}

/// Prints `cmd`, runs it with inherited stdio and fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("`{}` failed ({st})", display(cmd));
    }
    Ok(())
}

/// Builds a release binary of `package` and returns its path.
pub fn build_release_bin(package: &str, bin: &str) -> Result<PathBuf> {
    run(&mut cargo(["build", "--release", "-p", package]))
        .with_context(|| format!("building {package} (release)"))?;
    let path = target_dir().join("release").join(bin);
    if !path.is_file() {
        bail!("{} was not produced by the build", path.display());
    }
    Ok(path)
}

/// Creates a [`NetNs`], turning the guard's panic (its failure mode in tests) into an error.
///
/// A namespace whose creation got halfway is still deleted: the guard exists before the step
/// that can fail, and unwinding drops it.
pub fn netns(tag: &str) -> Result<NetNs> {
    panic::catch_unwind(AssertUnwindSafe(|| NetNs::new(tag))).map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        anyhow::anyhow!("creating network namespace ({tag}): {msg}")
    })
}

/// Fails with a message naming `what` unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} must run as root: it creates network namespaces (try `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

/// Calls `probe` every `interval` until it returns `Some` or `timeout` passes (then `None`).
///
/// For waiting on other processes (a file they write, a socket they open, an API state) that
/// offer nothing to block on; the sleep between probes is the point, not a timing assumption.
pub fn poll<T>(
    timeout: std::time::Duration,
    interval: std::time::Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Runs `cmd` with its output captured, failing with its stderr unless it succeeds (for the
/// many small `ip` calls whose output only matters when they fail).
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("starting `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Where `tool` on `PATH` really is (symlinks resolved), if anywhere.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}
