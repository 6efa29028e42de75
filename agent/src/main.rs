//! `netlet-agent`: maps flags onto the library's [`AgentConfig`] and runs the node loops side by
//! side until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use netlet_agent::config::AgentConfig;
use netlet_agent::cri::CriClient;
use netlet_agent::metrics::AgentMetrics;
use netlet_agent::node::address;
use netlet_agent::node::cni_config::{self, CniSettings};
use netlet_agent::node::lease::NodeLease;
use netlet_agent::node::registration::Registration;
use netlet_agent::node::route_table::NetlinkRouteTable;
use netlet_agent::node::routes::RouteReconciler;
use netlet_agent::node::runtime::RuntimeProbe;
use netlet_agent::node::status;
use netlet_agent::node::sysinfo::SystemInfo;
use netlet_agent::pods::{self, PodManagerConfig};
use netlet_agent::server::{self, handler::Handler, https, tls, unix};
use netlet_agent::service_proxy;
use netlet_proxy::{metrics_http, BackendKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Flags override the config file, which overrides the built-in defaults.
#[derive(Parser, Debug)]
#[command(name = "netlet-agent", about = "netlet node agent")]
struct Cli {
    /// JSON config file (camelCase keys of the agent config); flags given override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kubeconfig to reach the apiserver [default: in-cluster config or $KUBECONFIG].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The Node this agent registers and serves.
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP [default: first non-loopback IPv4 of the network namespace].
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// containerd's CRI socket [default: /run/containerd/containerd.sock].
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
    /// Where the CNI conflist is written [default: /etc/cni/net.d].
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Where containerd finds the CNI plugins [default: /opt/cni/bin].
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    /// The agent's state directory [default: /var/lib/netlet].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The cluster's pod network [default: 10.244.0.0/16].
    #[arg(long)]
    cluster_cidr: Option<Ipv4Network>,
    /// Only node networking (CNI config, routes): no Node registration or Lease, for running
    /// beside another kubelet.
    #[arg(long)]
    network_only: bool,
    /// Do not manage routes to other nodes' pod CIDRs (another component routes pod traffic).
    #[arg(long)]
    no_routes: bool,
    /// Seconds between Lease renewals and node status checks [default: 10].
    #[arg(long)]
    heartbeat_interval_secs: Option<u64>,
    /// Where container logs are written (default /var/log/pods).
    #[arg(long)]
    pod_log_dir: Option<PathBuf>,
    /// The cgroup pod sandboxes are placed under (default /netlet-pods).
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// The service proxy's dataplane in this network namespace: nftables, iptables or none
    /// (off) [default: nftables].
    #[arg(long)]
    proxy_backend: Option<BackendKind>,
    /// Where Prometheus metrics (agent and proxy) are served [default: 127.0.0.1:10249].
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// A directory of static pod manifests (YAML or JSON Pods) run on this node without the
    /// apiserver, with mirror pods in the API [default: none].
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// Pods started at once; the rest of a burst queues [default: 4].
    #[arg(long)]
    parallel_pod_starts: Option<usize>,
    /// CA certificates (PEM) node API clients must present certificates of
    /// [default: the kubeconfig's CA].
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Also serve the node API on a unix socket named in the Node (for an apiserver that
    /// shares this host's files but cannot route to the node).
    #[arg(long)]
    node_api_socket: bool,
}

impl Cli {
    /// The validated config: defaults, then the file, then the flags.
    fn into_config(self) -> anyhow::Result<AgentConfig> {
        let mut c = match &self.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v.into(); } )* };
        }
        set!(
            node_name,
            containerd_socket,
            cni_conf_dir,
            cni_bin_dir,
            state_dir,
            cluster_cidr,
            heartbeat_interval_secs,
            pod_log_dir,
            cgroup_parent,
            proxy_backend,
            parallel_pod_starts
        );
        if self.kubeconfig.is_some() {
            c.kubeconfig = self.kubeconfig;
        }
        if self.node_ip.is_some() {
            c.node_ip = self.node_ip;
        }
        if self.metrics_addr.is_some() {
            c.metrics_addr = self.metrics_addr;
        }
        if self.pod_manifest_path.is_some() {
            c.pod_manifest_path = self.pod_manifest_path;
        }
        if self.client_ca_file.is_some() {
            c.client_ca_file = self.client_ca_file;
        }
        c.network_only |= self.network_only;
        c.node_api_socket |= self.node_api_socket;
        c.manage_routes &= !self.no_routes;
        c.validate()?;
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in log files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Cli::parse().into_config()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(cfg))
}

