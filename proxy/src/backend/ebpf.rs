//! The eBPF backend: service NAT in tc programs (`netlet-ebpf`), Services as map entries.
//!
//! # What it programs
//!
//! One `services` entry per `cluster IP : port / protocol` with the port's reachable endpoints
//! (the cluster-wide ready ones, or the local ones with `internalTrafficPolicy: Local`). The
//! programs are loaded once per process with their maps pinned in a private bpffs under
//! [`EbpfOptions::state_dir`]; a later process re-adopts the pinned maps (services, conntrack
//! and all) and replaces the programs in place, so established flows keep their translation.
//!
//! # Where it attaches
//!
//! On the node-side ends of pod veths ([`EbpfOptions::interfaces`]; a trailing `*` matches a
//! name prefix). From the first sync on, a link watch (`links.rs`: rtnetlink notifications in
//! the node namespace) attaches to matching veths the moment they appear, so a pod started
//! after the proxy gets service NAT without waiting for a sync. Not on the pod
//! bridge or the uplink: see the `netlet-ebpf` crate docs for why the bridge device misses
//! replies switched between its ports. The uplink is not used because external traffic needs
//! masquerading, which the datapath does not do (below).
//!
//! # What it refuses
//!
//! The datapath has no SNAT and no node-port/external frontends yet, so ports needing them are
//! not programmed and the sync fails with [`Error::Unsupported`] naming each of them (the
//! supported ports are programmed regardless): `nodePort`, `externalIPs`, load-balancer IPs,
//! SCTP, IPv6, and `--masquerade-all` (refused when the backend is built). Not refusable per
//! Service, and documented instead: a pod reaching itself through its Service is not
//! masqueraded, and off-cluster clients reaching a cluster IP are not translated (no
//! attachment on the uplink).
//!
//! # What the datapath does besides DNAT
//!
//! A port without endpoints is rejected (TCP reset / ICMP port unreachable from the VIP).
//! `sessionAffinity: ClientIP` is kept per client and service in the `client_affinity` LRU map
//! (backend plus the monotonic time of the client's last new flow), expiring after the
//! Service's `timeoutSeconds`.
//!
//! # Stats
//!
//! `chains_written`: service entries created or changed; `chains_deleted`: removed;
//! `hooks_changed`: interfaces attached; `transactions`: map entries touched (services plus
//! their backend sets).

mod links;

use super::{Backend, SyncStats};
use crate::config::ProxyConfig;
use crate::error::{Error, Result};
use crate::exec::NetnsExec;
use crate::model::{IpFamily, Protocol, ServiceKey, ServicePort, ServiceTable};
use links::{Datapath, LinkWatch, Shared};
use netlet_ebpf::{Proto, ServiceNat};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A datapath frontend: `vip:port/proto`.
type Frontend = (Ipv4Addr, u16, Proto);

/// What a frontend should be programmed with.
#[derive(Debug, Clone)]
struct Want {
    /// The service port it belongs to (`namespace/name:port`).
    name: String,
    /// Reachable endpoints.
    backends: Vec<(Ipv4Addr, u16)>,
    /// `sessionAffinity: ClientIP` timeout.
    affinity: Option<Duration>,
}

/// Name of the file under the state dir naming each programmed frontend's service port (the
/// maps only hold addresses): `vip:port/proto namespace/name:port` per line.
pub const NAMES_FILE: &str = "services";

/// Where and with what the eBPF backend works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfOptions {
    /// Directory for the private bpffs with the pinned maps and the names file.
    pub state_dir: PathBuf,
    /// Interfaces to attach to (node-side pod veths); `prefix*` matches by prefix.
    pub interfaces: Vec<String>,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/netlet/proxy-ebpf"),
            interfaces: vec!["veth*".to_string()],
        }
    }
}

impl EbpfOptions {
    /// Whether the backend attaches to an interface named `name` (see
    /// [`EbpfOptions::interfaces`]); lets callers check their naming against the patterns.
    pub fn matches_interface(&self, name: &str) -> bool {
        links::matches(&self.interfaces, name)
    }
}

