//! `cargo xtask bench proxy`: netlet-proxy's iptables, nftables and eBPF backends against the
//! rulesets kube-proxy writes for the same Services, then the eBPF datapath's throughput and
//! per-packet cost (`proxy_datapath.rs`).
//!
//! `--services` Services (ClusterIP `10.96.x.y:80` → targetPort 8080), each with one
//! EndpointSlice of 5 ready endpoints in `10.244.0.0/16`, are generated in memory as k8s-openapi
//! objects and turned into a [`ServiceTable`] once. Every subject gets a fresh `nlt-*` network
//! namespace per run; nothing touches the host's namespace. Two figures per subject:
//!
//! - **full sync**: ours is one [`Backend::sync`] of the whole table (including its
//!   `iptables-save` read and hook checks); the references are one `iptables-restore --noflush`
//!   (legacy and nft variants) of kube-proxy's iptables ruleset, and one `nft -f` of kube-proxy's
//!   nftables-mode ruleset, both generated here in kube-proxy's exact shape (chain names hashed
//!   as kube-proxy hashes them). A reference slower than `--reference-timeout` is killed and
//!   reported as "> timeout".
//! - **one change**: after the full sync, `--changes` times one endpoint of one Service is
//!   replaced; ours is [`Backend::sync_changed`] with that Service, the iptables references are
//!   kube-proxy's partial sync (`iptables-restore --noflush` of its top-level chains, which it
//!   always rewrites, plus the changed Service's chains and the stale endpoint chain's deletion),
//!   the nftables reference kube-proxy's nftables partial sync (`nft -f` of the changed chains).
//!
//! The eBPF backend's full sync is timed into loaded maps: its one-time program load and map
//! creation (an empty first sync) is timed and printed separately.
//!
//! Our backends run in-process; the root Cargo.toml builds `netlet-proxy` with opt-level 3 in
//! the dev profile, so the debug `cargo xtask` times optimised backend code. The references are
//! timed from spawn to exit of the tool, which is also what ours pays per kernel transaction.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use integration::NetNs;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netlet_proxy::backend::{EbpfOptions, IptablesMode};
use netlet_proxy::model::SERVICE_NAME_LABEL;
use netlet_proxy::{
    new_backend, Backend, BackendConfig, BackendKind, NetnsExec, ProxyConfig, ServiceKey,
    ServiceTable,
};
use sha2::{Digest, Sha256};

use super::proxy_datapath::Datapath;
use super::stats;
use crate::{interrupt, util};

/// Endpoints per Service (from the issue).
const ENDPOINTS_PER_SERVICE: u32 = 5;
/// The Services' namespace.
const NAMESPACE: &str = "bench";
/// The Services' port name.
const PORT_NAME: &str = "http";
/// The Services' port.
const SERVICE_PORT: u16 = 80;
/// The endpoints' port (the Services' targetPort).
const TARGET_PORT: u16 = 8080;
/// The pod network; traffic to a cluster IP from outside it is masqueraded.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Addresses in `10.96.0.0/16` and `10.244.0.0/16` bound `--services` (and the changes' new
/// endpoints come from the top of the pod network).
const MAX_SERVICES: u32 = 12_000;
/// First host number in the pod network for the endpoints the changes put in.
const CHANGE_HOSTS: u32 = 60_001;
/// Targets from the issue.
const NFT_FULL_TARGET_S: f64 = 0.25;
/// See [`NFT_FULL_TARGET_S`].
const NFT_CHANGE_TARGET_MS: f64 = 1.0;
/// Our iptables full sync as a multiple of the legacy `iptables-restore` of kube-proxy's rules.
const IPT_FULL_TARGET_RATIO: f64 = 1.0;
/// See [`NFT_FULL_TARGET_S`].
const IPT_CHANGE_TARGET_MS: f64 = 50.0;
/// eBPF full sync into loaded maps (issue 8).
const EBPF_FULL_TARGET_MS: f64 = 100.0;
/// See [`EBPF_FULL_TARGET_MS`].
const EBPF_CHANGE_TARGET_MS: f64 = 1.0;

/// Options of `cargo xtask bench proxy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services, each with 5 endpoints (at most 12,000).
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    /// Repeat the whole bench this many times and report the median of the per-run figures.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// One-endpoint changes timed per subject and run (after its full sync).
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Seconds a reference full sync may take before it is killed and reported as "> timeout".
    #[arg(long, default_value_t = 180)]
    reference_timeout: u64,
    /// Run only the subjects whose row label contains this text (repeatable; e.g.
    /// `--only ebpf --only legacy`); the datapath figures run for the selected backends of ours.
    #[arg(long)]
    only: Vec<String>,
    /// Seconds of each iperf3 run in the throughput figure.
    #[arg(long, default_value_t = 5)]
    iperf_seconds: u32,
}

/// Who programs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    /// kube-proxy's iptables ruleset through `iptables-legacy-restore`.
    RefIptablesLegacy,
    /// kube-proxy's iptables ruleset through `iptables-nft-restore`.
    RefIptablesNft,
    /// kube-proxy's nftables ruleset through `nft -f`.
    RefNft,
    /// Our iptables backend, legacy tools.
    OursIptablesLegacy,
    /// Our iptables backend, nft tools.
    OursIptablesNft,
    /// Our nftables backend (netlink).
    OursNftables,
    /// Our eBPF backend (map updates).
    OursEbpf,
}

