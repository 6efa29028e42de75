//! The on-disk allocation store, byte-compatible with host-local's `disk` backend.
//!
//! Layout under `<dataDir>/<network>/`: one file per allocated IP, named by the IP, holding
//! `<containerID>\r\n<ifname>`; `last_reserved_ip.<rangeSetIndex>` for round-robin; and a `lock`
//! file taken with `flock(LOCK_EX)` for the whole operation. Using host-local's exact layout and
//! lock lets the two plugins share (and be swapped over) a live network without leaking or
//! double-assigning addresses. Unlike host-local, an allocation file is written under a temporary
//! name and hard-linked into place, so a crash never leaves an empty file pinning an IP forever.
//!
//! Reading every allocation file on every ADD and DEL costs O(allocations) file reads. netlet
//! therefore also hard-links each allocation it writes as `<dataDir>/.netlet-index/<network>/
//! <containerID>:<ifname>:<ip>` (outside the directory host-local walks). Directory listings
//! carry inode numbers, so an index entry is trusted exactly when its inode is the allocation
//! file's: allocations written by netlet need no read at all, while files written by host-local
//! (or rewritten by it after a release) have no matching entry and are read as before.

use crate::cni_err;
use crate::error::{CniError, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Separator between container ID and interface name in an allocation file.
const LINE_BREAK: &str = "\r\n";
/// Prefix of the round-robin cursor files.
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Name of the lock file inside the network directory.
const LOCK_FILE: &str = "lock";
/// Prefix of our temporary files; never a valid IP, so host-local ignores them too.
const TMP_PREFIX: &str = ".netlet-tmp-";
/// Directory under `dataDir` holding the per-network attachment indexes.
const INDEX_DIR: &str = ".netlet-index";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One allocated address as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The allocated address (the file's name).
    pub ip: IpAddr,
    /// The container holding it.
    pub container_id: String,
    /// The interface holding it; `None` for old single-line files, which match any interface.
    pub ifname: Option<String>,
}

impl Allocation {
    /// True when this allocation belongs to `(container_id, ifname)`.
    pub fn belongs_to(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id.trim()
            && self.ifname.as_deref().is_none_or(|f| f == ifname)
    }
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> CniError {
    cni_err!(IoFailure, format!("{what} {}", path.display()), "{e}")
}

/// Rejects network names that could escape `dataDir` (code 7).
pub fn validate_network_name(network: &str) -> Result<()> {
    if network.is_empty()
        || network == "."
        || network == ".."
        || network.contains('/')
        || network.contains('\0')
    {
        return Err(cni_err!(
            InvalidNetworkConfig,
            format!("invalid network name {network:?}"),
            "it must be non-empty and cannot contain '/' or be '.' or '..'"
        ));
    }
    Ok(())
}

/// Rewrites the round-robin cursor in place: write at offset 0, then cut to length.
///
/// Neither rename-over nor truncate-to-zero: ext4's `auto_da_alloc` turns both into a forced
/// data flush (measured ~300 µs vs ~13 µs here). A torn cursor is only a hint gone wrong:
/// round-robin then starts elsewhere or at the range start, as with host-local's own cursor.
fn write_cursor(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all_at(content.as_bytes(), 0)?;
    f.set_len(content.len() as u64)
}

/// An open, locked network directory; dropping it releases the lock.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    index: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Creates `<data_dir>/<network>/` if needed and takes its lock (blocking).
    ///
    /// Each call opens its own file descriptor, so two stores on one directory exclude each
    /// other even inside one process.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        validate_network_name(network)?;
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating IPAM directory", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_err("opening IPAM lock", &lock_path, e))?;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(l) => break l,
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(io_err("locking", &lock_path, e)),
            }
        };
        let store = Store {
            dir,
            index: data_dir.join(INDEX_DIR).join(network),
            _lock: lock,
        };
        store.remove_stale_temp_files();
        Ok(store)
    }

    /// The network directory (`<dataDir>/<network>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Temp files can only be left behind by a writer that died while holding the lock.
    fn remove_stale_temp_files(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Writes `content` to a fresh temporary file in the directory.
    ///
    /// Not fsynced, like host-local: a process killed mid-write leaves at worst a temp file
    /// (removed on the next open), never a half-written allocation, because allocations appear
    /// by link(2) of a complete file. Only a power loss could drop a record, and then every pod
    /// of the node is gone too. An fsync would cost ~0.5–1 ms per ADD.
    fn write_temp(&self, content: &str) -> Result<PathBuf> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        let res = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(content.as_bytes())
        })();
        match res {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(io_err("writing", &tmp, e))
            }
        }
    }

    /// Records `ip` for `(id, ifname)`; `Ok(false)` when the IP is already taken.
    ///
    /// On success also moves the round-robin cursor of range set `range_set_idx` to `ip`.
    pub fn reserve(
        &self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_set_idx: usize,
    ) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let tmp = self.write_temp(&format!("{}{LINE_BREAK}{ifname}", id.trim()))?;
        // link(2) never replaces an existing name: the IP is claimed atomically and whole.
        let linked = fs::hard_link(&tmp, &path);
        if linked.is_ok() {
            // The index is an accelerator: if it cannot be written, the allocation is simply
            // read like a host-local one.
            let entry = self.index.join(format!("{}:{ifname}:{ip}", id.trim()));
            let _ = fs::create_dir_all(&self.index).and_then(|()| fs::hard_link(&tmp, entry));
        }
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("writing allocation", &path, e)),
        }
        let cursor = self
            .dir
            .join(format!("{LAST_RESERVED_PREFIX}{range_set_idx}"));
        if let Err(e) = write_cursor(&cursor, &ip.to_string()) {
            let _ = fs::remove_file(&path);
            return Err(io_err("writing", &cursor, e));
        }
        Ok(true)
    }

    /// The last IP reserved in range set `range_set_idx`, if recorded and readable.
    pub fn last_reserved(&self, range_set_idx: usize) -> Option<IpAddr> {
        let p = self
            .dir
            .join(format!("{LAST_RESERVED_PREFIX}{range_set_idx}"));
        fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    /// Index entries as (inode, container ID, ifname, IP), from one directory listing.
    fn index_entries(&self) -> Vec<(u64, String, String, IpAddr)> {
        let Ok(entries) = fs::read_dir(&self.index) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let mut parts = name.splitn(3, ':');
                let (id, ifname, ip) = (parts.next()?, parts.next()?, parts.next()?);
                Some((
                    e.ino(),
                    id.to_string(),
                    ifname.to_string(),
                    ip.parse().ok()?,
                ))
            })
            .collect()
    }

    /// Every allocation in the directory, sorted by IP.
    ///
    /// Files with a matching index entry (same inode) are not opened; the rest are read.
    /// Index entries whose allocation is gone or was rewritten are removed on the way.
    pub fn allocations(&self) -> Result<Vec<Allocation>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("listing", &self.dir, e))?;
        let mut files: HashMap<u64, IpAddr> = HashMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("listing", &self.dir, e))?;
            let name = entry.file_name();
            if let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) {
                files.insert(entry.ino(), ip);
            } // else: lock, last_reserved_ip.*, temp files, anything foreign
        }
        let mut out = Vec::with_capacity(files.len());
        for (ino, id, ifname, ip) in self.index_entries() {
            if files.get(&ino) == Some(&ip) {
                files.remove(&ino);
                out.push(Allocation {
                    ip,
                    container_id: id,
                    ifname: Some(ifname),
                });
            } else {
                let _ = fs::remove_file(self.index.join(format!("{id}:{ifname}:{ip}")));
            }
        }
        for ip in files.into_values() {
            let path = self.dir.join(ip.to_string());
            let data = match fs::read_to_string(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) if e.kind() == ErrorKind::IsADirectory => continue,
                Err(e) => return Err(io_err("reading allocation", &path, e)),
            };
            let data = data.trim();
            let (container_id, ifname) = match data.split_once(LINE_BREAK) {
                Some((id, ifn)) => (id.trim().to_string(), Some(ifn.trim().to_string())),
                None => (data.to_string(), None),
            };
            out.push(Allocation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// The IPs held by `(id, ifname)`, old single-line files included; unreadable → empty.
    pub fn get_by_id(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.allocations()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.belongs_to(id, ifname))
            .map(|a| a.ip)
            .collect()
    }

    /// Frees `ip`; freeing a free IP is not an error. Its index entry goes stale (no file with
    /// its inode) and is dropped by the next [`Store::allocations`].
    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing allocation", &path, e)),
        }
    }

    /// Frees every IP of `(id, ifname)` and returns them. As host-local does, old single-line
    /// files of `id` are released only when no exact `(id, ifname)` file exists.
    pub fn release_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let all = self.allocations()?;
        let exact: Vec<IpAddr> = all
            .iter()
            .filter(|a| a.ifname.is_some() && a.belongs_to(id, ifname))
            .map(|a| a.ip)
            .collect();
        let victims = if exact.is_empty() {
            all.iter()
                .filter(|a| a.ifname.is_none() && a.belongs_to(id, ifname))
                .map(|a| a.ip)
                .collect()
        } else {
            exact
        };
        for ip in &victims {
            self.release(*ip)?;
        }
        Ok(victims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserve_writes_host_local_layout() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "net1").unwrap();
        assert!(s.reserve("abc", "eth0", ip("10.0.0.5"), 0).unwrap());
        assert!(!s.reserve("other", "eth0", ip("10.0.0.5"), 0).unwrap());
        assert!(s.reserve("abc", "eth0", ip("fd00::5"), 1).unwrap());
        let dir = d.path().join("net1");
        assert_eq!(
            fs::read_to_string(dir.join("10.0.0.5")).unwrap(),
            "abc\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
            "10.0.0.5"
        );
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
            "fd00::5"
        );
        assert!(dir.join("lock").exists());
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "10.0.0.5",
                "fd00::5",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                "lock"
            ]
        );
        assert_eq!(s.last_reserved(0), Some(ip("10.0.0.5")));
        assert_eq!(s.last_reserved(7), None);
        assert_eq!(s.get_by_id("abc", "eth0"), [ip("10.0.0.5"), ip("fd00::5")]);
        assert!(s.get_by_id("abc", "eth1").is_empty());
    }

    #[test]
    fn index_is_trusted_only_while_its_inode_matches() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "net").unwrap();
        assert!(s.reserve("a", "eth0", ip("10.0.0.2"), 0).unwrap());
        let entry = d.path().join(".netlet-index/net/a:eth0:10.0.0.2");
        assert!(entry.exists(), "index entry written beside the allocation");
        assert_eq!(s.get_by_id("a", "eth0"), vec![ip("10.0.0.2")]);
        // host-local releases the IP and hands it to b: a new file, a new inode.
        let file = d.path().join("net/10.0.0.2");
        fs::remove_file(&file).unwrap();
        fs::write(&file, "b\r\neth0").unwrap();
        let all = s.allocations().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].container_id, "b",
            "the rewritten file is read, not the stale entry"
        );
        assert!(!entry.exists(), "stale index entry removed");
        assert!(s.get_by_id("a", "eth0").is_empty());
        // Releasing leaves no allocation behind even though the entry was a hard link.
        s.release_by_id("b", "eth0").unwrap();
        assert!(s.allocations().unwrap().is_empty());
    }

    #[test]
    fn old_single_line_files_match_any_ifname() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        fs::write(d.path().join("n/10.0.0.9"), "legacy\n").unwrap();
        let a = s.allocations().unwrap();
        assert_eq!(
            a,
            [Allocation {
                ip: ip("10.0.0.9"),
                container_id: "legacy".into(),
                ifname: None
            }]
        );
        assert_eq!(s.get_by_id("legacy", "eth7"), [ip("10.0.0.9")]);
        assert_eq!(s.release_by_id("legacy", "eth7").unwrap(), [ip("10.0.0.9")]);
        assert!(s.allocations().unwrap().is_empty());
    }

    #[test]
    fn release_by_id_prefers_exact_matches_and_skips_non_ip_files() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        s.reserve("c1", "eth0", ip("10.0.0.2"), 0).unwrap();
        s.reserve("c1", "eth1", ip("10.0.0.3"), 0).unwrap();
        fs::write(d.path().join("n/10.0.0.4"), "c1").unwrap();
        fs::write(d.path().join("n/.netlet-tmp-x"), "c1\r\neth0").unwrap();
        assert_eq!(s.release_by_id("c1", "eth0").unwrap(), [ip("10.0.0.2")]);
        let left: Vec<IpAddr> = s.allocations().unwrap().iter().map(|a| a.ip).collect();
        assert_eq!(left, [ip("10.0.0.3"), ip("10.0.0.4")]);
        assert!(s.release_by_id("nobody", "eth0").unwrap().is_empty());
        s.release(ip("10.0.0.3")).unwrap();
        s.release(ip("10.0.0.3")).unwrap();
    }

    #[test]
    fn stale_temp_files_are_cleaned_on_open() {
        let d = tempfile::tempdir().unwrap();
        drop(Store::open(d.path(), "n").unwrap());
        let stale = d.path().join("n/.netlet-tmp-1-1");
        fs::write(&stale, "half").unwrap();
        let _s = Store::open(d.path(), "n").unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn network_names_cannot_escape_data_dir() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b", "../x"] {
            let e = Store::open(d.path(), bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig, "{bad:?}");
        }
    }

    #[test]
    fn io_failure_names_the_path() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("plain-file");
        fs::write(&file, "x").unwrap();
        let e = Store::open(&file, "n").unwrap_err();
        assert_eq!(e.code, ErrorCode::IoFailure);
        assert!(e.to_string().contains("plain-file"), "{e}");
    }

    #[test]
    fn the_lock_excludes_a_second_store() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        let lock = File::open(d.path().join("n/lock")).unwrap();
        let Err((_, e)) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) else {
            panic!("lock was not held");
        };
        assert_eq!(e, Errno::EWOULDBLOCK);
        drop(s);
        let lock = File::open(d.path().join("n/lock")).unwrap();
        assert!(Flock::lock(lock, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
