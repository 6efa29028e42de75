//! Our real apiserver for tests: `netlet-control-plane serve` on 127.0.0.1 port 0 in a temporary
//! data directory, killed by PID on drop. Shared by every crate whose tests need an API (the
//! proxy's watch loop, the scheduler and controllers, the agent), so none of them hand-rolls the
//! start-and-wait dance.

use crate::ChildGuard;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `netlet-control-plane` binary of the calling test's profile (`target/<profile>/`), built
/// once with `cargo build` if it is missing (tests of other crates do not build it themselves).
pub fn apiserver_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        let bin = profile_dir.join("netlet-control-plane");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "netlet-control-plane",
                "--bin",
                "netlet-control-plane",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "building netlet-control-plane failed");
        }
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// A running apiserver; its log is `dir()/server.log`.
pub struct TestApiserver {
    guard: Option<ChildGuard>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl TestApiserver {
    /// Starts `netlet-control-plane serve` with default flags; [`Self::client`] waits for it.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts it with extra `serve` flags (e.g. `["--storage", "etcd", …]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            guard: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("server log file");
        let child = Command::new(apiserver_bin())
            .args(["serve", "--data-dir"])
            .arg(self.dir.path())
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start netlet-control-plane");
        self.guard = Some(ChildGuard::new(child));
    }

    /// The server process's PID (0 after [`Self::kill`]).
    pub fn pid(&self) -> u32 {
        self.guard.as_ref().map_or(0, ChildGuard::id)
    }

    /// Kills the server with SIGKILL by its PID, as `kill -9` does (no shutdown, nothing
    /// flushed), and reaps it: crash tests then check what storage kept across
    /// [`Self::restart`].
    pub fn kill(&mut self) {
        self.guard = None; // ChildGuard's drop sends SIGKILL and waits
    }

    /// Kills the server (SIGKILL, if still running) and starts it again on the same data
    /// directory (on a new port; [`Self::client`] waits for the new kubeconfig).
    pub fn restart(&mut self) {
        self.guard = None; // kills and reaps the old process
        let _ = std::fs::remove_file(self.kubeconfig());
        self.spawn();
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig the server writes once it listens (exists after [`Self::client`]).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// An admin kube-rs client, once the server answers requests (waits up to 20 s).
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(client) = try_client(&self.kubeconfig()).await {
                return client;
            }
            assert!(
                Instant::now() < deadline,
                "apiserver not serving within 20s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A client from `kubeconfig` once the server answers `GET /api/v1/namespaces`.
async fn try_client(kubeconfig: &Path) -> Option<Client> {
    let kc = Kubeconfig::read_from(kubeconfig).ok()?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .ok()?;
    let client = Client::try_from(config).ok()?;
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    api.list(&Default::default()).await.ok()?;
    Some(client)
}

/// Creates namespace `name` through `client` (a test's first step), failing the test if that
/// fails.
pub async fn create_namespace(client: &Client, name: &str) {
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await
        .expect("create namespace");
}

/// The HTTP code of an API error (`None` for transport errors).
pub fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
