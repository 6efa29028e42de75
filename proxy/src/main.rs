//! `netlet-proxy`: parses arguments and runs the library's sync loop (or its cleanup).

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnetwork::IpNetwork;
use kube::config::{KubeConfigOptions, Kubeconfig};
use netlet_proxy::backend::{BackendConfig, EbpfOptions};
use netlet_proxy::sync_loop;
use netlet_proxy::watch::WatchConfig;
use netlet_proxy::{metrics_http, new_backend, setup, BackendKind, ProxyConfig};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "netlet-proxy", about = "netlet service proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Remove everything the backend installs (also what a previous process left) and exit.
    Cleanup {
        /// The dataplane to clean up.
        #[arg(long, value_enum)]
        backend: BackendArg,
        #[command(flatten)]
        ebpf: EbpfArgs,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Kubeconfig to reach the apiserver; default: in-cluster config or $KUBECONFIG.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The dataplane to program.
    #[arg(long, value_enum, default_value = "iptables")]
    backend: BackendArg,
    #[command(flatten)]
    ebpf: EbpfArgs,
    /// This node's name (endpoints on it are local); default: the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// Addresses NodePorts answer on (repeatable); default: every local address.
    #[arg(long = "node-ip")]
    node_ips: Vec<IpAddr>,
    /// The pod network(s) (repeatable): traffic from elsewhere to services is masqueraded.
    #[arg(long = "cluster-cidr")]
    cluster_cidrs: Vec<IpNetwork>,
    /// Masquerade all service traffic, also pod to service.
    #[arg(long)]
    masquerade_all: bool,
    /// Address for Prometheus metrics (`/metrics`); unset: no metrics endpoint.
    #[arg(long)]
    metrics_bind: Option<SocketAddr>,
    /// Milliseconds to coalesce watch events before a sync.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// Least milliseconds between two syncs.
    #[arg(long, default_value_t = 1000)]
    min_sync_interval_ms: u64,
}

/// Options of `--backend ebpf`.
#[derive(Args)]
struct EbpfArgs {
    /// eBPF: directory of the private bpffs holding the pinned maps.
    #[arg(long, default_value = "/var/lib/netlet/proxy-ebpf")]
    ebpf_state_dir: PathBuf,
    /// eBPF: interfaces to attach to, the node ends of pod veths and the node's uplink
    /// (repeatable; `prefix*` matches by prefix).
    #[arg(long = "ebpf-interface", default_value = "veth*")]
    ebpf_interfaces: Vec<String>,
    /// eBPF: the address masqueraded traffic gets (default: the pod bridge's address inside
    /// the cluster CIDRs).
    #[arg(long)]
    ebpf_masquerade_ip: Option<std::net::Ipv4Addr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Iptables,
    Nftables,
    Ebpf,
    None,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Iptables => BackendKind::Iptables,
            BackendArg::Nftables => BackendKind::Nftables,
            BackendArg::Ebpf => BackendKind::Ebpf,
            BackendArg::None => BackendKind::None,
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Cleanup { backend, ebpf }) => cleanup(backend, ebpf),
        None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(run(cli.run))
        }
    }
}

fn backend_config(kind: BackendArg, ebpf: EbpfArgs) -> BackendConfig {
    setup::backend_config(
        kind.into(),
        EbpfOptions {
            state_dir: ebpf.ebpf_state_dir,
            interfaces: ebpf.ebpf_interfaces,
            masquerade_ip: ebpf.ebpf_masquerade_ip,
        },
    )
}

fn cleanup(kind: BackendArg, ebpf: EbpfArgs) -> anyhow::Result<()> {
    let cfg = backend_config(kind, ebpf);
    let mut backend = new_backend(&cfg, &ProxyConfig::new(""))
        .with_context(|| format!("creating the {} backend", cfg.kind))?;
    let stats = backend
        .cleanup()
        .with_context(|| format!("cleaning up the {} backend", cfg.kind))?;
    tracing::info!(backend = backend.name(), ?stats, "cleaned up");
    Ok(())
}

fn node_name(arg: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = arg {
        return Ok(n);
    }
    let name = nix::unistd::gethostname().context("reading the host name for --node-name")?;
    match name.into_string() {
        Ok(n) if !n.is_empty() => Ok(n.to_lowercase()),
        _ => bail!("the host name is not usable as a node name; pass --node-name"),
    }
}

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(&path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig (pass --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("creating the API client")
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut proxy = ProxyConfig::new(node_name(args.node_name)?);
    proxy.node_ips = args.node_ips;
    proxy.cluster_cidrs = args.cluster_cidrs;
    proxy.masquerade_all = args.masquerade_all;
    let backend_cfg = backend_config(args.backend, args.ebpf);
    let syncer = setup::new_syncer(&backend_cfg, proxy)
        .with_context(|| format!("creating the {} backend", backend_cfg.kind))?;
    let client = client(args.kubeconfig).await?;
    let cancel = CancellationToken::new();
    if let Some(addr) = args.metrics_bind {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        let metrics = syncer.metrics();
        let render: metrics_http::Render = Arc::new(move || metrics.render_prometheus());
        tokio::spawn(metrics_http::serve(listener, render, cancel.clone()));
    }
    tokio::spawn(cancel_on_signal(cancel.clone()));
    let watch = WatchConfig {
        debounce: Duration::from_millis(args.debounce_ms),
        min_interval: Duration::from_millis(args.min_sync_interval_ms),
        ..WatchConfig::default()
    };
    tracing::info!(backend = %backend_cfg.kind, "watching Services and EndpointSlices");
    sync_loop::run(client, syncer, watch, cancel)
        .await
        .context("the sync loop stopped")?;
    tracing::info!("shut down");
    Ok(())
}

async fn cancel_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received, shutting down");
    cancel.cancel();
}
