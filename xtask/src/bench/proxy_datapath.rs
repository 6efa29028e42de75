//! The datapath figures in `cargo xtask bench proxy`: TCP throughput through a ClusterIP
//! against direct pod-to-pod (iperf3) with each backend programming the Service, and the eBPF
//! programs' per-packet cost under `BPF_PROG_TEST_RUN`.
//!
//! Throughput: a node namespace with a bridge and two pod namespaces on veths, one backend at a
//! time programming one Service (ClusterIP → the server pod): eBPF attached to the pod veths,
//! iptables and nftables in the node namespace (bridged packets reach their hooks through
//! br_netfilter, as on a node). iperf3 runs alternately to the pod's address and to the
//! ClusterIP, `RUNS` times each, and the medians are compared. Everything lives in `nlt-`
//! namespaces deleted by their guards.
//!
//! Per-packet cost: the kernel's own average run time of the programs on crafted frames: a new
//! flow (a different source port every run), an established flow, a reply, and a packet to no
//! Service (what every other packet pays).

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use integration::netns::veth_between;
use integration::{ChildGuard, NetNs};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use netlet_ebpf::{Direction, Proto, ServiceNat};
use netlet_proxy::backend::{new_backend, BackendConfig, BackendKind, EbpfOptions, IptablesMode};
use netlet_proxy::{Backend, NetnsExec, ProxyConfig, ServiceTable};
use serde_json::json;

use super::stats;
use crate::util;

/// iperf3 runs per path.
const RUNS: usize = 3;
/// Target from the issue: ClusterIP throughput as a share of direct.
const THROUGHPUT_TARGET: f64 = 0.95;
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const IPERF_PORT: u16 = 5201;

/// A backend whose datapath is measured, with its report label.
#[derive(Debug, Clone, Copy)]
pub struct Datapath {
    /// The row label.
    pub label: &'static str,
    /// Which backend.
    pub kind: BackendKind,
    /// For iptables: which tools.
    pub iptables_mode: IptablesMode,
}

/// Prints the throughput of each of `datapaths`, then (if eBPF is among them) the eBPF
/// programs' per-packet cost.
pub fn run(iperf_seconds: u32, datapaths: &[Datapath]) -> Result<()> {
    println!(
        "datapath: TCP throughput (iperf3, {iperf_seconds} s, median of {RUNS}) via ClusterIP vs direct pod-to-pod (target >= {THROUGHPUT_TARGET} for eBPF)"
    );
    for d in datapaths {
        let (direct, vip) =
            throughput(d, iperf_seconds).with_context(|| format!("datapath of {}", d.label))?;
        let ratio = vip / direct;
        println!(
            "  {:<26} direct {:>6.2} Gbit/s, via ClusterIP {:>6.2} Gbit/s, ratio {ratio:.3}{}",
            d.label,
            direct / 1e9,
            vip / 1e9,
            match d.kind {
                BackendKind::Ebpf if ratio >= THROUGHPUT_TARGET => " (met)",
                BackendKind::Ebpf => " (NOT met)",
                _ => "",
            }
        );
    }
    if datapaths.iter().any(|d| d.kind == BackendKind::Ebpf) {
        println!("eBPF programs");
        per_packet()?;
    }
    Ok(())
}

/// The namespaces of the throughput test; the server dies before them.
struct Rig {
    _server: ChildGuard,
    node: NetNs,
    client: NetNs,
    _server_ns: NetNs,
    _state: tempfile::TempDir,
    backend: Box<dyn Backend>,
}

fn rig(datapath: &Datapath) -> Result<Rig> {
    let node = util::netns("bdpnode")?;
    node.sysctl("net.ipv4.ip_forward", "1");
    node.run_ok("ip", &["link", "add", "br0", "type", "bridge"]);
    node.run_ok(
        "ip",
        &["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", "br0"],
    );
    node.run_ok("ip", &["link", "set", "br0", "up"]);
    let mut pods = Vec::new();
    for (i, ip) in [CLIENT_IP, SERVER_IP].into_iter().enumerate() {
        let pod = util::netns(&format!("bdppod{i}"))?;
        let port = format!("vp{i}");
        veth_between(&node, &port, &pod, "eth0");
        node.run_ok("ip", &["link", "set", &port, "master", "br0"]);
        pod.run_ok("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        pod.run_ok(
            "ip",
            &["route", "add", "default", "via", &BRIDGE_IP.to_string()],
        );
        pods.push(pod);
    }
    let server_ns = pods.pop().expect("two pods");
    let client = pods.pop().expect("two pods");
    let server = server_ns
        .command("iperf3")
        .args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s (run cargo xtask deps)")?;
    let server = ChildGuard::new(server);

    let state = tempfile::tempdir().context("creating the backend state dir")?;
    let cfg = ProxyConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("valid CIDR")],
        ..ProxyConfig::new("bench")
    };
    let backend_cfg = BackendConfig {
        kind: datapath.kind,
        netns: NetnsExec::Named(node.name().into()),
        iptables_mode: datapath.iptables_mode,
        ebpf: EbpfOptions {
            state_dir: state.path().to_owned(),
            interfaces: vec!["vp*".to_owned()],
            masquerade_ip: Some(BRIDGE_IP),
        },
    };
    let mut backend = new_backend(&backend_cfg, &cfg)
        .with_context(|| format!("creating the {} backend", datapath.kind))?;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": "iperf"},
        "spec": {"clusterIP": VIP.to_string(), "ports": [{"port": IPERF_PORT, "protocol": "TCP"}]},
    }))?;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": "iperf-1",
            "labels": {"kubernetes.io/service-name": "iperf"}},
        "addressType": "IPv4",
        "ports": [{"port": IPERF_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [SERVER_IP.to_string()], "conditions": {"ready": true}}],
    }))?;
    backend
        .sync(&ServiceTable::build(&[svc], &[slice], &cfg))
        .context("programming the iperf Service")?;
    Ok(Rig {
        _server: server,
        node,
        client,
        _server_ns: server_ns,
        _state: state,
        backend,
    })
}