/// The eBPF [`Backend`].
#[derive(Debug)]
pub struct EbpfBackend {
    netns: NetnsExec,
    opts: EbpfOptions,
    /// Loaded on the first sync (cleanup alone never loads); shared with the link watch.
    dp: Option<Shared>,
    /// Attaches to pod veths created between syncs; runs from the first full sync on.
    watch: Option<LinkWatch>,
    /// Which service port each programmed frontend belongs to.
    names: BTreeMap<Frontend, String>,
    /// A full sync went through: partial syncs may trust the maps' mirror.
    synced: bool,
}

impl EbpfBackend {
    /// A backend attaching in `netns`; refuses configs the datapath cannot serve.
    pub fn new(cfg: ProxyConfig, netns: NetnsExec, opts: EbpfOptions) -> Result<Self> {
        if cfg.masquerade_all {
            return Err(Error::Unsupported(
                "the proxy config: masquerade-all".into(),
            ));
        }
        if cfg.families.contains(&IpFamily::V6) {
            return Err(Error::Unsupported("the proxy config: IPv6".into()));
        }
        Ok(Self {
            netns,
            opts,
            dp: None,
            watch: None,
            names: BTreeMap::new(),
            synced: false,
        })
    }

    fn bpffs_dir(&self) -> PathBuf {
        self.opts.state_dir.clone()
    }

    fn loaded(&mut self) -> Result<Shared> {
        if self.dp.is_none() {
            let fs = netlet_ebpf::BpfFs::mount_under(&self.bpffs_dir())
                .map_err(|e| ebpf_err("mounting the private bpffs", e))?;
            let nat = ServiceNat::load_pinned(&fs)
                .map_err(|e| ebpf_err("loading the service NAT programs", e))?;
            // Pins outlive this process: the next one re-adopts them; cleanup unmounts.
            fs.keep();
            self.dp = Some(Datapath::new(nat));
        }
        Ok(self.dp.clone().expect("loaded above"))
    }

    /// Attaches to every configured interface not attached by this process yet, and starts
    /// the link watch that does the same for interfaces created later.
    fn attach_all(&mut self) -> Result<usize> {
        let dp = self.loaded()?;
        let path = self.netns_path();
        let patterns = self.opts.interfaces.clone();
        let count = in_netns(path.as_deref(), || {
            links::attach_new(&mut links::lock(&dp), &patterns)
        })?;
        if self.watch.is_none() {
            self.watch = Some(LinkWatch::start(path, patterns, dp)?);
        }
        Ok(count)
    }

    fn netns_path(&self) -> Option<PathBuf> {
        match &self.netns {
            NetnsExec::Current => None,
            NetnsExec::Named(n) => Some(Path::new("/run/netns").join(n)),
            NetnsExec::Path(p) => Some(p.clone()),
        }
    }

