//! The cluster's network: the LAN namespace with its bridge, one namespace per node wired to it
//! by a veth, and an "outside" host. Only `ip` inside our own `nlt-up-` namespaces.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::Result;

use super::ns_prefix;
use crate::util;

/// The LAN namespace.
pub fn lan_ns() -> String {
    format!("{}lan", ns_prefix())
}

/// The namespace of node `k` (1-based).
pub fn node_ns(k: u8) -> String {
    format!("{}node-{k}", ns_prefix())
}

/// The namespace of the control plane (apiserver, scheduler, controllers).
pub fn control_plane_ns() -> String {
    format!("{}cp", ns_prefix())
}

/// The control plane's address on the LAN, from which the apiserver reaches the agents.
pub fn control_plane_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 2)
}

/// The namespace of the host outside the cluster.
pub fn outside_ns() -> String {
    format!("{}outside", ns_prefix())
}

/// Node `k`'s address on the LAN.
pub fn node_ip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 10 + k)
}

/// The outside host's address on the LAN.
pub fn outside_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 250)
}

/// The LAN prefix length.
const LAN_PREFIX: u8 = 24;

/// `ip -n NS args…`, failing with the command line on error.
fn ip(ns: &str, args: &[&str]) -> Result<()> {
    util::run_quiet(Command::new("ip").args(["-n", ns]).args(args))
}

/// Creates the LAN, the control plane's namespace, `nodes` node namespaces and the outside
/// host.
pub fn create(nodes: u8) -> Result<()> {
    let lan = lan_ns();
    util::run_quiet(Command::new("ip").args(["netns", "add", &lan]))?;
    ip(&lan, &["link", "set", "lo", "up"])?;
    ip(&lan, &["link", "add", "br-lan", "type", "bridge"])?;
    ip(&lan, &["link", "set", "br-lan", "up"])?;
    let mut hosts: Vec<(String, String, Ipv4Addr)> = (1..=nodes)
        .map(|k| (node_ns(k), format!("node-{k}"), node_ip(k)))
        .collect();
    hosts.push((control_plane_ns(), "cp".to_string(), control_plane_ip()));
    hosts.push((outside_ns(), "outside".to_string(), outside_ip()));
    for (ns, port, addr) in hosts {
        util::run_quiet(Command::new("ip").args(["netns", "add", &ns]))?;
        ip(&ns, &["link", "set", "lo", "up"])?;
        // Create the pair in the LAN namespace, then move the node end into the node's.
        ip(
            &lan,
            &["link", "add", &port, "type", "veth", "peer", "name", "eth0"],
        )?;
        ip(&lan, &["link", "set", "eth0", "netns", &ns])?;
        ip(&lan, &["link", "set", &port, "master", "br-lan", "up"])?;
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{addr}/{LAN_PREFIX}"),
                "dev",
                "eth0",
            ],
        )?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        util::run_quiet(Command::new("ip").args(["netns", "exec", &ns]).args([
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]))?;
    }
    Ok(())
}

/// Every namespace whose name starts with our prefix (also ones a crashed `up` left).
pub fn existing() -> Vec<String> {
    let prefix = ns_prefix();
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Deletes every `nlt-up-` namespace (their veths and bridges go with them).
pub fn delete_all() -> Vec<String> {
    let mut failed = Vec::new();
    for ns in existing() {
        let ok = Command::new("ip")
            .args(["netns", "del", &ns])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            failed.push(ns);
        }
    }
    failed
}
