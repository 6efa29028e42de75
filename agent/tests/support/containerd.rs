//! A containerd of the test's own: inside a fresh `nlt-` network namespace, with every path it
//! writes (root, state, sockets, runc root, CNI dirs, IPAM data, pod netns mounts, logs) under
//! one temp dir, and torn down completely when the guard drops, also when the test panics.
//!
//! containerd runs the CNI plugin in its own network namespace, so starting it with
//! `nsenter --net=<node ns>` confines the bridge, the veth host ends and the routes netlet-cni
//! creates to the test's node namespace; the host's root namespace is never touched.
//! `nsenter --net` (rather than `ip netns exec`) keeps the host mount namespace, so runc still
//! sees `/sys/fs/cgroup` and the test can inspect and unmount what containerd mounted.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::{ChildGuard, NetNs};
use netlet_agent::cri::{api, unready_conditions, CriClient};
use sha2::{Digest, Sha256};

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

/// The OCI archives of `cargo xtask images`, built first if missing.
pub fn image_archives() -> Vec<PathBuf> {
    let dir = target_dir().join("images");
    let archives: Vec<PathBuf> = ["pause.tar", "testapp.tar"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    if !archives.iter().all(|a| a.is_file()) {
        cargo(&["run", "-q", "-p", "xtask", "--", "images"]);
    }
    archives
}

/// The sandbox image `cargo xtask images` builds.
pub const PAUSE_IMAGE: &str = "docker.io/netlet/pause:v1";
/// The busybox image `cargo xtask images` builds.
pub const TESTAPP_IMAGE: &str = "docker.io/netlet/testapp:v1";

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

        let bin_dir = root.join("cni/bin");
        let conf_dir = root.join("cni/net.d");
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::os::unix::fs::symlink(netlet_cni_binary(), bin_dir.join("netlet")).unwrap();
        for plugin in ["portmap", "loopback"] {
            std::os::unix::fs::symlink(
                Path::new("/usr/lib/cni").join(plugin),
                bin_dir.join(plugin),
            )
            .unwrap();
        }
        let conf = conflist(&root);
        std::fs::write(
            conf_dir.join("10-netlet.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
        std::fs::write(root.join("config.toml"), config_toml(&root)).unwrap();

        let log = std::fs::File::create(root.join("containerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", me.node.path().display()))
            .arg("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd under nsenter");
        me.process = Some(ChildGuard::new(child));
        me.wait_ready().await;
        me
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
        mounts_under(self.dir())
    }

    /// The socket of the shim serving sandbox `id`. containerd 1.6 does not let us move
    /// these: they live in `/run/containerd/s/`, named by a hash of our socket path, the
    /// namespace and the id, so they are ours alone and can be checked for and removed.
    pub fn shim_socket(&self, sandbox_id: &str) -> PathBuf {
        shim_socket(&self.socket(), sandbox_id)
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
        // 3. Containers runc still knows about (shims outlive containerd).
        let runc_root = root.join("runc/k8s.io");
        for id in runc_containers(&runc_root) {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", &id])
                .output();
            forced.push(format!("runc container {id}"));
            let shim = shim_socket(&root.join("containerd.sock"), &id);
            if std::fs::remove_file(&shim).is_ok() {
                forced.push(format!("shim socket {}", shim.display()));
            }
        }
        // 4. Shims, found by our unique socket path on their command line, killed by PID.
        for pid in processes_mentioning(&root.join("containerd.sock").to_string_lossy()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output();
            forced.push(format!("shim pid {pid}"));
        }
        // 5. Mounts (pod netns, rootfs binds), deepest first.
        let mut mounts = mounts_under(&root);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-R", "-l", &m]).output();
            forced.push(format!("mount {m}"));
        }
        // 6. Our cgroup parent in every v1 hierarchy (runc removes the leaves).
        remove_cgroup_parent(&self.cgroup_parent);
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

/// containerd's config: every path in `root`, native snapshotter, our CNI dirs.
fn config_toml(root: &Path) -> String {
    let r = root.display();
    format!(
        r#"version = 2
root = "{r}/root"
state = "{r}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{r}/containerd.sock"

[ttrpc]
  address = "{r}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Never ask for an OOM score below containerd's own: lowering it needs CAP_SYS_RESOURCE,
  # which CI sandboxes may drop (runc then fails with "can't get final child's PID").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{r}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{r}/cni/bin"
    conf_dir = "{r}/cni/net.d"
    max_conf_num = 1
"#
    )
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

/// containerd 1.6's shim socket for `id` in namespace `k8s.io` (`runtime/v2/shim`'s
/// `SocketAddress`: sha256 of `<grpc address>/<namespace>/<id>` under `/run/containerd/s`).
fn shim_socket(grpc_socket: &Path, id: &str) -> PathBuf {
    let hash = Sha256::digest(grpc_socket.join("k8s.io").join(id).as_os_str().as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    Path::new("/run/containerd/s").join(hex)
}

/// Container ids in a runc state root.
fn runc_containers(runc_root: &Path) -> Vec<String> {
    std::fs::read_dir(runc_root)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points at or below `dir`, from this process's mount table.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// PIDs of processes whose command line contains `needle`, except this one.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Removes `parent` from every cgroup v1 hierarchy (and the v2 tree), once it is empty.
fn remove_cgroup_parent(parent: &str) {
    let rel = parent.trim_start_matches('/');
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(rel)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        dirs.extend(rd.filter_map(Result::ok).map(|e| e.path().join(rel)));
    }
    for d in dirs {
        if d.is_dir() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Cgroup directories of `parent` that still exist, for the final assertion.
pub fn leftover_cgroups(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join(rel))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}
