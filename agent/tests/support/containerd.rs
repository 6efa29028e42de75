//! A containerd of the test's own: inside a fresh `nlt-` network namespace, with every path it
//! writes (root, state, sockets, runc root, CNI dirs, IPAM data, pod netns mounts, logs) under
//! one temp dir, and torn down completely when the guard drops, also when the test panics.
//!
//! containerd runs the CNI plugin in its own network namespace, so starting it with
//! `nsenter --net=<node ns>` confines the bridge, the veth host ends and the routes netlet-cni
//! creates to the test's node namespace; the host's root namespace is never touched.
//! `nsenter --net` (rather than `ip netns exec`) keeps the host mount namespace, so runc still
//! sees `/sys/fs/cgroup` and the test can inspect and unmount what containerd mounted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::containerd::ContainerdLayout;
use integration::{ChildGuard, NetNs};
use netlet_agent::cri::{api, unready_conditions, CriClient};

/// The workspace root (`agent/` is one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ lives below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Runs `cargo args` from the workspace root, panicking if it fails.
fn cargo(args: &[&str]) {
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .unwrap_or_else(|e| panic!("running cargo {args:?}: {e}"));
    assert!(st.success(), "cargo {args:?} failed ({st})");
}

/// The debug `netlet-cni` binary, built first if it is missing (a bin of another package is
/// not exposed to this crate's tests).
pub fn netlet_cni_binary() -> PathBuf {
    let bin = target_dir().join("debug").join("netlet-cni");
    if !bin.is_file() {
        cargo(&["build", "-p", "netlet-cni", "--bin", "netlet-cni"]);
    }
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// The OCI archives of `cargo xtask images`, built first if missing or if one does not carry
/// the name the tests expect (an archive left by an older checkout under an older name).
pub fn image_archives() -> Vec<PathBuf> {
    let dir = target_dir().join("images");
    let wanted = [("pause.tar", PAUSE_IMAGE), ("testapp.tar", TESTAPP_IMAGE)];
    let current = |file: &str, name: &str| {
        std::fs::read(dir.join(file))
            .is_ok_and(|bytes| bytes.windows(name.len()).any(|w| w == name.as_bytes()))
    };
    if !wanted.iter().all(|(file, name)| current(file, name)) {
        cargo(&["run", "-q", "-p", "xtask", "--", "images"]);
    }
    wanted.iter().map(|(file, _)| dir.join(file)).collect()
}

pub use integration::images::{PAUSE_IMAGE, TESTAPP_IMAGE};

/// Our containerd, its node namespace and its temp dir. Drop order is spelled out in `Drop`.
pub struct Containerd {
    /// The node namespace containerd (and so the CNI plugin) runs in.
    pub node: NetNs,
    /// containerd's process, killed by PID.
    process: Option<ChildGuard>,
    /// The temp dir holding everything containerd writes.
    dir: Option<tempfile::TempDir>,
    /// The cgroup parent of our pods (`/nlt-cri-<pid>-<n>`), removed at the end.
    pub cgroup_parent: String,
}

impl Containerd {
    /// Starts containerd in a new node namespace with `conflist` (a function of the temp dir,
    /// so IPAM data and logs can live in it) as its only CNI network, and waits until its CRI
    /// reports the runtime and the network ready.
    pub async fn start(tag: &str, conflist: impl FnOnce(&Path) -> serde_json::Value) -> Self {
        let node = NetNs::new(tag);
        let dir = tempfile::Builder::new()
            .prefix("nlt-containerd-")
            .tempdir()
            .expect("creating the temp dir");
        let root = dir.path().to_path_buf();
        let cgroup_parent = format!(
            "/nlt-cri-{}-{}",
            std::process::id(),
            node.name().rsplit('-').next().unwrap_or("0")
        );
        let mut me = Self {
            node,
            process: None,
            dir: Some(dir),
            cgroup_parent,
        };

        let layout = ContainerdLayout::new(&root);
        layout
            .prepare(&netlet_cni_binary(), PAUSE_IMAGE)
            .expect("preparing containerd's dirs and config");
        let conf = conflist(&root);
        std::fs::write(
            layout.cni_conf_dir().join("10-netlet.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
        let child = layout
            .command(&me.node.path())
            .expect("opening containerd's log")
            .spawn()
            .expect("starting containerd under nsenter");
        me.process = Some(ChildGuard::new(child));
        me.wait_ready().await;
        me
    }

    /// containerd's layout in the temp dir.
    fn layout(&self) -> ContainerdLayout {
        ContainerdLayout::new(self.dir())
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir present until drop").path()
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// The last lines of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits (at most 20 s) until CRI `Status` reports the runtime and the network (our CNI
    /// config loaded) ready, failing early with the log if containerd exits.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(p) = self.process.take() {
                let mut child = p.into_inner();
                let exited = child.try_wait().expect("polling containerd");
                if let Some(st) = exited {
                    panic!(
                        "containerd exited ({st}) during startup:\n{}",
                        self.log_tail()
                    );
                }
                self.process = Some(ChildGuard::new(child));
            }
            let mut last = "socket not there yet".to_string();
            if self.socket().exists() {
                match CriClient::connect(self.socket()).await {
                    Ok(c) => match c.status().await {
                        Ok(st) => {
                            let unready = unready_conditions(&st);
                            if unready.is_empty() {
                                return;
                            }
                            last = unready.join("; ");
                        }
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd not ready within 20 s ({last}):\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A CRI client for this containerd.
    pub async fn client(&self) -> CriClient {
        CriClient::connect(self.socket())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()))
            .with_timeout(Duration::from_secs(30))
    }

    /// Imports the locally built images into the `k8s.io` namespace CRI uses.
    pub fn import_images(&self) {
        for archive in image_archives() {
            integration::netns::run_ok(
                Command::new("ctr")
                    .arg("-a")
                    .arg(self.socket())
                    .args([
                        "-n",
                        "k8s.io",
                        "images",
                        "import",
                        "--snapshotter",
                        "native",
                    ])
                    .arg(&archive),
            );
        }
    }

    /// Mount points under our temp dir that are still mounted (pod netns, rootfs binds).
    pub fn leftover_mounts(&self) -> Vec<String> {
        self.layout().leftover_mounts()
    }

    /// The socket of the shim serving sandbox `id`. containerd 1.6 does not let us move
    /// these: they live in `/run/containerd/s/`, named by a hash of our socket path, the
    /// namespace and the id, so they are ours alone and can be checked for and removed.
    pub fn shim_socket(&self, sandbox_id: &str) -> PathBuf {
        self.layout().shim_socket(sandbox_id)
    }

    /// Tears everything down; the happy path calls it to assert on the result, `Drop` calls it
    /// as a fallback. Returns what had to be cleaned up by force (empty when the test removed
    /// its pods itself).
    pub fn shutdown(&mut self) -> Vec<String> {
        let mut forced = Vec::new();
        let Some(dir) = self.dir.take() else {
            return forced;
        };
        let root = dir.path().to_path_buf();
        // 1. Ask containerd to stop and remove whatever pods are left (from another thread:
        //    this may run inside the test's runtime, which cannot be blocked on).
        if self.process.is_some() {
            let socket = root.join("containerd.sock");
            let removed = std::thread::spawn(move || remove_all_sandboxes(&socket))
                .join()
                .unwrap_or_default();
            forced.extend(removed.into_iter().map(|id| format!("sandbox {id}")));
        }
        // 2. Stop containerd itself.
        drop(self.process.take());
        // 3-6. Containers runc still knows about (shims outlive containerd), the shims, the
        //      mounts and our cgroup parent.
        forced.extend(ContainerdLayout::new(&root).force_cleanup(Some(&self.cgroup_parent)));
        if let Err(e) = dir.close() {
            forced.push(format!("removing {}: {e}", root.display()));
        }
        forced
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let forced = self.shutdown();
        if !forced.is_empty() {
            eprintln!("containerd fixture cleaned up by force: {forced:?}");
        }
        // `node` drops after this, deleting the namespace and the bridge in it.
    }
}

/// Stops and removes every sandbox of the containerd on `socket`; returns their ids.
fn remove_all_sandboxes(socket: &Path) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a cleanup runtime");
    rt.block_on(async {
        let Ok(client) = CriClient::connect(socket).await else {
            return Vec::new();
        };
        let client = client.with_timeout(Duration::from_secs(20));
        let sandboxes: Vec<api::PodSandbox> =
            client.list_pod_sandbox(None).await.unwrap_or_default();
        let mut ids = Vec::new();
        for s in sandboxes {
            let _ = client.stop_pod_sandbox(&s.id).await;
            let _ = client.remove_pod_sandbox(&s.id).await;
            ids.push(s.id);
        }
        ids
    })
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use integration::containerd::{leftover_cgroups, processes_mentioning};