    /// Desired frontends of `ports`; refused ports are collected in `refused`.
    fn desired<'a>(
        ports: impl Iterator<Item = &'a ServicePort>,
        refused: &mut Vec<(String, &'static str)>,
    ) -> BTreeMap<Frontend, Want> {
        let mut out = BTreeMap::new();
        for p in ports {
            if let Some(feature) = unsupported(p) {
                refused.push((p.name.to_string(), feature));
                continue;
            }
            let proto = match p.name.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                Protocol::Sctp => unreachable!("refused above"),
            };
            let backends: Vec<(Ipv4Addr, u16)> = p
                .reachable_endpoints()
                .into_iter()
                .filter_map(|e| match e.ip {
                    IpAddr::V4(ip) => Some((ip, e.port)),
                    IpAddr::V6(_) => None,
                })
                .collect();
            for vip in &p.cluster_ips {
                if let IpAddr::V4(vip) = vip {
                    out.insert(
                        (*vip, p.port, proto),
                        Want {
                            name: p.name.to_string(),
                            backends: backends.clone(),
                            affinity: p.affinity_timeout.map(|s| Duration::from_secs(s.into())),
                        },
                    );
                }
            }
        }
        out
    }

    /// Writes `want` for the frontends in `scope` (all known ones when `None`), deleting what
    /// is in scope but not wanted.
    fn apply(
        &mut self,
        want: BTreeMap<Frontend, Want>,
        scope: Option<&BTreeSet<Frontend>>,
        stats: &mut SyncStats,
    ) -> Result<()> {
        let dp = self.loaded()?;
        let mut dp = links::lock(&dp);
        let nat = &mut dp.nat;
        let have: BTreeSet<Frontend> = nat.table().services().into_iter().collect();
        for fe in &have {
            let in_scope = scope.is_none_or(|s| s.contains(fe));
            if in_scope && !want.contains_key(fe) {
                let (vip, port, proto) = *fe;
                nat.remove_service(vip, port, proto)
                    .map_err(|e| ebpf_err(&format!("removing service {vip}:{port}"), e))?;
                stats.chains_deleted += 1;
                stats.transactions += 1;
                self.names.remove(fe);
            }
        }
        for (fe, w) in want {
            let Want {
                name,
                backends,
                affinity,
            } = w;
            let (vip, port, proto) = fe;
            let mut now: Vec<_> = nat
                .table()
                .backends_of(vip, port, proto)
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            let mut wanted = backends.clone();
            now.sort();
            wanted.sort();
            wanted.dedup();
            let affinity_now = nat.table().affinity_of(vip, port, proto);
            if !have.contains(&fe) || now != wanted || affinity_now != affinity {
                nat.set_service_with_affinity(vip, port, proto, &backends, affinity)
                    .map_err(|e| {
                        ebpf_err(&format!("programming {name} ({vip}:{port}/{proto:?})"), e)
                    })?;
                stats.chains_written += 1;
                stats.rules_written += wanted.len();
                stats.transactions += 1;
            }
            self.names.insert(fe, name);
        }
        drop(dp);
        self.write_names()
    }

    fn write_names(&self) -> Result<()> {
        let text: String = self
            .names
            .iter()
            .map(|((vip, port, proto), name)| format!("{vip}:{port}/{proto:?} {name}\n"))
            .collect();
        let path = self.opts.state_dir.join(NAMES_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::StateFile { path, source })
    }

    fn finish(
        &mut self,
        result: Result<()>,
        refused: Vec<(String, &'static str)>,
        stats: SyncStats,
    ) -> Result<SyncStats> {
        if let Err(e) = result {
            self.synced = false;
            return Err(e);
        }
        tracing::debug!(?stats, "ebpf sync");
        if refused.is_empty() {
            return Ok(stats);
        }
        let list: Vec<String> = refused.iter().map(|(n, f)| format!("{n}: {f}")).collect();
        Err(Error::Unsupported(format!(
            "{} (the other service ports were programmed)",
            list.join(", ")
        )))
    }
}

/// The first feature of `p` the datapath cannot serve.
fn unsupported(p: &ServicePort) -> Option<&'static str> {
    if p.name.protocol == Protocol::Sctp {
        Some("SCTP")
    } else if p.node_port.is_some() {
        Some("nodePort")
    } else if !p.external_ips.is_empty() {
        Some("externalIPs")
    } else if !p.load_balancer_ips.is_empty() {
        Some("load-balancer IPs")
    } else {
        None
    }
}

fn ebpf_err(op: &str, source: netlet_ebpf::Error) -> Error {
    Error::Ebpf {
        op: op.to_string(),
        source: Box::new(source),
    }
}