impl Subject {
    /// All subjects, in run order (each reference before the backend compared with it).
    const ALL: [Subject; 7] = [
        Subject::RefIptablesLegacy,
        Subject::OursIptablesLegacy,
        Subject::RefIptablesNft,
        Subject::OursIptablesNft,
        Subject::RefNft,
        Subject::OursNftables,
        Subject::OursEbpf,
    ];

    /// The row label in the report.
    fn label(self) -> &'static str {
        match self {
            Subject::RefIptablesLegacy => "kube-proxy iptables-legacy-restore",
            Subject::RefIptablesNft => "kube-proxy iptables-nft-restore",
            Subject::RefNft => "kube-proxy nftables (nft -f)",
            Subject::OursIptablesLegacy => "netlet iptables (legacy)",
            Subject::OursIptablesNft => "netlet iptables (nft)",
            Subject::OursNftables => "netlet nftables",
            Subject::OursEbpf => "netlet ebpf",
        }
    }

    /// Our backend and iptables tools for our rows (`None` for references).
    fn backend(self) -> Option<(BackendKind, IptablesMode)> {
        match self {
            Subject::OursIptablesLegacy => Some((BackendKind::Iptables, IptablesMode::Legacy)),
            Subject::OursIptablesNft => Some((BackendKind::Iptables, IptablesMode::Nft)),
            Subject::OursNftables => Some((BackendKind::Nftables, IptablesMode::Auto)),
            Subject::OursEbpf => Some((BackendKind::Ebpf, IptablesMode::Auto)),
            _ => None,
        }
    }

    /// The reference a row's ratio is taken against (`None` for references).
    fn reference(self) -> Option<Subject> {
        match self {
            Subject::OursIptablesLegacy | Subject::OursIptablesNft | Subject::OursEbpf => {
                Some(Subject::RefIptablesLegacy)
            }
            Subject::OursNftables => Some(Subject::RefNft),
            _ => None,
        }
    }
}

/// How a full sync went.
#[derive(Debug, Clone)]
enum Full {
    /// Finished in this many seconds.
    Secs(f64),
    /// Killed after `--reference-timeout`.
    TimedOut,
    /// Failed; the message says why.
    Failed(String),
}

/// One subject, one run.
#[derive(Debug, Clone)]
struct RunResult {
    /// The full sync.
    full: Full,
    /// The one-endpoint changes, in ms (none when the full sync did not finish).
    changes_ms: Vec<f64>,
}

/// The generated cluster state and what the changes do to it.
struct Workload {
    /// The Services.
    services: Vec<Service>,
    /// One EndpointSlice per Service.
    slices: Vec<EndpointSlice>,
    /// The proxy config both sides render for.
    cfg: ProxyConfig,
}

/// One change: endpoint `slot` of Service `service` moves to `new_ip`.
#[derive(Debug, Clone, Copy)]
struct Change {
    /// Index of the Service.
    service: u32,
    /// Index of the endpoint within it.
    slot: u32,
    /// Its new address.
    new_ip: Ipv4Addr,
}

