//! What the node is made of, as the Node status reports it: CPUs, memory, disk, kernel, OS.
//!
//! Read from `/proc` and `/etc/os-release` like the kubelet's cAdvisor-backed `machineInfo`, but
//! with the parsing split off as pure functions so it is tested on fixed text.

use std::path::{Path, PathBuf};

/// Facts about the machine the agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// Logical CPUs the agent may use.
    pub cpus: usize,
    /// `MemTotal` in bytes.
    pub memory_bytes: u64,
    /// Size of the filesystem holding the state dir, in bytes (pods' logs and scratch space).
    pub ephemeral_storage_bytes: u64,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of os-release.
    pub os_image: String,
    /// `/etc/machine-id`; empty when the machine has none.
    pub machine_id: String,
    /// `/sys/class/dmi/id/product_uuid`; empty when unreadable (it is root-only, and absent
    /// on machines without DMI).
    pub system_uuid: String,
    /// `/proc/sys/kernel/random/boot_id`: changes on every reboot, so it tells a restarted node.
    pub boot_id: String,
    /// The architecture in Go's spelling (`amd64`, `arm64`), as Kubernetes labels use it.
    pub architecture: &'static str,
}

/// Why the machine could not be described.
#[derive(Debug, thiserror::Error)]
pub enum SysInfoError {
    /// A file under /proc or /etc could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/meminfo` has no usable `MemTotal` line.
    #[error("/proc/meminfo has no MemTotal line")]
    NoMemTotal,
    /// statvfs of the state dir failed.
    #[error("statvfs of {path}: {source}")]
    Statvfs {
        /// The directory.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

fn read(path: &str) -> Result<String, SysInfoError> {
    std::fs::read_to_string(path).map_err(|source| SysInfoError::Read {
        path: path.into(),
        source,
    })
}

/// A file's trimmed content, empty when it cannot be read: for identifiers the status may
/// leave blank.
fn read_optional(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl SystemInfo {
    /// Describes this machine; `state_dir` (or its nearest existing ancestor) is the
    /// filesystem counted as ephemeral storage.
    pub fn gather(state_dir: &Path) -> Result<Self, SysInfoError> {
        let memory_bytes =
            mem_total_bytes(&read("/proc/meminfo")?).ok_or(SysInfoError::NoMemTotal)?;
        // A missing os-release is legal (minimal images); the kubelet reports "Linux" then too.
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| pretty_name(&t))
            .unwrap_or_else(|| "Linux".into());
        let mut fs_dir = state_dir;
        while !fs_dir.exists() {
            fs_dir = fs_dir.parent().unwrap_or(Path::new("/"));
        }
        let vfs = nix::sys::statvfs::statvfs(fs_dir).map_err(|source| SysInfoError::Statvfs {
            path: fs_dir.into(),
            source,
        })?;
        Ok(Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            ephemeral_storage_bytes: vfs.blocks() * vfs.fragment_size(),
            kernel_version: read("/proc/sys/kernel/osrelease")?.trim().to_string(),
            os_image,
            machine_id: read_optional("/etc/machine-id"),
            system_uuid: read_optional("/sys/class/dmi/id/product_uuid"),
            boot_id: read_optional("/proc/sys/kernel/random/boot_id"),
            architecture: go_arch(std::env::consts::ARCH),
        })
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes (the file says kB and means KiB).
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let rest = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim();
    let kib: u64 = rest
        .strip_suffix("kB")
        .unwrap_or(rest)
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// `PRETTY_NAME` of an os-release text, unquoted.
pub fn pretty_name(os_release: &str) -> Option<String> {
    let v = os_release
        .lines()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?;
    let v = v.trim();
    let unquoted = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v);
    (!unquoted.is_empty()).then(|| unquoted.to_string())
}

/// Rust's `target_arch` in Go's `GOARCH` spelling, which `kubernetes.io/arch` uses.
pub fn go_arch(rust_arch: &str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "loongarch64" => "loong64",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_in_bytes() {
        let t = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(t), Some(24_576_000 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn os_release_pretty_name() {
        let t = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            pretty_name(t).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME=Alpine\n").as_deref(),
            Some("Alpine")
        );
        assert_eq!(pretty_name("PRETTY_NAME=''\n"), None);
        assert_eq!(pretty_name("ID=x\n"), None);
    }

    #[test]
    fn go_arch_names() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[test]
    fn gathers_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let info = SystemInfo::gather(&dir.path().join("not/yet/created")).unwrap();
        assert!(info.cpus >= 1);
        assert!(info.memory_bytes > 0 && info.ephemeral_storage_bytes > 0);
        assert!(!info.kernel_version.is_empty() && !info.boot_id.is_empty());
        assert_eq!(info.architecture, go_arch(std::env::consts::ARCH));
    }
}
