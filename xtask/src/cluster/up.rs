//! `cargo xtask up`: builds what is missing, then starts the cluster step by step, printing
//! progress, and records every process in `state.json` as soon as it is started.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use integration::containerd::ContainerdLayout;

use super::state::{Process, State};
use super::{cgroup_parent, cluster_dir, underlay, UpArgs, APISERVER_PORT};
use crate::{images, util};

/// How long the cluster may take to come up after everything is started.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The binaries the cluster runs.
struct Binaries {
    apiserver: PathBuf,
    agent: PathBuf,
    cni: PathBuf,
}

/// `cargo xtask up`.
pub fn up(args: &UpArgs) -> Result<()> {
    util::require_root("cargo xtask up")?;
    let dir = cluster_dir();
    let state_path = dir.join("state.json");
    let leftovers = underlay::existing();
    if state_path.exists() || !leftovers.is_empty() {
        bail!(
            "a cluster is already up (or a crashed one left {}{}); run `cargo xtask down` first",
            state_path.display(),
            if leftovers.is_empty() {
                String::new()
            } else {
                format!(", namespaces {}", leftovers.join(" "))
            }
        );
    }
    let total = 6;
    step(
        1,
        total,
        "building netlet-control-plane, netlet-agent, netlet-cni",
    );
    let bins = build(args.release)?;
    step(2, total, "building the images");
    let archives = images::build()?;

    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut state = State {
        nodes: args.nodes,
        processes: Vec::new(),
    };
    state.save(&state_path)?;

    step(
        3,
        total,
        &format!("creating namespaces for {} nodes", args.nodes),
    );
    underlay::create(args.nodes)?;

    step(4, total, "starting the apiserver (embedded storage)");
    let cp_dir = dir.join("control-plane");
    let cp_netns = format!("/run/netns/{}", underlay::control_plane_ns());
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={cp_netns}"))
        .arg(&bins.apiserver)
        .args(["serve", "--data-dir"])
        .arg(&cp_dir)
        // Pods reach it through the `kubernetes` Service at the control plane's LAN address.
        .args(["--bind", "0.0.0.0", "--port", &APISERVER_PORT.to_string()])
        .arg("--advertise-address")
        .arg(underlay::control_plane_ip().to_string());
    std::fs::create_dir_all(&cp_dir)?;
    spawn(
        &mut state,
        &state_path,
        "apiserver",
        &cp_dir,
        cmd,
        &cp_dir.join("log"),
    )?;
    let port = wait_for_kubeconfig(&cp_dir.join("admin.kubeconfig"))?;
    let admin = std::fs::read_to_string(cp_dir.join("admin.kubeconfig"))?;
    // Agents reach 127.0.0.1:6443 in their own namespace, the host a free port on its
    // 127.0.0.1: the forwarder relays both to the apiserver in the control plane's namespace.
    let node_kubeconfig = dir.join("node.kubeconfig");
    std::fs::write(&node_kubeconfig, &admin)?;
    let port_file = dir.join("apiserver.port");
    let mut fwd = Command::new(xtask_exe()?);
    fwd.arg("forward")
        .arg("--to")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--to-netns")
        .arg(&cp_netns)
        .args(["--listen-here", "127.0.0.1:0", "--port-file"])
        .arg(&port_file)
        .arg("--cluster-dir")
        .arg(&dir);
    for k in 1..=args.nodes {
        fwd.arg("--listen").arg(format!(
            "/run/netns/{}=127.0.0.1:{APISERVER_PORT}",
            underlay::node_ns(k)
        ));
    }
    spawn(
        &mut state,
        &state_path,
        "forwarder",
        &dir,
        fwd,
        &dir.join("forwarder.log"),
    )?;
    let host_port = wait_for_port(&port_file, &dir.join("forwarder.log"))?;
    let host_kubeconfig = dir.join("admin.kubeconfig");
    std::fs::write(
        &host_kubeconfig,
        admin.replace(
            &format!("https://127.0.0.1:{port}"),
            &format!("https://127.0.0.1:{host_port}"),
        ),
    )?;

    step(
        5,
        total,
        "starting containerd and netlet-agent on every node",
    );
    for k in 1..=args.nodes {
        start_node(
            &mut state,
            &state_path,
            &bins,
            &archives,
            &node_kubeconfig,
            &args.agent_args,
            k,
        )?;
    }

    step(6, total, "waiting for every node to be Ready");
    wait_ready(&host_kubeconfig, args.nodes)?;
    println!();
    println!("cluster is up: {} nodes", args.nodes);
    println!("export KUBECONFIG={}", host_kubeconfig.display());
    println!(
        "(logs under {}; `cargo xtask down` removes everything)",
        dir.display()
    );
    Ok(())
}

/// This program's path, for the forwarder. `cargo xtask test` rebuilds xtask while it runs
/// (clippy and `cargo test` build the whole workspace), after which `/proc/self/exe` names the
/// unlinked old file; the new build at the same path is the same program.
fn xtask_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    if exe.exists() {
        return Ok(exe);
    }
    let rebuilt = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
    if rebuilt.exists() {
        Ok(rebuilt)
    } else {
        bail!("the xtask binary {} is gone", exe.display())
    }
}

fn step(n: usize, total: usize, what: &str) {
    println!("[{n}/{total}] {what}");
}

fn build(release: bool) -> Result<Binaries> {
    let mut args = vec!["build", "-q"];
    if release {
        args.push("--release");
    }
    args.extend([
        "-p",
        "netlet-control-plane",
        "-p",
        "netlet-agent",
        "-p",
        "netlet-cni",
    ]);
    util::run(&mut util::cargo(args))?;
    let out = util::target_dir().join(if release { "release" } else { "debug" });
    let bin = |name: &str| -> Result<PathBuf> {
        let p = out.join(name);
        if !p.is_file() {
            bail!("{} was not produced by the build", p.display());
        }
        Ok(p)
    };
    Ok(Binaries {
        apiserver: bin("netlet-control-plane")?,
        agent: bin("netlet-agent")?,
        cni: bin("netlet-cni")?,
    })
}