/// `cargo xtask bench proxy`.
pub fn run(args: &Args) -> Result<()> {
    util::require_root("cargo xtask bench proxy")?;
    ensure!(
        (1..=MAX_SERVICES).contains(&args.services),
        "--services must be between 1 and {MAX_SERVICES}"
    );
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(
        (1..=1000).contains(&args.changes),
        "--changes must be between 1 and 1000"
    );
    for tool in ["iptables-legacy-restore", "iptables-nft-restore", "nft"] {
        ensure!(
            util::which(tool).is_some(),
            "{tool} is missing; run `cargo xtask deps` (iptables and nftables packages)"
        );
    }
    let timeout = Duration::from_secs(args.reference_timeout);
    let start = Instant::now();
    let workload = Workload::generate(args.services);
    println!(
        "generated {} Services and EndpointSlices in {:.2} s",
        args.services,
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let table = ServiceTable::build(&workload.services, &workload.slices, &workload.cfg);
    println!(
        "ServiceTable::build: {} service ports in {:.3} s (not part of any figure below)",
        table.len(),
        start.elapsed().as_secs_f64()
    );
    let changes: Vec<Change> = (0..args.changes)
        .map(|k| Change {
            service: (k as u32 * 7919 + args.services / 2) % args.services,
            slot: k as u32 % ENDPOINTS_PER_SERVICE,
            new_ip: pod_ip(CHANGE_HOSTS + k as u32),
        })
        .collect();

    let mut results: BTreeMap<usize, Vec<RunResult>> = BTreeMap::new();
    for run in 1..=args.runs {
        for (i, subject) in Subject::ALL.iter().enumerate() {
            if !selected(args, *subject) {
                continue;
            }
            interrupt::check()?;
            println!("[run {run}/{}] {}", args.runs, subject.label());
            let r = bench_one(*subject, &workload, &table, &changes, timeout)
                .with_context(|| format!("benchmarking {} (run {run})", subject.label()))?;
            match &r.full {
                Full::Secs(s) => println!("  full sync {s:>9.3} s"),
                Full::TimedOut => println!("  full sync > {} s (killed)", timeout.as_secs()),
                Full::Failed(e) => println!("  full sync FAILED: {e}"),
            }
            if let Some(m) = stats::median(&r.changes_ms) {
                println!(
                    "  one change median {m:>9.3} ms over {}",
                    r.changes_ms.len()
                );
            }
            results.entry(i).or_default().push(r);
        }
    }
    println!();
    print!("{}", report(&results, args));
    let datapaths: Vec<Datapath> = Subject::ALL
        .into_iter()
        .filter(|s| selected(args, *s))
        .filter_map(|s| {
            let (kind, iptables_mode) = s.backend()?;
            Some(Datapath {
                label: s.label(),
                kind,
                iptables_mode,
            })
        })
        .collect();
    if !datapaths.is_empty() {
        println!();
        super::proxy_datapath::run(args.iperf_seconds, &datapaths)?;
    }
    Ok(())
}

/// Whether `--only` selects `subject` (everything without `--only`).
fn selected(args: &Args, subject: Subject) -> bool {
    args.only.is_empty()
        || args
            .only
            .iter()
            .any(|o| subject.label().contains(o.as_str()))
}

/// One subject, one run, in a fresh namespace (deleted by its guard, also on error).
fn bench_one(
    subject: Subject,
    workload: &Workload,
    table: &ServiceTable,
    changes: &[Change],
    timeout: Duration,
) -> Result<RunResult> {
    let ns = util::netns("bproxy")?;
    match (subject, subject.backend()) {
        (_, Some((kind, iptables_mode))) => {
            let state = tempfile::tempdir().context("creating the eBPF state dir")?;
            let cfg = BackendConfig {
                kind,
                netns: NetnsExec::Named(ns.name().to_owned()),
                iptables_mode,
                ebpf: EbpfOptions {
                    state_dir: state.path().to_owned(),
                    interfaces: Vec::new(),
                    masquerade_ip: Some(Ipv4Addr::new(10, 244, 0, 1)),
                },
            };
            let mut backend = new_backend(&cfg, &workload.cfg).context("creating the backend")?;
            if subject == Subject::OursEbpf {
                // Program load and map creation happen once per node, not per sync.
                let start = Instant::now();
                backend
                    .sync(&ServiceTable::default())
                    .context("loading the eBPF programs")?;
                println!(
                    "  program load and map creation {:.3} s (once per node; not in the full sync)",
                    start.elapsed().as_secs_f64()
                );
            }
            let result = bench_ours(backend.as_mut(), workload, table, changes);
            backend.cleanup().context("cleaning up the backend")?;
            result
        }
        (Subject::RefNft, None) => {
            bench_reference(&ns, workload, changes, timeout, |w, state, full| {
                ("nft", vec!["-f"], kube_nft(w, state, full))
            })
        }
        // The iptables references.
        (_, None) => {
            let tool = if subject == Subject::RefIptablesLegacy {
                "iptables-legacy-restore"
            } else {
                "iptables-nft-restore"
            };
            bench_reference(&ns, workload, changes, timeout, |w, state, full| {
                let text = kube_iptables(w, state, full);
                (tool, vec!["--noflush"], text)
            })
        }
    }
}

/// Our backend: full sync, then each change through `sync_changed`.
fn bench_ours(
    backend: &mut dyn Backend,
    workload: &Workload,
    table: &ServiceTable,
    changes: &[Change],
) -> Result<RunResult> {
    let start = Instant::now();
    let full = match backend.sync(table) {
        Ok(_) => Full::Secs(start.elapsed().as_secs_f64()),
        Err(e) => {
            return Ok(RunResult {
                full: Full::Failed(e.to_string()),
                changes_ms: Vec::new(),
            })
        }
    };
    let mut slices = workload.slices.clone();
    let mut changes_ms = Vec::with_capacity(changes.len());
    for c in changes {
        interrupt::check()?;
        apply_change(&mut slices, c);
        let table = ServiceTable::build(&workload.services, &slices, &workload.cfg);
        let key = ServiceKey::new(NAMESPACE, service_name(c.service));
        let start = Instant::now();
        backend
            .sync_changed(&table, std::slice::from_ref(&key))
            .with_context(|| format!("sync_changed of {key:?}"))?;
        changes_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(RunResult { full, changes_ms })
}

/// The endpoints of every Service as a reference sees them: `state[i][slot]`.
type EndpointState = Vec<Vec<Ipv4Addr>>;

/// What a reference renders: the full ruleset (`None`) or the partial sync of one change
/// (`Some((change, old_ip))`, applied to `state` already).
type Render<'a> = Option<(&'a Change, Ipv4Addr)>;

/// A reference: loads the full ruleset (killed after `timeout`), then each change's partial
/// ruleset. `render` gives the tool, its arguments before the file, and the text.
fn bench_reference(
    ns: &NetNs,
    workload: &Workload,
    changes: &[Change],
    timeout: Duration,
    render: impl Fn(&Workload, &EndpointState, Render<'_>) -> (&'static str, Vec<&'static str>, String),
) -> Result<RunResult> {
    let tmp = tempfile::Builder::new()
        .prefix("nlt-bench-proxy-")
        .tempdir()
        .context("creating a temp dir")?;
    let mut state: EndpointState = (0..workload.services.len() as u32)
        .map(|i| {
            (0..ENDPOINTS_PER_SERVICE)
                .map(|e| endpoint_ip(i, e))
                .collect()
        })
        .collect();
    let file = tmp.path().join("rules");
    let (tool, args, text) = render(workload, &state, None);
    std::fs::write(&file, text).context("writing the reference ruleset")?;
    let full = match run_timed(ns, tool, &args, &file, timeout)? {
        ToolRun::Done(d) => Full::Secs(d.as_secs_f64()),
        ToolRun::TimedOut => Full::TimedOut,
        ToolRun::Failed(e) => Full::Failed(e),
    };
    if !matches!(full, Full::Secs(_)) {
        return Ok(RunResult {
            full,
            changes_ms: Vec::new(),
        });
    }
    let mut changes_ms = Vec::with_capacity(changes.len());
    for c in changes {
        interrupt::check()?;
        let slot = &mut state[c.service as usize][c.slot as usize];
        let old = std::mem::replace(slot, c.new_ip);
        let (tool, args, text) = render(workload, &state, Some((c, old)));
        std::fs::write(&file, text).context("writing the reference change")?;
        match run_timed(ns, tool, &args, &file, timeout)? {
            ToolRun::Done(d) => changes_ms.push(d.as_secs_f64() * 1e3),
            ToolRun::TimedOut => bail!("{tool} change took over {} s", timeout.as_secs()),
            ToolRun::Failed(e) => bail!("{tool} change failed: {e}"),
        }
    }
    Ok(RunResult { full, changes_ms })
}

/// How one tool run ended.
enum ToolRun {
    /// Exited 0 after this long.
    Done(Duration),
    /// Killed at the timeout.
    TimedOut,
    /// Exited non-zero; its stderr.
    Failed(String),
}

/// Runs `tool args file` inside `ns`, timed from spawn to exit, killed after `timeout`.
fn run_timed(
    ns: &NetNs,
    tool: &str,
    args: &[&str],
    file: &Path,
    timeout: Duration,
) -> Result<ToolRun> {
    // stderr goes to a file: a tool failing on every line can print more than a pipe holds,
    // and would then block until the timeout.
    let err_path = file.with_extension("stderr");
    let err_file = std::fs::File::create(&err_path).context("creating the stderr file")?;
    let start = Instant::now();
    let mut child = ns
        .command(tool)
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .with_context(|| format!("spawning {tool} in {}", ns.name()))?;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the reference tool")? {
            let elapsed = start.elapsed();
            if status.success() {
                return Ok(ToolRun::Done(elapsed));
            }
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            let err: String = err.trim().chars().take(2000).collect();
            return Ok(ToolRun::Failed(format!("{tool} ({status}): {err}")));
        }
        let killed = if start.elapsed() > timeout {
            Some(ToolRun::TimedOut)
        } else if interrupt::check().is_err() {
            None
        } else {
            std::thread::sleep(Duration::from_micros(100)); // busy-ish poll so the measured latency is not rounded up by the wait
            continue;
        };
        let _ = child.kill();
        let _ = child.wait();
        return killed.ok_or_else(|| anyhow::anyhow!("interrupted"));
    }
}

