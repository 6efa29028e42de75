//! `cargo xtask deps`: the Debian packages netlet needs, installed idempotently.

use std::process::Command;

use anyhow::{bail, Result};

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

/// Installs whatever is missing; does nothing (and needs no root) when all is there.
pub fn ensure() -> Result<()> {
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

/// `cargo xtask deps`.
pub fn run() -> Result<()> {
    if missing().is_empty() {
        println!(
            "all {} Debian packages are installed; nothing to do",
            PACKAGES.len()
        );
        return Ok(());
    }
    ensure()
}