/// Median bits/s of (direct, via the ClusterIP).
fn throughput(datapath: &Datapath, seconds: u32) -> Result<(f64, f64)> {
    let mut rig = rig(datapath)?;
    let result = (|| -> Result<(f64, f64)> {
        // iperf3 -s needs a moment to listen; the first client retries until it connects.
        util::poll(Duration::from_secs(5), Duration::from_millis(100), || {
            iperf(&rig.client, SERVER_IP, 1).ok()
        })
        .context("iperf3 server never answered")?;
        let (mut direct, mut vip) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            direct.push(iperf(&rig.client, SERVER_IP, seconds)?);
            vip.push(iperf(&rig.client, VIP, seconds)?);
        }
        Ok((
            stats::median(&direct).expect("RUNS > 0"),
            stats::median(&vip).expect("RUNS > 0"),
        ))
    })();
    let cleanup = rig.backend.cleanup().map(drop);
    drop(rig.node);
    let figures = result?;
    cleanup.with_context(|| format!("cleaning up the {} backend", datapath.kind))?;
    Ok(figures)
}

/// One iperf3 client run from `client` to `dst`; received bits per second.
fn iperf(client: &NetNs, dst: Ipv4Addr, seconds: u32) -> Result<f64> {
    let out = client
        .command("iperf3")
        .args(["-c", &dst.to_string(), "-p", &IPERF_PORT.to_string()])
        .args(["-t", &seconds.to_string(), "-J"])
        .stderr(Stdio::null())
        .output()
        .context("running iperf3 -c")?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3's JSON report")?;
    if let Some(e) = report["error"].as_str() {
        bail!("iperf3 to {dst}: {e}");
    }
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report without end.sum_received")?;
    ensure!(out.status.success() && bps > 0.0, "iperf3 to {dst} failed");
    Ok(bps)
}

/// Runs each path's frames under test-run and prints the kernel's average ns per run.
fn per_packet() -> Result<()> {
    let mut nat = ServiceNat::load().context("loading the service NAT programs")?;
    let backends: Vec<(Ipv4Addr, u16)> = (0..5)
        .map(|i| (Ipv4Addr::new(10, 244, 2, 10 + i), 8080))
        .collect();
    nat.set_service(VIP, 80, Proto::Tcp, &backends)
        .context("programming the service")?;
    let client = Ipv4Addr::new(10, 244, 1, 7);
    let avg = |dir: Direction, frames: &[Vec<u8>], repeat: u32| -> Result<f64> {
        let mut total = 0.0;
        for f in frames {
            total += nat.test_run(dir, f, repeat)?.duration.as_nanos() as f64;
        }
        Ok(total / frames.len() as f64)
    };
    let new_flows: Vec<Vec<u8>> = (0..2000u16)
        .map(|i| tcp_frame(client, 20000 + i, VIP, 80))
        .collect();
    let new_ns = avg(Direction::Forward, &new_flows, 1)?;
    let established = [tcp_frame(client, 20000, VIP, 80)];
    let est_ns = avg(Direction::Forward, &established, 10_000)?;
    let out = nat.test_run(Direction::Forward, &established[0], 1)?;
    let (be_ip, be_port) = dst_of(&out.packet);
    let reply = [tcp_frame(be_ip, be_port, client, 20000)];
    let reply_ns = avg(Direction::Reverse, &reply, 10_000)?;
    let other = [tcp_frame(client, 20000, Ipv4Addr::new(10, 244, 3, 3), 80)];
    let pass_ns = avg(Direction::Forward, &other, 10_000)?;
    println!(
        "  per packet (BPF_PROG_TEST_RUN, kernel average): new flow {new_ns:.0} ns, established {est_ns:.0} ns, reply {reply_ns:.0} ns, no service {pass_ns:.0} ns"
    );
    Ok(())
}

/// Ethernet + IPv4 + TCP SYN with valid checksums.
fn tcp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12 + tcp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, tcp.len() as u8]);
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The destination address and port of a frame built by [`tcp_frame`].
fn dst_of(frame: &[u8]) -> (Ipv4Addr, u16) {
    let ip = &frame[14..];
    (
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([ip[22], ip[23]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_frames_carry_valid_checksums() {
        let f = tcp_frame(CLIENT_IP, 1234, VIP, 80);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&CLIENT_IP.octets());
        pseudo.extend_from_slice(&VIP.octets());
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&f[34..]);
        assert_eq!(checksum(&pseudo), 0, "TCP checksum");
        assert_eq!(dst_of(&f), (VIP, 80));
    }
}
