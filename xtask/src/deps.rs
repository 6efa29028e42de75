//! `cargo xtask deps`: the Debian packages netlet needs, and the Python venv with the official
//! Kubernetes client that control-plane-lite's `python_client` test runs, both installed
//! idempotently so tests never reach the network.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

/// Every Debian package the project's builds, tests, benches and demos use.
pub const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "iptables",
    "nftables",
    "conntrack",
    "iproute2",
    "clang-19",
    "libbpf-dev",
    "bpftool",
    "etcd-server",
    "etcd-client",
    "containernetworking-plugins",
    "iperf3",
    "busybox-static",
    "curl",
    "gcc",
    "libc6-dev",
    "protobuf-compiler",
    "libprotobuf-dev",
    "python3-venv",
    "iputils-ping",
    "procps",
    "kmod",
    "util-linux",
];

/// Whether dpkg reports `package` as fully installed.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"install ok installed")
}

/// The packages of [`PACKAGES`] that are not installed, in list order.
pub fn missing() -> Vec<&'static str> {
    PACKAGES.iter().copied().filter(|p| !installed(p)).collect()
}

/// Installs whatever is missing (Debian packages, then the Python venv); does nothing (and
/// needs no root) when all is there.
pub fn ensure() -> Result<()> {
    ensure_packages()?;
    ensure_python_venv().map(|_| ())
}

/// Installs the missing Debian packages with apt-get.
fn ensure_packages() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    println!("missing Debian packages: {}", missing.join(" "));
    if !util::is_root() {
        bail!("cargo xtask deps must run as root (it installs Debian packages)");
    }
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = self::missing();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    println!("installed: {}", missing.join(" "));
    Ok(())
}

/// The pinned requirements of the Python venv, kept in the repository.
fn python_requirements() -> PathBuf {
    util::workspace_root().join("control-plane-lite/tests/python/requirements.txt")
}

/// The venv the Python client tests use: `<target>/py-venv` (the tests find it from their own
/// executable's path, so both follow `CARGO_TARGET_DIR`).
pub fn python_venv() -> PathBuf {
    util::target_dir().join("py-venv")
}

/// The copy of the requirements a completed install leaves in the venv: the venv is current
/// when it matches the repository's file.
const VENV_STAMP: &str = "netlet-requirements.txt";

/// Creates or refreshes the venv from the pinned requirements; returns whether it did anything.
/// A venv whose stamp matches the requirements is left alone (no process is started).
fn ensure_python_venv() -> Result<bool> {
    let requirements_path = python_requirements();
    let requirements = std::fs::read(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let venv = python_venv();
    let python = venv.join("bin/python");
    let stamp = venv.join(VENV_STAMP);
    if python.exists() && std::fs::read(&stamp).is_ok_and(|s| s == requirements) {
        return Ok(false);
    }
    println!(
        "creating the Python venv {} from {}",
        venv.display(),
        requirements_path.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the stale venv {}", venv.display()))?;
    }
    util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    util::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements_path),
    )?;
    // Written last: an interrupted install leaves no stamp and is redone next time.
    std::fs::write(&stamp, &requirements)
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(true)
}

/// `cargo xtask deps`.
pub fn run() -> Result<()> {
    ensure_packages()?;
    println!("all {} Debian packages are installed", PACKAGES.len());
    if ensure_python_venv()? {
        println!("Python venv {} created", python_venv().display());
    } else {
        println!(
            "Python venv {} is up to date; nothing to do",
            python_venv().display()
        );
    }
    Ok(())
}