/// The API client, and the CA certificates (DER) its config trusts: the cluster CA, which the
/// node API checks its clients against.
async fn kube_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<(Client, Vec<Vec<u8>>)> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no --kubeconfig, and neither in-cluster config nor $KUBECONFIG works")?,
    };
    let cas = config.root_cert.clone().unwrap_or_default();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, cas))
}

/// The node API's TLS config: the serving certificate kept in the state dir, and the CA client
/// certificates must chain to (`--client-ca-file`, else the kubeconfig's).
fn node_api_tls(
    cfg: &AgentConfig,
    node_ip: Ipv4Addr,
    cluster_cas: Vec<Vec<u8>>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (chain, key) = tls::load_or_create_serving(&cfg.pki_dir(), &cfg.node_name, node_ip.into())?;
    let cas = match &cfg.client_ca_file {
        Some(path) => tls::read_ca_file(path)?,
        None => cluster_cas.into_iter().map(Into::into).collect(),
    };
    Ok(Arc::new(tls::server_config(chain, key, cas)?))
}

/// Cancels `cancel` on SIGTERM or SIGINT.
fn cancel_on_signals(cancel: CancellationToken) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    Ok(())
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone())?;
    let (client, cluster_cas) = kube_client(cfg.kubeconfig.as_ref()).await?;
    let (connection, netlink, _) =
        rtnetlink::new_connection().context("opening a netlink route socket")?;
    tokio::spawn(connection);
    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => address::detect_node_ip(&netlink, cfg.cluster_cidr).await?,
    };
    tracing::info!(node = %cfg.node_name, %node_ip, network_only = cfg.network_only, routes = cfg.manage_routes, proxy = %cfg.proxy_backend, "netlet-agent starting");

    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating the state dir {}", cfg.state_dir.display()))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let (cni_ready_tx, cni_ready) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let uplink = address::interface_of(&netlink, node_ip).await?;
    let proxy = service_proxy::new_syncer(&cfg, node_ip, uplink.as_deref())
        .with_context(|| format!("creating the {} service proxy backend", cfg.proxy_backend))?;
    let metrics = AgentMetrics {
        node_name: cfg.node_name.clone(),
        network_only: cfg.network_only,
        managed_pods: Arc::default(),
        proxy: proxy.as_ref().map(|p| p.metrics()),
    };
    if let Some(addr) = cfg.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        let render = metrics.clone();
        let render: metrics_http::Render = Arc::new(move || render.render());
        // Not in `tasks`: it ends only on cancellation and must not stop the node loops.
        tokio::spawn(metrics_http::serve(listener, render, cancel.clone()));
    }
    if let Some(syncer) = proxy {
        tasks.spawn(service_proxy::run(client.clone(), syncer, cancel.clone()));
    }
    tasks.spawn(cni_config::run(
        nodes.clone(),
        cfg.node_name.clone(),
        CniSettings {
            cluster_cidr: cfg.cluster_cidr,
            ipam_dir: cfg.ipam_dir(),
            conf_dir: cfg.cni_conf_dir.clone(),
        },
        cni_ready_tx,
        cancel.clone(),
    ));
    if !cfg.network_only {
        let sys = SystemInfo::gather(&cfg.state_dir).context("describing this machine")?;
        let cri = CriClient::connect(&cfg.containerd_socket)
            .await
            .with_context(|| format!("connecting to {}", cfg.containerd_socket.display()))?;
        let handler = Handler::new(cfg.pod_log_dir.clone()).with_runtime(cri.clone());
        let tls = node_api_tls(&cfg, node_ip, cluster_cas)?;
        let addr = SocketAddr::from(([0, 0, 0, 0], status::KUBELET_PORT as u16));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the node API on {addr}"))?;
        tracing::info!(%addr, "serving the node API (HTTPS)");
        tasks.spawn(https::serve(listener, tls, handler.clone(), cancel.clone()));
        // The node API is up before the Node names its socket; without the socket, a name an
        // earlier run left on the Node is removed.
        let socket = if cfg.node_api_socket {
            let socket = cfg.node_api_socket();
            let listener = unix::bind(&socket)?;
            tracing::info!(socket = %socket.display(), "serving the node API (unix socket)");
            tasks.spawn(unix::serve(listener, handler, cancel.clone()));
            Some(socket.display().to_string())
        } else {
            None
        };
        let registration = Registration {
            api: nodes.clone(),
            node_name: cfg.node_name.clone(),
            node_ip,
            sys,
            runtime: Some(Arc::new(RuntimeProbe::new(&cfg.containerd_socket))),
            cni_ready,
            cni_bin_dir: cfg.cni_bin_dir.clone(),
            heartbeat: cfg.heartbeat_interval(),
            report_interval: cfg.status_report_interval(),
            annotations: [(server::SOCKET_ANNOTATION.to_string(), socket)].into(),
        };
        tasks.spawn(registration.run(cancel.clone()));
        let lease = NodeLease::new(client.clone(), &cfg.node_name);
        tasks.spawn(lease.run(cfg.heartbeat_interval(), cancel.clone()));
        let mut pods_config = PodManagerConfig::new(&cfg.node_name);
        pods_config.node_ip = Some(node_ip.into());
        pods_config.pod_log_dir = cfg.pod_log_dir.clone();
        pods_config.cgroup_parent = cfg.cgroup_parent.clone();
        pods_config.pods_dir = cfg.state_dir.join("pods");
        pods_config.pod_manifest_path = cfg.pod_manifest_path.clone();
        pods_config.parallel_pod_starts = cfg.parallel_pod_starts;
        pods_config.managed_pods = metrics.managed_pods.clone();
        let (client, cancel) = (client.clone(), cancel.clone());
        tasks.spawn(async move {
            if let Err(e) = pods::run(client, cri, pods_config, cancel).await {
                tracing::error!(error = %e, "the pod manager stopped");
            }
        });
    }
    if cfg.manage_routes {
        let routes = RouteReconciler {
            api: nodes,
            node_name: cfg.node_name.clone(),
            node_ip,
            table: NetlinkRouteTable::new(netlink),
            resync: cfg.route_resync(),
        };
        tasks.spawn(routes.run(cancel.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a node loop panicked")?;
        // A loop ends only on cancellation (or when its watch stream ends): stop the others.
        cancel.cancel();
    }
    tracing::info!("netlet-agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<AgentConfig> {
        Cli::try_parse_from(std::iter::once("netlet-agent").chain(args.iter().copied()))?
            .into_config()
    }

    #[test]
    fn flags_override_defaults() {
        let c = parse(&[
            "--kubeconfig",
            "/k",
            "--node-name",
            "n1",
            "--node-ip",
            "192.0.2.4",
            "--cni-conf-dir",
            "/tmp/net.d",
            "--cluster-cidr",
            "10.8.0.0/16",
            "--no-routes",
            "--proxy-backend",
            "none",
            "--metrics-addr",
            "127.0.0.1:9999",
        ])
        .unwrap();
        assert_eq!(c.proxy_backend, BackendKind::None);
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.node_ip, Some(Ipv4Addr::new(192, 0, 2, 4)));
        assert_eq!(c.cni_conf_dir, PathBuf::from("/tmp/net.d"));
        assert_eq!(c.cni_bin_dir, PathBuf::from("/opt/cni/bin"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/netlet"));
        assert_eq!(c.cluster_cidr.to_string(), "10.8.0.0/16");
        assert!(!c.manage_routes && !c.network_only);
    }

    #[test]
    fn flags_override_the_config_file_and_validation_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.json");
        std::fs::write(
            &file,
            r#"{"nodeName": "from-file", "networkOnly": true, "stateDir": "/s"}"#,
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = parse(&["--config", f]).unwrap();
        assert_eq!((c.node_name.as_str(), c.network_only), ("from-file", true));
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        let c = parse(&["--config", f, "--node-name", "flag"]).unwrap();
        assert_eq!(c.node_name, "flag");
        assert!(parse(&[]).unwrap_err().to_string().contains("node name"));
        assert!(parse(&["--node-name", "n", "--state-dir", "rel"]).is_err());
        assert!(parse(&["--node-name", "n", "--cluster-cidr", "nope"]).is_err());
        assert!(parse(&["--node-name", "n", "--proxy-backend", "ipvs"]).is_err());
        let c = parse(&["--node-name", "n", "--proxy-backend", "ebpf"]).unwrap();
        assert_eq!(c.proxy_backend, BackendKind::Ebpf);
    }
}