impl Workload {
    /// `n` Services with one 5-endpoint EndpointSlice each.
    fn generate(n: u32) -> Self {
        let services = (0..n).map(service).collect();
        let slices = (0..n)
            .map(|i| {
                let ips: Vec<Ipv4Addr> = (0..ENDPOINTS_PER_SERVICE)
                    .map(|e| endpoint_ip(i, e))
                    .collect();
                slice(i, &ips)
            })
            .collect();
        let cfg = ProxyConfig {
            cluster_cidrs: vec![CLUSTER_CIDR.parse().expect("valid CIDR")],
            ..ProxyConfig::new("bench-node")
        };
        Self {
            services,
            slices,
            cfg,
        }
    }
}

/// The name of Service `i`.
fn service_name(i: u32) -> String {
    format!("svc-{i}")
}

/// The cluster IP of Service `i`: `10.96.x.y`, skipping `10.96.0.0`.
fn cluster_ip(i: u32) -> Ipv4Addr {
    let [_, _, a, b] = (i + 1).to_be_bytes();
    Ipv4Addr::new(10, 96, a, b)
}

/// Host `h` of the pod network `10.244.0.0/16`.
fn pod_ip(h: u32) -> Ipv4Addr {
    let [_, _, a, b] = h.to_be_bytes();
    Ipv4Addr::new(10, 244, a, b)
}

/// The initial address of endpoint `e` of Service `i`.
fn endpoint_ip(i: u32, e: u32) -> Ipv4Addr {
    pod_ip(i * ENDPOINTS_PER_SERVICE + e + 1)
}

