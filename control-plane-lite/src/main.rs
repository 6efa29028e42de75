//! `netlet-control-plane`: parses arguments and runs the library's apiserver, scheduler and
//! controllers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use netlet_control_plane::apiserver::{self, NodeDialer, Pki, ServiceAllocator, ServiceCidr};
use netlet_control_plane::controllers::{self, ControllersConfig};
use netlet_control_plane::leader::{LeaderConfig, LeaderElector, Outcome};
use netlet_control_plane::scheduler::{self, SchedulerConfig, DEFAULT_SCHEDULER_NAME};
use netlet_control_plane::storage::{write_bench, EmbeddedStorage, EtcdStorage, Storage};
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

/// How the apiserver listens, where in-cluster clients find it, and what its tokens say.
#[derive(clap::Args)]
struct ApiOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Port to listen on; 0 picks a free one (written into admin.kubeconfig).
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// The address the `kubernetes` Service's endpoints point pods at (and a name in the
    /// serving certificate); default: the bind address, or 127.0.0.1 when that is 0.0.0.0.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Seconds between storage compactions (0: never).
    #[arg(long, default_value_t = 300)]
    compaction_interval: u64,
    /// The IPv4 range Service cluster IPs come from; its first address is the
    /// `kubernetes` Service's.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ServiceCidr,
    /// The `iss` of service account tokens, also the audience of tokens that name none.
    #[arg(long, default_value = apiserver::DEFAULT_ISSUER)]
    service_account_issuer: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Kubernetes API over HTTPS; objects live in embedded storage under DATA_DIR
    /// (default) or in etcd.
    Serve {
        /// Directory for the database, the PKI and admin.kubeconfig.
        #[arg(long)]
        data_dir: PathBuf,
        /// Listening, addresses and tokens.
        #[command(flatten)]
        api: ApiOptions,
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
        /// Do not run the controllers in-process (they run by default, behind leader
        /// election, as clients of this server).
        #[arg(long)]
        disable_controllers: bool,
        /// Settings of the in-process controllers.
        #[command(flatten)]
        controllers: ControllersConfig,
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
    /// Run the controllers (node IPAM, endpoints, workloads) against the API at `--kubeconfig`.
    Controllers {
        /// Kubeconfig of the API server to talk to.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Run only while holding the Lease kube-system/kube-controller-manager.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        /// Controller settings.
        #[command(flatten)]
        config: ControllersConfig,
    },
    /// Time the scheduling algorithm alone in memory and print the result as JSON (used by
    /// `cargo xtask bench scheduler`, so it measures this build).
    #[command(hide = true)]
    BenchSchedulerAlgorithm {
        /// Nodes in the cache.
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        /// Pods to decide.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
    },
    /// Time durable creates through a storage backend alone (no apiserver) and print the
    /// result as JSON (used by `cargo xtask bench apiserver`).
    #[command(hide = true)]
    BenchStorageWrites {
        /// Where the embedded store lives (a fresh directory).
        #[arg(long)]
        data_dir: PathBuf,
        /// Which backend to measure.
        #[arg(long, value_enum, default_value_t = StorageKind::Embedded)]
        storage: StorageKind,
        /// etcd members (with `--storage etcd`).
        #[arg(long, value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Keys to create.
        #[arg(long, default_value_t = 20_000)]
        writes: usize,
        /// Bytes per value (about a stored pod's).
        #[arg(long, default_value_t = 1500)]
        value_size: usize,
    },
}

/// glibc gives every thread that allocates concurrently its own malloc arena (up to 8 per
/// core), and objects freed on other threads keep each arena's pages: with tokio's workers
/// and 10,000 cached pods that was 175 MB of the apiserver's 552 MB RSS
/// (`cargo xtask bench apiserver`). Rust's allocations now go to mimalloc ([`GLOBAL`]); this
/// still bounds what the C code (SQLite) allocates through glibc.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // exists, as glibc requires for M_ARENA_MAX to take effect everywhere.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// mimalloc instead of glibc malloc: the apiserver is allocation-bound (JSON values built,
/// cloned and dropped per request; glibc's malloc/free were a fifth of its CPU under the
/// create bench). Measured with `cargo xtask bench apiserver`, 10,000 pods, 3 runs: creates/s
/// 1,198 → 1,410–1,545, create p99 37 → 25–30 ms, update p99 35 → 14–16 ms, RSS 403 →
/// 239–362 MB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
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
            api,
            storage,
            etcd_endpoints,
            etcd_prefix,
            disable_scheduler,
            disable_controllers,
            controllers,
        } => runtime.block_on(async {
            let storage = open_storage(storage, &data_dir, &etcd_endpoints, etcd_prefix).await?;
            serve(
                storage,
                data_dir,
                api,
                InProcess {
                    scheduler: !disable_scheduler,
                    controllers: (!disable_controllers).then_some(controllers),
                },
            )
            .await
        }),
        Command::Scheduler {
            kubeconfig,
            scheduler_name,
            leader_elect,
        } => runtime.block_on(async {
            let client = client_from(&kubeconfig).await?;
            run_scheduler(client, scheduler_name, leader_elect, cancel_on_signal()?).await
        }),
        Command::Controllers {
            kubeconfig,
            leader_elect,
            config,
        } => runtime.block_on(async {
            let client = client_from(&kubeconfig).await?;
            run_controllers(client, config, leader_elect, cancel_on_signal()?).await
        }),
        Command::BenchStorageWrites {
            data_dir,
            storage,
            etcd_endpoints,
            writers,
            writes,
            value_size,
        } => runtime.block_on(async {
            let storage = open_storage(storage, &data_dir, &etcd_endpoints, String::new()).await?;
            let result = write_bench::run(storage, writers, writes, value_size)
                .await
                .context("timing storage writes")?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }),
        Command::BenchSchedulerAlgorithm { nodes, pods } => {
            let result = netlet_control_plane::scheduler::algorithm_bench::run(nodes, pods);
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
    }
}

