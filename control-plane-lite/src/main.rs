//! `netlet-control-plane`: parses arguments and runs the library's apiserver.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use netlet_control_plane::apiserver::{self, Pki, ServiceAllocator, ServiceCidr};
use netlet_control_plane::storage::{EmbeddedStorage, EtcdStorage, Storage};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "netlet-control-plane", about = "netlet control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the apiserver keeps its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StorageKind {
    /// SQLite under `--data-dir`, in-process: no external service to run.
    Embedded,
    /// An etcd v3 cluster at `--etcd-endpoints`.
    Etcd,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Kubernetes API over HTTPS; objects live in embedded storage under DATA_DIR
    /// (default) or in etcd.
    Serve {
        /// Directory for the database, the PKI and admin.kubeconfig.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// Port to listen on; 0 picks a free one (written into admin.kubeconfig).
        #[arg(long, default_value_t = 6443)]
        port: u16,
        /// Seconds between storage compactions (0: never).
        #[arg(long, default_value_t = 300)]
        compaction_interval: u64,
        /// The IPv4 range Service cluster IPs come from; its first address is the
        /// `kubernetes` Service's.
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: ServiceCidr,
        /// Storage backend.
        #[arg(long, value_enum, default_value_t = StorageKind::Embedded)]
        storage: StorageKind,
        /// etcd client URLs, comma-separated (with `--storage etcd`).
        #[arg(long, value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        /// Prefix prepended to every key in etcd (with `--storage etcd`).
        #[arg(long, default_value = "")]
        etcd_prefix: String,
    },
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve {
            data_dir,
            bind,
            port,
            compaction_interval,
            service_cidr,
            storage,
            etcd_endpoints,
            etcd_prefix,
        } => runtime.block_on(async {
            let storage = open_storage(storage, &data_dir, &etcd_endpoints, etcd_prefix).await?;
            serve(
                storage,
                data_dir,
                bind,
                port,
                compaction_interval,
                service_cidr,
            )
            .await
        }),
    }
}

/// Opens the chosen storage backend.
async fn open_storage(
    kind: StorageKind,
    data_dir: &std::path::Path,
    etcd_endpoints: &[String],
    etcd_prefix: String,
) -> anyhow::Result<Arc<dyn Storage>> {
    Ok(match kind {
        StorageKind::Embedded => Arc::new(
            EmbeddedStorage::open(data_dir.join("storage"))
                .with_context(|| format!("opening storage in {}", data_dir.display()))?,
        ),
        StorageKind::Etcd => {
            anyhow::ensure!(
                !etcd_endpoints.is_empty(),
                "--storage etcd needs --etcd-endpoints URL[,URL...]"
            );
            Arc::new(
                EtcdStorage::connect(etcd_endpoints, etcd_prefix)
                    .await
                    .with_context(|| {
                        format!("connecting to etcd at {}", etcd_endpoints.join(","))
                    })?,
            )
        }
    })
}

async fn serve(
    storage: Arc<dyn Storage>,
    data_dir: PathBuf,
    bind: String,
    port: u16,
    compaction_interval: u64,
    service_cidr: ServiceCidr,
) -> anyhow::Result<()> {
    apiserver::ensure_system_namespaces(storage.as_ref())
        .await
        .context("creating the system namespaces")?;
    let pki = Pki::load_or_create(&data_dir.join("pki")).context("preparing the PKI")?;
    let tls = pki.server_config().context("building the TLS config")?;
    let listener = TcpListener::bind((bind.as_str(), port))
        .await
        .with_context(|| format!("binding {bind}:{port}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let host_ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let host = host_ip.to_string();
    let services = Arc::new(ServiceAllocator::new(service_cidr));
    apiserver::ensure_kubernetes_service(storage.as_ref(), &services, host_ip, addr.port())
        .await
        .context("creating the kubernetes Service")?;
    let kubeconfig = data_dir.join("admin.kubeconfig");
    pki.write_admin_kubeconfig(&kubeconfig, &host, addr.port())
        .context("writing the admin kubeconfig")?;
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "serving the Kubernetes API");
    if compaction_interval > 0 {
        tokio::spawn(apiserver::compact_periodically(
            Arc::clone(&storage),
            Duration::from_secs(compaction_interval),
        ));
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Returning drops the storage, which finishes its last commit and releases the data dir.
    tokio::select! {
        result = apiserver::serve(listener, tls, storage, services) => result.context("serving"),
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; shutting down");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::info!("terminated; shutting down");
            Ok(())
        }
    }
}