/// Starts `cmd` detached (own process group, so Ctrl-C of `up` does not stop the cluster) with
/// output to `log`, and records it; `marker` must appear in its command line.
fn spawn(
    state: &mut State,
    state_path: &Path,
    role: &str,
    marker: &Path,
    mut cmd: Command,
    log: &Path,
) -> Result<u32> {
    redirect(&mut cmd, log)?;
    let pid = record(state, state_path, role, marker, cmd)?;
    if let Some(p) = state.processes.last_mut() {
        p.log = Some(log.display().to_string());
    }
    state.save(state_path)?;
    Ok(pid)
}

/// Sends `cmd`'s output to `log` (appending, so a restarted process continues the same log)
/// and detaches its stdin.
pub(super) fn redirect(cmd: &mut Command, log: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0);
    Ok(())
}

/// Spawns an already configured `cmd` and records it.
fn record(
    state: &mut State,
    state_path: &Path,
    role: &str,
    marker: &Path,
    mut cmd: Command,
) -> Result<u32> {
    cmd.process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {role}: `{}`", util::display(&cmd)))?;
    let pid = child.id();
    // Not waited for: the process outlives `up`; init reaps it once this process exits.
    std::mem::forget(child);
    let argv = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    state.processes.push(Process {
        role: role.to_string(),
        pid,
        marker: marker.display().to_string(),
        argv,
        log: None,
    });
    state.save(state_path)?;
    Ok(pid)
}

/// Waits for the forwarder to write the port it listens on in the host namespace.
fn wait_for_port(path: &Path, log: &Path) -> Result<u16> {
    util::poll(Duration::from_secs(30), Duration::from_millis(50), || {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
    .with_context(|| {
        format!(
            "the forwarder wrote no port to {} within 30 s; see {}",
            path.display(),
            log.display()
        )
    })
}

/// Waits for the apiserver's kubeconfig and returns the port in it.
fn wait_for_kubeconfig(path: &Path) -> Result<u16> {
    util::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        std::fs::read_to_string(path)
            .ok()?
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
    })
    .with_context(|| {
        format!(
            "the apiserver wrote no kubeconfig within 30 s; see {}",
            path.with_file_name("log").display()
        )
    })
}

fn start_node(
    state: &mut State,
    state_path: &Path,
    bins: &Binaries,
    archives: &[PathBuf],
    kubeconfig: &Path,
    agent_args: &[String],
    k: u8,
) -> Result<()> {
    let node_dir = cluster_dir().join(format!("node-{k}"));
    let netns = PathBuf::from(format!("/run/netns/{}", underlay::node_ns(k)));
    let layout = ContainerdLayout::new(node_dir.join("containerd"));
    layout
        .prepare(&bins.cni, images::PAUSE_IMAGE)
        .with_context(|| format!("preparing containerd of node-{k}"))?;
    let cmd = layout.command(&netns)?;
    record(
        state,
        state_path,
        &format!("containerd node-{k}"),
        layout.root(),
        cmd,
    )?;
    wait_for_containerd(&layout, k)?;
    for archive in archives {
        layout
            .import_image(archive)
            .with_context(|| format!("importing images into node-{k}"))?;
    }
    let agent_dir = node_dir.join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let manifests = super::manifests_dir(k);
    std::fs::create_dir_all(&manifests)?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg(&bins.agent)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--node-name", &format!("node-{k}")])
        .args(["--node-ip", &underlay::node_ip(k).to_string()])
        .arg("--containerd-socket")
        .arg(layout.socket())
        .arg("--cni-conf-dir")
        .arg(layout.cni_conf_dir())
        .arg("--cni-bin-dir")
        .arg(layout.cni_bin_dir())
        .arg("--state-dir")
        .arg(&agent_dir)
        .arg("--pod-log-dir")
        .arg(agent_dir.join("pods"))
        .arg("--pod-manifest-path")
        .arg(&manifests)
        .args(["--cgroup-parent", &cgroup_parent(k)])
        .args(agent_args);
    spawn(
        state,
        state_path,
        &format!("agent node-{k}"),
        &agent_dir,
        cmd,
        &node_dir.join("agent.log"),
    )?;
    Ok(())
}

/// Waits until containerd answers on its socket.
fn wait_for_containerd(layout: &ContainerdLayout, k: u8) -> Result<()> {
    util::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        Command::new("ctr")
            .arg("-a")
            .arg(layout.socket())
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then_some(())
    })
    .with_context(|| {
        format!(
            "containerd of node-{k} not answering within 30 s; see {}",
            layout.log_path().display()
        )
    })
}

/// Waits until `nodes` Nodes report Ready, printing each newly Ready one.
fn wait_ready(kubeconfig: &Path, nodes: u8) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    util::poll(READY_TIMEOUT, Duration::from_millis(500), || {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["get", "nodes", "-o", "json"])
            .output()
            .ok()?;
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        for node in list["items"].as_array().into_iter().flatten() {
            let ready = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let name = node["metadata"]["name"].as_str().unwrap_or("?").to_string();
            if ready && seen.insert(name.clone()) {
                println!("      {name} Ready");
            }
        }
        (seen.len() >= usize::from(nodes)).then_some(())
    })
    .with_context(|| {
        format!(
            "only {} of {nodes} nodes Ready after {} s; agent logs are in {}/node-*/agent.log",
            seen.len(),
            READY_TIMEOUT.as_secs(),
            cluster_dir().display()
        )
    })
}
