//! `netlet-control-plane`: parses arguments and runs the library's apiserver and scheduler.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use netlet_control_plane::apiserver::{self, Pki, ServiceAllocator, ServiceCidr};
use netlet_control_plane::leader::{LeaderConfig, LeaderElector, Outcome};
use netlet_control_plane::scheduler::{self, SchedulerConfig, DEFAULT_SCHEDULER_NAME};
use netlet_control_plane::storage::{EmbeddedStorage, EtcdStorage, Storage};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
        /// Do not run the scheduler in-process (it runs by default, behind leader election,
        /// as a client of this server).
        #[arg(long)]
        disable_scheduler: bool,
    },
    /// Schedule pods: assign pending pods to nodes through the API at `--kubeconfig`.
    Scheduler {
        /// Kubeconfig of the API server to talk to.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Schedule the pods whose `spec.schedulerName` is this.
        #[arg(long, default_value = DEFAULT_SCHEDULER_NAME)]
        scheduler_name: String,
        /// Run only while holding the Lease kube-system/kube-scheduler (for several replicas).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
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
            disable_scheduler,
        } => runtime.block_on(async {
            let storage = open_storage(storage, &data_dir, &etcd_endpoints, etcd_prefix).await?;
            serve(
                storage,
                data_dir,
                bind,
                port,
                compaction_interval,
                service_cidr,
                !disable_scheduler,
            )
            .await
        }),
        Command::Scheduler {
            kubeconfig,
            scheduler_name,
            leader_elect,
        } => runtime.block_on(async {
            let client = client_from(&kubeconfig).await?;
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                on_signal.cancel();
            });
            run_scheduler(client, scheduler_name, leader_elect, shutdown).await
        }),
    }
}

/// An API client from a kubeconfig file.
async fn client_from(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("building the API client")
}

/// Runs the scheduler until `shutdown`: directly, or only while leading (waiting to lead again
/// after losing the Lease).
async fn run_scheduler(
    client: kube::Client,
    scheduler_name: String,
    leader_elect: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = SchedulerConfig {
        scheduler_name: scheduler_name.clone(),
        ..Default::default()
    };
    if !leader_elect {
        return scheduler::run(client, config, shutdown)
            .await
            .context("running the scheduler");
    }
    let lease = if scheduler_name == DEFAULT_SCHEDULER_NAME {
        "kube-scheduler".to_string()
    } else {
        scheduler_name
    };
    let mut elector = LeaderElector::new(client.clone(), LeaderConfig::new("kube-system", &lease));
    loop {
        let (client, config) = (client.clone(), config.clone());
        let outcome = elector
            .run(shutdown.clone(), |token| async move {
                if let Err(e) = scheduler::run(client, config, token).await {
                    tracing::error!(error = %e, "scheduler stopped");
                }
            })
            .await;
        match outcome {
            Outcome::Shutdown => return Ok(()),
            Outcome::LostLeadership => tracing::warn!("scheduler lost leadership; waiting to lead"),
            Outcome::TaskFinished => {
                // The scheduler ended on its own (a watch closed): back off, then start over.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
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
    with_scheduler: bool,
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
    let shutdown = CancellationToken::new();
    // Cancels the in-process scheduler whichever way `serve` returns.
    let _stop_scheduler = shutdown.clone().drop_guard();
    if with_scheduler {
        let kubeconfig = kubeconfig.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let result = match client_from(&kubeconfig).await {
                Ok(client) => {
                    run_scheduler(client, DEFAULT_SCHEDULER_NAME.into(), true, shutdown).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::error!(error = format!("{e:#}"), "in-process scheduler failed");
            }
        });
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
