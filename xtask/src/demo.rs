//! `cargo xtask demo`: one node, two containers, wired by netlet-cni — the README's walk
//! through the plugin until the cluster exists.
//!
//! Everything happens in throwaway namespaces: a "node" namespace where the plugin runs and
//! the bridge lives, and one namespace per container. They and the IPAM data dir are removed
//! when the demo ends, also on error.

use std::path::Path;

use anyhow::{bail, Context, Result};
use integration::NetNs;
use serde_json::{json, Value};

use crate::cni_exec::{self, Attachment, Runtime};
use crate::{interrupt, util};

/// The bridge's address, the containers' default gateway.
const GATEWAY: &str = "10.77.0.1";

/// Options of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run the demo with Debian's bridge + host-local plugins (CNI 1.0.0) instead of
    /// netlet-cni; for checking the demo itself.
    #[arg(long, hide = true)]
    reference: bool,
}

/// `cargo xtask demo`.
pub fn run(args: &Args) -> Result<()> {
    util::require_root("cargo xtask demo")?;
    let tmp = tempfile::Builder::new()
        .prefix("nlt-demo-")
        .tempdir()
        .context("creating a temp dir")?;
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).context("creating the CNI bin dir")?;
    let (plugin, config) = if args.reference {
        let plugin = Path::new("/usr/lib/cni/bridge").to_path_buf();
        (
            plugin,
            network_config("1.0.0", "bridge", "host-local", tmp.path()),
        )
    } else {
        let bin = util::build_release_bin("netlet-cni", "netlet-cni")?;
        let plugin = bin_dir.join("netlet");
        std::os::unix::fs::symlink(&bin, &plugin).context("linking netlet-cni")?;
        (
            plugin,
            network_config("1.1.0", "netlet", "netlet", tmp.path()),
        )
    };
    let cni_path = format!("{}:/usr/lib/cni", bin_dir.display());
    println!(
        "network config:\n{}",
        serde_json::to_string_pretty(&config)?
    );

    let node = util::netns("dnode")?;
    let a = util::netns("dctra")?;
    let b = util::netns("dctrb")?;
    println!(
        "node namespace {}, containers {} (A) and {} (B)",
        node.name(),
        a.name(),
        b.name()
    );
    let runtime = Runtime::new(&plugin, Some(&node.path()), cni_path)?;
    let (a_path, b_path) = (a.path(), b.path());
    let att_a = Attachment {
        container_id: "demo-a",
        netns: &a_path,
        ifname: "eth0",
    };
    let att_b = Attachment {
        container_id: "demo-b",
        netns: &b_path,
        ifname: "eth0",
    };

    let mut results = Vec::new();
    for att in [att_a, att_b] {
        interrupt::check()?;
        let (took, result) = runtime.call("ADD", att, &config)?;
        println!(
            "\nADD {} ({:.1} ms):\n{}",
            att.container_id,
            took.as_secs_f64() * 1e3,
            serde_json::to_string_pretty(&result)?
        );
        results.push(result);
    }
    let ip_b = first_address(&results[1]).context("container B's ADD result")?;

    println!();
    ping(&a, "container A -> container B", &ip_b)?;
    ping(&a, "container A -> gateway", GATEWAY)?;

    for command in ["CHECK", "DEL"] {
        println!();
        for (att, result) in [att_a, att_b].into_iter().zip(&results) {
            interrupt::check()?;
            let config = cni_exec::with_prev_result(&config, result);
            let (took, _) = runtime.call(command, att, &config)?;
            println!(
                "{command} {}: ok ({:.1} ms)",
                att.container_id,
                took.as_secs_f64() * 1e3
            );
        }
    }
    println!(
        "\ndemo done; removing namespaces {}, {}, {}",
        node.name(),
        a.name(),
        b.name()
    );
    Ok(())
}

/// The demo's network: a bridge on the node with the gateway address, a /24 for containers.
fn network_config(version: &str, cni_type: &str, ipam_type: &str, dir: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "demonet",
        "type": cni_type,
        "bridge": "nltdemo0",
        "isGateway": true,
        "ipam": {
            "type": ipam_type,
            "ranges": [[{ "subnet": "10.77.0.0/24" }]],
            "dataDir": dir.join("ipam"),
        },
    })
}

/// The first IP address of a CNI result, without its prefix length.
fn first_address(result: &Value) -> Result<String> {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no ips[0].address in {result}"))?;
    let (ip, _prefix) = cidr.split_once('/').unwrap_or((cidr, ""));
    Ok(ip.to_owned())
}

/// Pings `target` from inside `from` and prints ping's summary; fails if no reply came back.
fn ping(from: &NetNs, what: &str, target: &str) -> Result<()> {
    let mut cmd = from.command("ping");
    cmd.args(["-c", "3", "-i", "0.2", "-W", "1", target]);
    println!("{what}: $ {}", util::display(&cmd));
    let out = cmd.output().context("running ping")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout
        .lines()
        .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
    {
        println!("  {line}");
    }
    if !out.status.success() {
        bail!(
            "{what}: ping {target} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