/// Runs `f` on a thread inside the namespace file `path` (the calling thread when `None`):
/// tc attachments go to the namespace of the thread making them.
fn in_netns<T: Send>(path: Option<&Path>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let Some(path) = path else { return f() };
    std::thread::scope(|s| {
        s.spawn(move || {
            let netns_err = |source| Error::Netns {
                path: path.to_path_buf(),
                source,
            };
            let file = std::fs::File::open(path).map_err(netns_err)?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| netns_err(e.into()))?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl Backend for EbpfBackend {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn sync(&mut self, table: &ServiceTable) -> Result<SyncStats> {
        let mut refused = Vec::new();
        let want = Self::desired(table.ports(), &mut refused);
        let mut stats = SyncStats {
            service_ports: want.len(),
            ..SyncStats::default()
        };
        let result = self.apply(want, None, &mut stats).and_then(|()| {
            stats.hooks_changed += self.attach_all()?;
            Ok(())
        });
        if result.is_ok() {
            self.synced = true;
        }
        self.finish(result, refused, stats)
    }

    fn sync_changed(&mut self, table: &ServiceTable, changed: &[ServiceKey]) -> Result<SyncStats> {
        if !self.synced {
            return self.sync(table);
        }
        let changed: BTreeSet<&ServiceKey> = changed.iter().collect();
        let mut refused = Vec::new();
        let want = Self::desired(
            table.ports().filter(|p| changed.contains(&p.name.service)),
            &mut refused,
        );
        // In scope: the changed services' frontends, as programmed before and as wanted now.
        let mut scope: BTreeSet<Frontend> = want.keys().copied().collect();
        let prefixes: Vec<String> = changed.iter().map(|k| k.to_string()).collect();
        for (fe, name) in &self.names {
            let service = name.split(':').next().unwrap_or(name);
            if prefixes.iter().any(|p| p == service) {
                scope.insert(*fe);
            }
        }
        let mut stats = SyncStats {
            service_ports: self.names.len(),
            ..SyncStats::default()
        };
        let result = self.apply(want, Some(&scope), &mut stats);
        stats.service_ports = self.names.len();
        self.finish(result, refused, stats)
    }

    fn cleanup(&mut self) -> Result<SyncStats> {
        let mut stats = SyncStats::default();
        self.synced = false;
        // Stop attaching before detaching (the watch holds the datapath too).
        self.watch = None;
        self.dp = None;
        self.names.clear();
        // Every interface of the namespace: filters of an earlier config count too.
        let all = self
            .netns
            .run("listing interfaces", "ip", &["-o", "link", "show"], None)?;
        let links: Vec<String> = all
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect();
        let mut with_filters = Vec::new();
        for l in &links {
            let mut found = false;
            for hook in ["ingress", "egress"] {
                let out = self.netns.run(
                    "listing tc filters",
                    "tc",
                    &["filter", "show", "dev", l, hook],
                    None,
                )?;
                found |= out.contains("svc_nat_");
            }
            if found {
                with_filters.push(l.clone());
            }
        }
        in_netns(self.netns_path().as_deref(), || {
            for l in &with_filters {
                netlet_ebpf::detach(l).map_err(|e| ebpf_err(&format!("detaching from {l}"), e))?;
            }
            Ok(())
        })?;
        stats.hooks_changed = with_filters.len();
        if netlet_ebpf::bpffs::unmount_under(&self.bpffs_dir())
            .map_err(|e| ebpf_err("unmounting the private bpffs", e))?
        {
            stats.chains_deleted += 1;
        }
        let names = self.opts.state_dir.join(NAMES_FILE);
        match std::fs::remove_file(&names) {
            Ok(()) => stats.chains_deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::StateFile {
                    path: names,
                    source,
                })
            }
        }
        if !stats.is_noop() {
            stats.transactions = 1;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_masquerade_all_and_ipv6_configs() {
        let mut cfg = ProxyConfig::new("n");
        cfg.masquerade_all = true;
        let err = EbpfBackend::new(cfg, NetnsExec::Current, EbpfOptions::default()).unwrap_err();
        assert!(err.to_string().contains("masquerade-all"), "{err}");
        let mut cfg = ProxyConfig::new("n");
        cfg.families.push(IpFamily::V6);
        let err = EbpfBackend::new(cfg, NetnsExec::Current, EbpfOptions::default()).unwrap_err();
        assert!(err.to_string().contains("IPv6"), "{err}");
    }
}