/// A token cancelled on SIGINT or SIGTERM.
fn cancel_on_signal() -> anyhow::Result<CancellationToken> {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        on_signal.cancel();
    });
    Ok(shutdown)
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
    let lease = if scheduler_name == DEFAULT_SCHEDULER_NAME {
        "kube-scheduler".to_string()
    } else {
        scheduler_name
    };
    let elect = leader_elect.then_some(lease.as_str());
    run_elected("scheduler", client.clone(), elect, shutdown, move |token| {
        scheduler::run(client.clone(), config.clone(), token)
    })
    .await
}

/// Runs the controllers until `shutdown`, like [`run_scheduler`] (Lease
/// kube-system/kube-controller-manager).
async fn run_controllers(
    client: kube::Client,
    config: ControllersConfig,
    leader_elect: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let elect = leader_elect.then_some("kube-controller-manager");
    run_elected(
        "controllers",
        client.clone(),
        elect,
        shutdown,
        move |token| controllers::run(client.clone(), config.clone(), token),
    )
    .await
}

/// Runs `task` until `shutdown`: directly when `lease` is `None`, else only while holding the
/// Lease kube-system/`lease` (waiting to lead again after losing it, and restarting the task
/// after a pause if it ends by itself).
async fn run_elected<F, Fut, E>(
    what: &'static str,
    client: kube::Client,
    lease: Option<&str>,
    shutdown: CancellationToken,
    task: F,
) -> anyhow::Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let Some(lease) = lease else {
        return task(shutdown)
            .await
            .with_context(|| format!("running the {what}"));
    };
    let mut elector = LeaderElector::new(client, LeaderConfig::new("kube-system", lease));
    loop {
        let outcome = elector
            .run(shutdown.clone(), |token| {
                let run = task(token);
                async move {
                    if let Err(e) = run.await {
                        tracing::error!(error = %e, "{what} stopped");
                    }
                }
            })
            .await;
        match outcome {
            Outcome::Shutdown => return Ok(()),
            Outcome::LostLeadership => tracing::warn!("{what} lost leadership; waiting to lead"),
            Outcome::TaskFinished => {
                // The task ended on its own (a watch closed): back off, then start over.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What `serve` runs in-process beside the API.
struct InProcess {
    /// The scheduler.
    scheduler: bool,
    /// The controllers, with their settings.
    controllers: Option<ControllersConfig>,
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
    api: ApiOptions,
    in_process: InProcess,
) -> anyhow::Result<()> {
    let ApiOptions {
        bind,
        port,
        advertise_address,
        compaction_interval,
        service_cidr,
        service_account_issuer,
    } = api;
    let pki_dir = data_dir.join("pki");
    let mut pki = Pki::load_or_create(&pki_dir).context("preparing the PKI")?;
    apiserver::ensure_system_namespaces(storage.as_ref(), &pki.ca_cert)
        .await
        .context("creating the system namespaces")?;
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
    let advertised = advertise_address.unwrap_or(host_ip);
    let services = Arc::new(ServiceAllocator::new(service_cidr));
    // In-cluster clients verify the serving certificate against the service IP they dial.
    let names = [services.cidr().kubernetes_ip().into(), host_ip, advertised]
        .map(|ip: std::net::IpAddr| ip.to_string());
    if pki
        .ensure_serving_names(&pki_dir, &names)
        .context("adding names to the serving certificate")?
    {
        tracing::info!(
            ?names,
            "issued a serving certificate with the in-cluster names"
        );
    }
    let tls = pki.server_config().context("building the TLS config")?;
    let nodes = NodeDialer::new(&pki).context("building the TLS config for node agents")?;
    let token_keys = apiserver::TokenKeys::from_pem(
        &pki.service_account_key,
        &service_account_issuer,
        vec![service_account_issuer.clone()],
    )
    .context("loading the service account key")?;
    apiserver::ensure_kubernetes_service(storage.as_ref(), &services, advertised, addr.port())
        .await
        .context("creating the kubernetes Service")?;
    let router = apiserver::Router::new(
        Arc::clone(&storage),
        Arc::clone(&services),
        nodes,
        token_keys,
        &pki.ca_cert,
    );
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
    // Cancels the in-process scheduler and controllers whichever way `serve` returns.
    let _stop_clients = shutdown.clone().drop_guard();
    if in_process.scheduler || in_process.controllers.is_some() {
        let kubeconfig = kubeconfig.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let client = match client_from(&kubeconfig).await {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "in-process API client failed");
                    return;
                }
            };
            let scheduler = async {
                if in_process.scheduler {
                    let name = DEFAULT_SCHEDULER_NAME.to_string();
                    run_scheduler(client.clone(), name, true, shutdown.clone()).await
                } else {
                    Ok(())
                }
            };
            let controllers = async {
                match in_process.controllers {
                    Some(config) => {
                        run_controllers(client.clone(), config, true, shutdown.clone()).await
                    }
                    None => Ok(()),
                }
            };
            let (s, c) = tokio::join!(scheduler, controllers);
            for e in [s.err(), c.err()].into_iter().flatten() {
                tracing::error!(error = format!("{e:#}"), "in-process component failed");
            }
        });
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Returning drops the storage, which finishes its last commit and releases the data dir.
    tokio::select! {
        result = apiserver::serve(listener, tls, router) => result.context("serving"),
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
