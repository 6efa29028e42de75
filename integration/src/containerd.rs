//! A containerd of our own, confined to one directory: the config that puts every path it writes
//! (root, state, sockets, runc root, CNI dirs, pod netns mounts) under that directory, the command
//! that starts it inside a node network namespace, and the forced teardown of what it leaves
//! behind when it dies (shims, runc state, mounts, cgroups). Shared by the agent's CRI tests and
//! `cargo xtask up`/`down`, which run one such containerd per node.
//!
//! containerd runs the CNI plugin in its own network namespace, so starting it with
//! `nsenter --net=<node ns>` confines the bridge, the veths and the routes netlet-cni creates to
//! that namespace; the host's root namespace is never touched. `nsenter --net` (rather than
//! `ip netns exec`) keeps the host mount namespace, so runc still sees `/sys/fs/cgroup`.

use sha2::{Digest, Sha256};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The CNI plugins linked next to `netlet` in every CNI bin dir (containerd needs `loopback`
/// for every pod; `portmap` serves hostPort mappings).
const DEBIAN_PLUGINS: [&str; 2] = ["portmap", "loopback"];

/// Where one containerd keeps everything: all paths derive from `root`.
#[derive(Debug, Clone)]
pub struct ContainerdLayout {
    root: PathBuf,
}

impl ContainerdLayout {
    /// A layout under `root` (created by [`Self::prepare`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory everything lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// containerd's gRPC socket (CRI and the `ctr` API).
    pub fn socket(&self) -> PathBuf {
        self.root.join("containerd.sock")
    }

    /// The CNI bin dir containerd searches for plugins.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.root.join("cni/bin")
    }

    /// The CNI conf dir containerd loads its network from (the agent writes it).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni/net.d")
    }

    /// containerd's own log.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("containerd.log")
    }

    /// Creates the directories, links `netlet_cni` (as `netlet`) and Debian's `portmap` and
    /// `loopback` into the CNI bin dir, and writes the config with `sandbox_image`.
    pub fn prepare(&self, netlet_cni: &Path, sandbox_image: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.cni_bin_dir())?;
        std::fs::create_dir_all(self.cni_conf_dir())?;
        let link = |target: &Path, name: &str| {
            let path = self.cni_bin_dir().join(name);
            let _ = std::fs::remove_file(&path);
            std::os::unix::fs::symlink(target, path)
        };
        link(netlet_cni, "netlet")?;
        for plugin in DEBIAN_PLUGINS {
            link(&Path::new("/usr/lib/cni").join(plugin), plugin)?;
        }
        std::fs::write(
            self.root.join("config.toml"),
            self.config_toml(sandbox_image),
        )
    }

    /// `nsenter --net=<netns> containerd --config …`, logging to [`Self::log_path`]; the caller
    /// spawns it (and owns the process).
    pub fn command(&self, netns: &Path) -> std::io::Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display()))
            .arg("containerd")
            .arg("--config")
            .arg(self.root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    /// The config: every path under the root, native snapshotter (works on any filesystem),
    /// netns mounts under the state dir, and the settings this machine kind needs (no OOM score
    /// below containerd's own, since CAP_SYS_RESOURCE may be missing).
    pub fn config_toml(&self, sandbox_image: &str) -> String {
        let r = self.root.display();
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
  sandbox_image = "{sandbox_image}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Never ask for an OOM score below containerd's own: lowering it needs CAP_SYS_RESOURCE,
  # which CI sandboxes may drop (runc then fails with "can't get final child's PID").
  restrict_oom_score_adj = true
  disable_apparmor = true
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

    /// Imports an image archive into the `k8s.io` namespace CRI uses.
    pub fn import_image(&self, archive: &Path) -> std::io::Result<()> {
        let out = Command::new("ctr")
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
            .arg(archive)
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "ctr images import {}: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// After containerd itself is gone: deletes the containers runc still knows, kills the
    /// shims serving our socket (by PID), unmounts what is mounted under the root (deepest
    /// first) and removes `cgroup_parent`. Returns what had to be cleaned up, for logs.
    pub fn force_cleanup(&self, cgroup_parent: Option<&str>) -> Vec<String> {
        let mut forced = Vec::new();
        let runc_root = self.root.join("runc/k8s.io");
        for id in runc_containers(&runc_root) {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", &id])
                .output();
            forced.push(format!("runc container {id}"));
            let shim = shim_socket(&self.socket(), &id);
            if std::fs::remove_file(&shim).is_ok() {
                forced.push(format!("shim socket {}", shim.display()));
            }
        }
        for pid in processes_mentioning(&self.socket().to_string_lossy()) {
            let _ = nix_kill(pid);
            forced.push(format!("shim pid {pid}"));
        }
        let mut mounts = mounts_under(&self.root);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-R", "-l", &m]).output();
            forced.push(format!("mount {m}"));
        }
        if let Some(parent) = cgroup_parent {
            remove_cgroup_parent(parent);
        }
        forced
    }

    /// Mount points at or below the root that are still mounted.
    pub fn leftover_mounts(&self) -> Vec<String> {
        mounts_under(&self.root)
    }

    /// The socket of the shim serving sandbox `id`.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        shim_socket(&self.socket(), id)
    }
}

/// SIGKILL by PID (the shims are ours: their command line names our unique socket path).
fn nix_kill(pid: u32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// containerd 1.6's shim socket for `id` in namespace `k8s.io` (`runtime/v2/shim`'s
/// `SocketAddress`: sha256 of `<grpc address>/<namespace>/<id>` under `/run/containerd/s`).
/// containerd 1.6 does not let us move these, but the hash makes them ours alone.
pub fn shim_socket(grpc_socket: &Path, id: &str) -> PathBuf {
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
pub fn mounts_under(dir: &Path) -> Vec<String> {
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
pub fn remove_cgroup_parent(parent: &str) {
    let rel = parent.trim_start_matches('/');
    for d in cgroup_dirs(rel) {
        if d.is_dir() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Cgroup directories of `parent` that still exist.
pub fn leftover_cgroups(parent: &str) -> Vec<PathBuf> {
    cgroup_dirs(parent.trim_start_matches('/'))
        .into_iter()
        .filter(|p| p.is_dir())
        .collect()
}

/// `rel` under the v2 root and under every v1 hierarchy.
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(rel)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        dirs.extend(rd.filter_map(Result::ok).map(|e| e.path().join(rel)));
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_every_path_under_the_root() {
        let layout = ContainerdLayout::new("/tmp/nlt-x");
        let toml = layout.config_toml("localhost/netlet-pause:1");
        for line in toml.lines().filter(|l| l.contains("= \"/")) {
            assert!(
                line.contains("\"/tmp/nlt-x/"),
                "path outside the root: {line}"
            );
        }
        assert!(toml.contains("sandbox_image = \"localhost/netlet-pause:1\""));
        assert_eq!(layout.socket(), Path::new("/tmp/nlt-x/containerd.sock"));
    }

    #[test]
    fn shim_socket_is_the_sha256_of_address_namespace_id() {
        let s = shim_socket(Path::new("/a/containerd.sock"), "abc");
        let expected = Sha256::digest(b"/a/containerd.sock/k8s.io/abc");
        let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s, Path::new("/run/containerd/s").join(hex));
    }
}