/// Service `i` as the apiserver would return it.
fn service(i: u32) -> Service {
    let ip = cluster_ip(i).to_string();
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(i)),
            namespace: Some(NAMESPACE.to_owned()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ip_families: Some(vec!["IPv4".to_owned()]),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: i32::from(SERVICE_PORT),
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::Int(i32::from(TARGET_PORT))),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The EndpointSlice of Service `i` with these endpoint addresses, all ready.
fn slice(i: u32, ips: &[Ipv4Addr]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-abcde", service_name(i))),
            namespace: Some(NAMESPACE.to_owned()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_owned(),
                service_name(i),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: Some(
            ips.iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some("node-b".to_owned()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some(PORT_NAME.to_owned()),
            port: Some(i32::from(TARGET_PORT)),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
    }
}

/// Applies `c` to the slices.
fn apply_change(slices: &mut [EndpointSlice], c: &Change) {
    let eps = slices[c.service as usize]
        .endpoints
        .as_mut()
        .expect("generated slices have endpoints");
    let ep = &mut eps[c.slot as usize];
    ep.addresses = vec![c.new_ip.to_string()];
}

/// Go's `base32.StdEncoding` (RFC 4648 alphabet, `=` padding).
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    for chunk in data.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let bits = buf.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
        let chars = (chunk.len() * 8).div_ceil(5);
        for k in 0..8 {
            if k < chars {
                out.push(char::from(ALPHABET[((bits >> (35 - 5 * k)) & 31) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The first `n` characters of base32(sha256(`s`)), as kube-proxy names chains.
fn hash_prefix(s: &str, n: usize) -> String {
    let mut h = base32(&Sha256::digest(s.as_bytes()));
    h.truncate(n);
    h
}

/// kube-proxy's `ServicePortName.String()` of Service `i`.
fn port_name(i: u32) -> String {
    format!("{NAMESPACE}/{}:{PORT_NAME}", service_name(i))
}

/// kube-proxy's `KUBE-SVC-*` chain of Service `i`.
fn kube_svc_chain(i: u32) -> String {
    format!(
        "KUBE-SVC-{}",
        hash_prefix(&format!("{}tcp", port_name(i)), 16)
    )
}

/// kube-proxy's `KUBE-SEP-*` chain of Service `i`'s endpoint `ip`.
fn kube_sep_chain(i: u32, ip: Ipv4Addr) -> String {
    let s = format!("{}tcp{ip}:{TARGET_PORT}", port_name(i));
    format!("KUBE-SEP-{}", hash_prefix(&s, 16))
}

/// kube-proxy's iptables `restore` input: the full ruleset (`change` = `None`) or its partial
/// sync after one change (top-level chains rewritten in full, as kube-proxy always does, plus the
/// changed Service's chains and the stale endpoint chain's deletion).
fn kube_iptables(w: &Workload, state: &EndpointState, change: Render<'_>) -> String {
    let mut s = String::with_capacity(w.services.len() * 1200 + 4096);
    // filter: kube-proxy's top-level chains (no rules for Services that have endpoints).
    s.push_str("*filter\n");
    for c in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    s.push_str(concat!(
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" ",
        "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" ",
        "-m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" ",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    ));
    if change.is_none() {
        // kube-proxy ensures its jumps with `iptables -C/-I` outside the restore; loaded here.
        s.push_str(concat!(
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A INPUT -j KUBE-FIREWALL\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A OUTPUT -j KUBE-FIREWALL\n",
        ));
    }
    s.push_str("COMMIT\n*nat\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let n = w.services.len() as u32;
    // Per-service chains: all of them on a full sync, the changed one on a partial sync.
    let written: Vec<u32> = match change {
        None => (0..n).collect(),
        Some((c, _)) => vec![c.service],
    };
    for &i in &written {
        let _ = writeln!(s, ":{} - [0:0]", kube_svc_chain(i));
        for ip in &state[i as usize] {
            let _ = writeln!(s, ":{} - [0:0]", kube_sep_chain(i, *ip));
        }
    }
    let stale = change.map(|(c, old)| kube_sep_chain(c.service, old));
    if let Some(stale) = &stale {
        let _ = writeln!(s, ":{stale} - [0:0]");
    }
    s.push_str(concat!(
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" ",
        "-j MASQUERADE --random-fully\n",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    ));
    if change.is_none() {
        s.push_str(concat!(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        ));
    }
    for i in 0..n {
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/32 --dport {SERVICE_PORT} -j {}",
            port_name(i),
            cluster_ip(i),
            kube_svc_chain(i)
        );
    }
    s.push_str(concat!(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be ",
        "the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    ));
    // kube-proxy's "large cluster mode" (more than 1,000 endpoints in all): the balancing and
    // endpoint rules go without comments.
    let total: usize = state.iter().map(Vec::len).sum();
    let large = total > 1000;
    for &i in &written {
        let name = port_name(i);
        let svc = kube_svc_chain(i);
        let comment = |text: &str| {
            if large {
                String::new()
            } else {
                format!(" -m comment --comment {text}")
            }
        };
        let _ = writeln!(
            s,
            "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {}/32 --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            cluster_ip(i)
        );
        let eps = &state[i as usize];
        for (k, ip) in eps.iter().enumerate() {
            let sep = kube_sep_chain(i, *ip);
            let left = eps.len() - k;
            let stat = if left > 1 {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let c = comment(&format!("\"{name} -> {ip}:{TARGET_PORT}\""));
            let _ = writeln!(s, "-A {svc}{c}{stat} -j {sep}");
        }
        for ip in eps {
            let sep = kube_sep_chain(i, *ip);
            let c = comment(&name);
            let _ = writeln!(s, "-A {sep}{c} -s {ip}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                s,
                "-A {sep}{c} -m tcp -p tcp -j DNAT --to-destination {ip}:{TARGET_PORT}"
            );
        }
    }
    if let Some(stale) = &stale {
        let _ = writeln!(s, "-X {stale}");
    }
    s.push_str("COMMIT\n");
    s
}

/// kube-proxy's nftables `hashAndTruncate` (names here are far below its length limit).
fn nft_base(name: &str) -> String {
    format!("{}-{name}", hash_prefix(name, 8))
}

/// kube-proxy's nftables service chain of Service `i`.
fn nft_svc_chain(i: u32) -> String {
    let base = format!("{NAMESPACE}/{}/tcp/{PORT_NAME}", service_name(i));
    format!("service-{}", nft_base(&base))
}

/// kube-proxy's nftables endpoint chain of Service `i`'s endpoint `ip`.
fn nft_ep_chain(i: u32, ip: Ipv4Addr) -> String {
    let base = format!(
        "{NAMESPACE}/{}/tcp/{PORT_NAME}__{ip}/{TARGET_PORT}",
        service_name(i)
    );
    format!("endpoint-{}", nft_base(&base))
}

/// kube-proxy's nftables-mode `nft -f` input: the full ruleset (`change` = `None`), or the
/// partial sync of one change (the changed Service's chains, the new endpoint chain, the stale
/// one deleted).
fn kube_nft(w: &Workload, state: &EndpointState, change: Render<'_>) -> String {
    let mut s = String::with_capacity(w.services.len() * 1500 + 4096);
    let t = "ip kube-proxy";
    let n = w.services.len() as u32;
    if change.is_none() {
        let _ = writeln!(s, "add table {t} {{ comment \"rules for kube-proxy\" ; }}");
        for (chain, hook) in [
            (
                "filter-prerouting",
                Some("type filter hook prerouting priority -110"),
            ),
            ("filter-input", Some("type filter hook input priority -110")),
            (
                "filter-forward",
                Some("type filter hook forward priority -110"),
            ),
            (
                "filter-output",
                Some("type filter hook output priority -110"),
            ),
            (
                "filter-output-post-dnat",
                Some("type filter hook output priority -90"),
            ),
            (
                "nat-prerouting",
                Some("type nat hook prerouting priority -100"),
            ),
            ("nat-output", Some("type nat hook output priority -100")),
            (
                "nat-postrouting",
                Some("type nat hook postrouting priority 100"),
            ),
            ("mark-for-masquerade", None),
            ("masquerading", None),
            ("services", None),
            ("service-endpoints-check", None),
            ("nodeport-endpoints-check", None),
            ("firewall-check", None),
            ("cluster-ips-check", None),
            ("reject-chain", None),
        ] {
            match hook {
                Some(h) => {
                    let _ = writeln!(s, "add chain {t} {chain} {{ {h} ; }}");
                }
                None => {
                    let _ = writeln!(s, "add chain {t} {chain}");
                }
            }
            let _ = writeln!(s, "flush chain {t} {chain}");
        }
        for (name, ty, comment) in [
            ("cluster-ips", "ipv4_addr", "Active ClusterIPs"),
            (
                "nodeport-ips",
                "ipv4_addr",
                "IPs that accept NodePort traffic",
            ),
        ] {
            let _ = writeln!(
                s,
                "add set {t} {name} {{ type {ty} ; comment \"{comment}\" ; }}\nflush set {t} {name}"
            );
        }
        for (name, ty, comment) in [
            (
                "service-ips",
                "ipv4_addr . inet_proto . inet_service : verdict",
                "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            ),
            (
                "service-nodeports",
                "inet_proto . inet_service : verdict",
                "NodePort traffic",
            ),
            (
                "no-endpoint-services",
                "ipv4_addr . inet_proto . inet_service : verdict",
                "vmap to drop or reject packets to services with no endpoints",
            ),
            (
                "no-endpoint-nodeports",
                "inet_proto . inet_service : verdict",
                "vmap to drop or reject packets to service nodeports with no endpoints",
            ),
            (
                "firewall-ips",
                "ipv4_addr . inet_proto . inet_service : verdict",
                "destinations that are subject to LoadBalancerSourceRanges",
            ),
        ] {
            let _ = writeln!(
                s,
                "add map {t} {name} {{ type {ty} ; comment \"{comment}\" ; }}\nflush map {t} {name}"
            );
        }
        s.push_str(&format!(
            concat!(
                "add rule {t} filter-prerouting ct state new jump firewall-check\n",
                "add rule {t} filter-forward ct state new jump service-endpoints-check\n",
                "add rule {t} filter-forward ct state new jump cluster-ips-check\n",
                "add rule {t} filter-input ct state new jump nodeport-endpoints-check\n",
                "add rule {t} filter-input ct state new jump service-endpoints-check\n",
                "add rule {t} filter-output ct state new jump service-endpoints-check\n",
                "add rule {t} filter-output ct state new jump cluster-ips-check\n",
                "add rule {t} filter-output-post-dnat ct state new jump firewall-check\n",
                "add rule {t} reject-chain reject\n",
                "add rule {t} mark-for-masquerade mark set mark or 0x4000\n",
                "add rule {t} masquerading mark and 0x4000 == 0 return\n",
                "add rule {t} masquerading mark set mark xor 0x4000\n",
                "add rule {t} masquerading masquerade fully-random\n",
                "add rule {t} nat-prerouting jump services\n",
                "add rule {t} nat-output jump services\n",
                "add rule {t} nat-postrouting jump masquerading\n",
                "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n",
                "add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n",
                "add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n",
                "add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n",
                "add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n",
                "add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n",
            ),
            t = t
        ));
    }
    let written: Vec<u32> = match change {
        None => (0..n).collect(),
        Some((c, _)) => vec![c.service],
    };
    for &i in &written {
        let svc = nft_svc_chain(i);
        let vip = cluster_ip(i);
        let eps = &state[i as usize];
        let _ = writeln!(s, "add chain {t} {svc}\nflush chain {t} {svc}");
        // Every chain exists before a rule jumps to it (kube-proxy adds chains, then rules).
        for ip in eps {
            let ep = nft_ep_chain(i, *ip);
            let _ = writeln!(s, "add chain {t} {ep}\nflush chain {t} {ep}");
        }
        let _ = writeln!(
            s,
            "add rule {t} {svc} ip daddr {vip} tcp dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
        );
        let vmap: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(k, ip)| format!("{k} : goto {}", nft_ep_chain(i, *ip)))
            .collect();
        let _ = writeln!(
            s,
            "add rule {t} {svc} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            vmap.join(" , ")
        );
        for ip in eps {
            let ep = nft_ep_chain(i, *ip);
            let _ = writeln!(
                s,
                "add rule {t} {ep} ip saddr {ip} jump mark-for-masquerade\nadd rule {t} {ep} meta l4proto tcp dnat to {ip}:{TARGET_PORT}"
            );
        }
        if change.is_none() {
            let _ = writeln!(
                s,
                "add element {t} cluster-ips {{ {vip} }}\nadd element {t} service-ips {{ {vip} . tcp . {SERVICE_PORT} : goto {svc} }}"
            );
        }
    }
    if let Some((c, old)) = change {
        let _ = writeln!(s, "delete chain {t} {}", nft_ep_chain(c.service, old));
    }
    s
}

/// The median over runs of the full syncs that finished, or why none did.
fn full_cell(runs: &[RunResult], timeout: u64) -> (Option<f64>, String) {
    let done: Vec<f64> = runs
        .iter()
        .filter_map(|r| match r.full {
            Full::Secs(s) => Some(s),
            _ => None,
        })
        .collect();
    if done.len() == runs.len() {
        let m = stats::median(&done);
        return (m, m.map(|m| format!("{m:.3}")).unwrap_or_default());
    }
    if runs.iter().any(|r| matches!(r.full, Full::TimedOut)) {
        return (None, format!("> {timeout}"));
    }
    (None, "failed".to_owned())
}

/// The median over runs of the per-run change medians.
fn change_ms(runs: &[RunResult]) -> Option<f64> {
    let per_run: Vec<f64> = runs
        .iter()
        .filter_map(|r| stats::median(&r.changes_ms))
        .collect();
    stats::median(&per_run)
}

/// The results table with ratios against the references, and the targets.
fn report(results: &BTreeMap<usize, Vec<RunResult>>, args: &Args) -> String {
    let mut s = String::new();
    let runs = results.values().map(Vec::len).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "proxy bench: {} Services x {ENDPOINTS_PER_SERVICE} endpoints, {runs} run(s), {} one-endpoint changes per run{}",
        args.services,
        args.changes,
        if runs > 1 { " (figures: median of per-run figures)" } else { "" }
    );
    let _ = writeln!(
        s,
        "{:<36} {:>12} {:>14} {:>10} {:>12}  ratio vs",
        "backend", "full sync (s)", "one change (ms)", "full ratio", "change ratio"
    );
    let figures = |subject: Subject| -> (Option<f64>, String, Option<f64>) {
        let i = Subject::ALL
            .iter()
            .position(|x| *x == subject)
            .expect("listed");
        match results.get(&i) {
            Some(runs) if !runs.is_empty() => {
                let (full, cell) = full_cell(runs, args.reference_timeout);
                (full, cell, change_ms(runs))
            }
            _ => (None, "not run".to_owned(), None),
        }
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    };
    let order = [
        Subject::RefIptablesLegacy,
        Subject::RefIptablesNft,
        Subject::OursIptablesLegacy,
        Subject::OursIptablesNft,
        Subject::RefNft,
        Subject::OursNftables,
        Subject::OursEbpf,
    ];
    for subject in order {
        let (full, cell, change) = figures(subject);
        let change_cell = change.map_or_else(|| "-".to_owned(), |c| format!("{c:.3}"));
        let (fr, cr, vs) = match subject.reference() {
            Some(r) => {
                let (rfull, _, rchange) = figures(r);
                (ratio(full, rfull), ratio(change, rchange), r.label())
            }
            None => (String::new(), String::new(), ""),
        };
        let row = format!(
            "{:<36} {:>12} {:>14} {:>10} {:>12}  {vs}",
            subject.label(),
            cell,
            change_cell,
            fr,
            cr
        );
        let _ = writeln!(s, "{}", row.trim_end());
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut targets = Vec::new();
    let (nft_full, _, nft_change) = figures(Subject::OursNftables);
    targets.push(match nft_full {
        Some(f) => format!(
            "nftables full {f:.3} s <= {NFT_FULL_TARGET_S} s: {}",
            verdict(f <= NFT_FULL_TARGET_S)
        ),
        None => format!("nftables full <= {NFT_FULL_TARGET_S} s: not measured"),
    });
    targets.push(match nft_change {
        Some(c) => format!(
            "nftables change {c:.3} ms <= {NFT_CHANGE_TARGET_MS} ms: {}",
            verdict(c <= NFT_CHANGE_TARGET_MS)
        ),
        None => format!("nftables change <= {NFT_CHANGE_TARGET_MS} ms: not measured"),
    });
    let (ref_full, ..) = figures(Subject::RefIptablesLegacy);
    for (subject, tag) in [
        (Subject::OursIptablesLegacy, "legacy"),
        (Subject::OursIptablesNft, "nft"),
    ] {
        let (full, _, change) = figures(subject);
        targets.push(match (full, ref_full) {
            (Some(f), Some(r)) if r > 0.0 => format!(
                "iptables ({tag}) full {:.2}x legacy restore <= {IPT_FULL_TARGET_RATIO}x: {}",
                f / r,
                verdict(f / r <= IPT_FULL_TARGET_RATIO)
            ),
            _ => format!(
                "iptables ({tag}) full <= {IPT_FULL_TARGET_RATIO}x legacy restore: not measured"
            ),
        });
        targets.push(match change {
            Some(c) => format!(
                "iptables ({tag}) change {c:.3} ms <= {IPT_CHANGE_TARGET_MS} ms: {}",
                verdict(c <= IPT_CHANGE_TARGET_MS)
            ),
            None => format!("iptables ({tag}) change <= {IPT_CHANGE_TARGET_MS} ms: not measured"),
        });
    }
    let (ebpf_full, _, ebpf_change) = figures(Subject::OursEbpf);
    targets.push(match ebpf_full {
        Some(f) => format!(
            "ebpf full {:.1} ms <= {EBPF_FULL_TARGET_MS} ms: {}",
            f * 1e3,
            verdict(f * 1e3 <= EBPF_FULL_TARGET_MS)
        ),
        None => format!("ebpf full <= {EBPF_FULL_TARGET_MS} ms: not measured"),
    });
    targets.push(match ebpf_change {
        Some(c) => format!(
            "ebpf change {c:.3} ms <= {EBPF_CHANGE_TARGET_MS} ms: {}",
            verdict(c <= EBPF_CHANGE_TARGET_MS)
        ),
        None => format!("ebpf change <= {EBPF_CHANGE_TARGET_MS} ms: not measured"),
    });
    let _ = writeln!(s, "targets (issue):");
    for t in targets {
        let _ = writeln!(s, "  {t}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_go_std_encoding() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY======");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI======");
    }

    #[test]
    fn chain_names_hash_like_kube_proxy() {
        // From kube-proxy's iptables and nftables proxier tests (ns1/svc1:p80, 10.180.0.1:80).
        assert_eq!(
            format!("KUBE-SVC-{}", hash_prefix("ns1/svc1:p80tcp", 16)),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            format!(
                "KUBE-SEP-{}",
                hash_prefix("ns1/svc1:p80tcp10.180.0.1:80", 16)
            ),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(nft_base("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            nft_base("ns1/svc1/tcp/p80__10.180.0.1/80"),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn workload_builds_the_expected_table() {
        let w = Workload::generate(3);
        let table = ServiceTable::build(&w.services, &w.slices, &w.cfg);
        assert_eq!(table.len(), 3);
        let p = table.ports().next().unwrap();
        assert_eq!(p.port, SERVICE_PORT);
        assert_eq!(p.endpoints.len(), ENDPOINTS_PER_SERVICE as usize);
        assert!(p.endpoints.iter().all(|e| e.port == TARGET_PORT && e.ready));
    }

    #[test]
    fn kube_iptables_shape() {
        let w = Workload::generate(2);
        let state: EndpointState = (0..2)
            .map(|i| (0..5).map(|e| endpoint_ip(i, e)).collect())
            .collect();
        let full = kube_iptables(&w, &state, None);
        assert_eq!(full.matches("--probability").count(), 8);
        assert!(full.contains("--probability 0.2000000000 -j KUBE-SEP-"));
        assert!(full.contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert_eq!(full.matches("-j DNAT --to-destination 10.244.").count(), 10);
        let dnat_lines = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains("-j DNAT"))
                .map(String::from)
                .collect()
        };
        assert!(dnat_lines(&full).iter().all(|l| l.contains("--comment")));
        // Past 1,000 endpoints kube-proxy leaves the endpoint rules uncommented.
        let big = Workload::generate(201);
        let big_state: EndpointState = (0..201)
            .map(|i| (0..5).map(|e| endpoint_ip(i, e)).collect())
            .collect();
        let big_text = kube_iptables(&big, &big_state, None);
        assert!(dnat_lines(&big_text)
            .iter()
            .all(|l| !l.contains("--comment")));
        assert!(big_text.contains("cluster IP\""));
        let c = Change {
            service: 1,
            slot: 2,
            new_ip: pod_ip(CHANGE_HOSTS),
        };
        let mut after = state.clone();
        let old = std::mem::replace(&mut after[1][2], c.new_ip);
        let partial = kube_iptables(&w, &after, Some((&c, old)));
        assert!(partial.contains(&format!("-X {}", kube_sep_chain(1, old))));
        assert!(!partial.contains(&kube_svc_chain(0).replace("KUBE-SVC", ":KUBE-SVC")));
        // kube-proxy rewrites KUBE-SERVICES in full on every sync.
        assert_eq!(partial.matches("-A KUBE-SERVICES ").count(), 3);
        let nft = kube_nft(&w, &after, Some((&c, old)));
        assert!(nft.contains(&format!(
            "delete chain ip kube-proxy {}",
            nft_ep_chain(1, old)
        )));
    }
}
