//! `netlet-proxy`: parses arguments and runs the library's sync loop (or its cleanup).

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnetwork::IpNetwork;
use kube::config::{KubeConfigOptions, Kubeconfig};
use netlet_proxy::backend::{EbpfOptions, IptablesMode};
use netlet_proxy::model::IpFamily;
use netlet_proxy::sync_loop::{self, ProxySyncer, SyncMetrics};
use netlet_proxy::watch::WatchConfig;
use netlet_proxy::{new_backend, BackendConfig, BackendKind, ProxyConfig};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// eBPF: interfaces to attach to, the node ends of pod veths (repeatable; `prefix*`
    /// matches by prefix).
    #[arg(long = "ebpf-interface", default_value = "veth*")]
    ebpf_interfaces: Vec<String>,
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
    BackendConfig {
        kind: kind.into(),
        iptables_mode: IptablesMode::Auto,
        ebpf: EbpfOptions {
            state_dir: ebpf.ebpf_state_dir,
            interfaces: ebpf.ebpf_interfaces,
        },
        ..BackendConfig::default()
    }
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
    // Dual-stack when told about IPv6 node addresses or pod networks.
    if proxy.node_ips.iter().any(IpAddr::is_ipv6)
        || proxy.cluster_cidrs.iter().any(IpNetwork::is_ipv6)
    {
        proxy.families = vec![IpFamily::V4, IpFamily::V6];
    }
    let backend_cfg = backend_config(args.backend, args.ebpf);
    let backend = new_backend(&backend_cfg, &proxy)
        .with_context(|| format!("creating the {} backend", backend_cfg.kind))?;
    let client = client(args.kubeconfig).await?;
    let syncer = ProxySyncer::new(backend, proxy);
    let cancel = CancellationToken::new();
    if let Some(addr) = args.metrics_bind {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        tokio::spawn(serve_metrics(listener, syncer.metrics(), cancel.clone()));
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

/// A minimal HTTP/1 endpoint: every request gets the metrics text.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<SyncMetrics>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let body = metrics.render_prometheus();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // Read the request head (ignored: there is only one resource).
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
