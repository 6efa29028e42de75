//! The eBPF backend: service NAT in tc programs (`netlet-ebpf`), Services as map entries.
//!
//! # What it programs
//!
//! One `services` entry per frontend `address : port / protocol`: every cluster IP with the
//! port's endpoints for in-cluster traffic (the cluster-wide ready ones, or the local ones with
//! `internalTrafficPolicy: Local`), and every node port (on each IPv4 node address), external
//! IP and load-balancer IP with the endpoints for external traffic. External frontends with
//! `externalTrafficPolicy: Cluster` masquerade every client (as kube-proxy does); with `Local`
//! they get a second entry for off-cluster clients holding only this node's endpoints, which
//! keeps the client's address, while pods still reach every endpoint through the first. The
//! datapath masquerades hairpin (a pod reaching itself) and off-cluster clients of cluster IPs
//! too, to [`EbpfOptions::masquerade_ip`] (by default the node's pod-bridge address inside the
//! cluster CIDRs, found again at each sync until there is one).
//!
//! The programs are loaded once per process with their maps pinned in a private bpffs under
//! [`EbpfOptions::state_dir`]; a later process re-adopts the pinned maps (services, conntrack
//! and all) and replaces the programs in place, so established flows keep their translation.
//!
//! # Where it attaches
//!
//! On the node-side ends of pod veths and on the node's uplink ([`EbpfOptions::interfaces`]; a
//! trailing `*` matches a name prefix). From the first sync on, a link watch (`links.rs`:
//! rtnetlink notifications in the node namespace) attaches to matching veths the moment they
//! appear, so a pod started after the proxy gets service NAT without waiting for a sync. Not on
//! the pod bridge: see the `netlet-ebpf` crate docs for why the bridge device misses replies
//! switched between its ports. The uplink's ingress translates off-cluster clients (and the
//! replies to masqueraded connections whose backend is on another node), its egress the
//! replies of `externalTrafficPolicy: Local` connections, which keep the client's address.
//!
//! # What it refuses
//!
//! SCTP ports (refused with [`Error::Unsupported`] naming each; the other ports are
//! programmed regardless), IPv6 and `--masquerade-all` (refused when the backend is built).
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
mod names;

use super::{Backend, SyncStats};
use crate::config::ProxyConfig;
use crate::error::{Error, Result};
use crate::exec::NetnsExec;
use crate::model::{IpFamily, Protocol, ServiceKey, ServicePort, ServiceTable};
use ipnetwork::IpNetwork;
use links::{Datapath, LinkWatch, Shared};
use names::Names;
use netlet_ebpf::maps::{flags, scope};
use netlet_ebpf::{NewFrontend, Proto, ServiceNat, SvcKey};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A datapath frontend: `services` key `vip:port/proto` plus the clients it serves.
type Frontend = SvcKey;

/// What a frontend should be programmed with.
#[derive(Debug, Clone)]
struct Want {
    /// The service port it belongs to (`namespace/name:port`).
    name: String,
    /// Reachable endpoints.
    backends: Vec<(Ipv4Addr, u16)>,
    /// `sessionAffinity: ClientIP` timeout.
    affinity: Option<Duration>,
    /// `netlet_ebpf::maps::flags` bits.
    flags: u16,
}

/// Name of the file under the state dir naming each programmed frontend's service port (the
/// maps only hold addresses): `vip:port/proto namespace/name:port` per line.
pub const NAMES_FILE: &str = "services";

/// Where and with what the eBPF backend works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfOptions {
    /// Directory for the private bpffs with the pinned maps and the names file.
    pub state_dir: PathBuf,
    /// Interfaces to attach to (node-side pod veths and the uplink); `prefix*` matches by
    /// prefix.
    pub interfaces: Vec<String>,
    /// The address masqueraded traffic gets (hairpin, off-cluster clients, external frontends
    /// with `externalTrafficPolicy: Cluster`); `None`: the first address of a bridge in the
    /// namespace that lies inside the cluster CIDRs (the pod bridge's gateway).
    pub masquerade_ip: Option<Ipv4Addr>,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/netlet/proxy-ebpf"),
            interfaces: vec!["veth*".to_string()],
            masquerade_ip: None,
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
    /// IPv4 node addresses (node ports answer there) and cluster CIDRs (who is a pod).
    node_ips: Vec<Ipv4Addr>,
    cluster_cidrs: Vec<(Ipv4Addr, u8)>,
    /// The masquerade address in the datapath's config, once known.
    masquerade_ip: Option<Ipv4Addr>,
    /// Loaded on the first sync (cleanup alone never loads); shared with the link watch.
    dp: Option<Shared>,
    /// Attaches to pod veths created between syncs; runs from the first full sync on.
    watch: Option<LinkWatch>,
    /// Which service port each programmed frontend belongs to.
    names: Names,
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
        let cluster_cidrs: Vec<(Ipv4Addr, u8)> = cfg
            .cluster_cidrs
            .iter()
            .filter_map(|n| match n {
                IpNetwork::V4(n) => Some((n.network(), n.prefix())),
                IpNetwork::V6(_) => None,
            })
            .collect();
        if cluster_cidrs.len() > netlet_ebpf::maps::MAX_CLUSTER_CIDRS {
            return Err(Error::Unsupported(format!(
                "the proxy config: {} IPv4 cluster CIDRs (the datapath holds {})",
                cluster_cidrs.len(),
                netlet_ebpf::maps::MAX_CLUSTER_CIDRS
            )));
        }
        let node_ips = cfg
            .node_ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(ip) => Some(*ip),
                IpAddr::V6(_) => None,
            })
            .collect();
        Ok(Self {
            netns,
            masquerade_ip: None,
            node_ips,
            cluster_cidrs,
            opts,
            dp: None,
            watch: None,
            names: Names::default(),
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
            self.masquerade_ip = None;
        }
        let dp = self.dp.clone().expect("loaded above");
        if self.masquerade_ip.is_none() {
            self.masquerade_ip = match self.opts.masquerade_ip {
                Some(ip) => Some(ip),
                None => self.bridge_address()?,
            };
            let config = netlet_ebpf::Config::new(self.masquerade_ip, &self.cluster_cidrs)
                .expect("CIDR count checked in new()");
            links::lock(&dp)
                .nat
                .set_config(&config)
                .map_err(|e| ebpf_err("writing the datapath config", e))?;
            if self.masquerade_ip.is_none() {
                tracing::info!(
                    "no pod bridge address yet: masqueraded traffic is dropped until one appears"
                );
            }
        }
        Ok(dp)
    }

    /// The first IPv4 address of a bridge in the namespace inside the cluster CIDRs.
    fn bridge_address(&self) -> Result<Option<Ipv4Addr>> {
        let out = self.netns.run(
            "listing bridge addresses",
            "ip",
            &["-o", "-4", "addr", "show", "type", "bridge"],
            None,
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                words.next()?.split('/').next()?.parse::<Ipv4Addr>().ok()
            })
            .find(|ip| {
                self.cluster_cidrs.iter().any(|(net, prefix)| {
                    ipnetwork::Ipv4Network::new(*net, *prefix).is_ok_and(|n| n.contains(*ip))
                })
            }))
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
        &self,
        ports: impl Iterator<Item = &'a ServicePort>,
        refused: &mut Vec<(String, &'static str)>,
    ) -> BTreeMap<Frontend, Want> {
        let mut out = BTreeMap::new();
        for p in ports {
            let proto = match p.name.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                Protocol::Sctp => {
                    refused.push((p.name.to_string(), "SCTP"));
                    continue;
                }
            };
            let v4 = |eps: Vec<&crate::model::Endpoint>| -> Vec<(Ipv4Addr, u16)> {
                eps.into_iter()
                    .filter_map(|e| match e.ip {
                        IpAddr::V4(ip) => Some((ip, e.port)),
                        IpAddr::V6(_) => None,
                    })
                    .collect()
            };
            let cluster = v4(p.cluster_endpoints());
            let local = v4(p.local_endpoints());
            let want = |backends: &Vec<(Ipv4Addr, u16)>, flags: u16| Want {
                name: p.name.to_string(),
                backends: backends.clone(),
                affinity: p.affinity_timeout.map(|s| Duration::from_secs(s.into())),
                flags,
            };
            let internal = if p.internal_policy_local() {
                &local
            } else {
                &cluster
            };
            for vip in v4_only(&p.cluster_ips) {
                out.insert(SvcKey::new(vip, p.port, proto), want(internal, 0));
            }
            let node_ports = p
                .node_port
                .into_iter()
                .flat_map(|np| self.node_ips.iter().map(move |ip| (*ip, np)));
            let externals = v4_only(&p.external_ips)
                .chain(v4_only(&p.load_balancer_ips))
                .map(|ip| (ip, p.port));
            for (ip, port) in node_ports.chain(externals) {
                let key = SvcKey::new(ip, port, proto);
                if p.external_policy_local() {
                    out.insert(key, want(&cluster, flags::OFF_CLUSTER_VARIANT));
                    out.insert(key.off_cluster(), want(&local, flags::KEEP_SOURCE));
                } else {
                    out.insert(key, want(&cluster, flags::MASQ_ALL));
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
        // Programmed but no longer wanted: among everything, or among the scope's frontends.
        let stale: Vec<Frontend> = match scope {
            None => nat.table().services(),
            Some(scope) => scope
                .iter()
                .filter(|fe| nat.table().frontend(fe).is_some())
                .copied()
                .collect(),
        };
        for fe in stale.iter().filter(|fe| !want.contains_key(fe)) {
            nat.remove_frontend(*fe)
                .map_err(|e| ebpf_err(&format!("removing service {}", frontend(fe)), e))?;
            stats.chains_deleted += 1;
            stats.transactions += 1;
            self.names.remove(fe);
        }
        // New frontends go in two batch writes (all slots, then all entries).
        let mut fresh: Vec<(Frontend, Want)> = Vec::new();
        for (fe, w) in want {
            let Some(now) = nat.table().frontend(&fe) else {
                fresh.push((fe, w));
                continue;
            };
            let mut now_sorted = now.backends.to_vec();
            let mut wanted = w.backends.clone();
            now_sorted.sort();
            wanted.sort();
            wanted.dedup();
            if now.affinity != w.affinity || now.flags != w.flags || now_sorted != wanted {
                nat.set_frontend(fe, w.flags, &w.backends, w.affinity)
                    .map_err(|e| {
                        ebpf_err(&format!("programming {} ({})", w.name, frontend(&fe)), e)
                    })?;
                stats.chains_written += 1;
                stats.rules_written += wanted.len();
                stats.transactions += 1;
            }
            self.names.insert(fe, w.name);
        }
        if !fresh.is_empty() {
            let items: Vec<NewFrontend<'_>> = fresh
                .iter()
                .map(|(fe, w)| NewFrontend {
                    key: *fe,
                    flags: w.flags,
                    backends: &w.backends,
                    affinity: w.affinity,
                })
                .collect();
            nat.add_frontends(&items).map_err(|e| {
                let first = fresh.first().map_or("", |(_, w)| w.name.as_str());
                ebpf_err(
                    &format!("programming {} new frontends ({first}, …)", items.len()),
                    e,
                )
            })?;
            stats.chains_written += fresh.len();
            stats.transactions += fresh.len();
            for (fe, w) in fresh {
                stats.rules_written += w.backends.len();
                self.names.insert(fe, w.name);
            }
        }
        drop(dp);
        self.write_names()
    }

    /// Rewrites the names file if a name changed since it was last written.
    fn write_names(&mut self) -> Result<()> {
        if !self.names.take_dirty() {
            return Ok(());
        }
        let text: String = self
            .names
            .iter()
            .map(|(fe, name)| format!("{} {name}\n", frontend(fe)))
            .collect();
        let path = self.opts.state_dir.join(NAMES_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| {
                self.names.mark_dirty();
                Error::StateFile { path, source }
            })
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

/// The IPv4 addresses of `ips`.
fn v4_only(ips: &[IpAddr]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    ips.iter().filter_map(|ip| match ip {
        IpAddr::V4(ip) => Some(*ip),
        IpAddr::V6(_) => None,
    })
}

/// `vip:port/Proto`, with `/off-cluster` for the entries of off-cluster clients.
fn frontend(key: &SvcKey) -> String {
    let proto = key
        .proto()
        .map_or_else(|| key.proto.to_string(), |p| format!("{p:?}"));
    let scope = if key.scope == scope::OFF_CLUSTER {
        "/off-cluster"
    } else {
        ""
    };
    format!("{}:{}/{proto}{scope}", key.vip(), key.port())
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
        let want = self.desired(table.ports(), &mut refused);
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
        let want = self.desired(changed.iter().flat_map(|k| table.ports_of(k)), &mut refused);
        // In scope: the changed services' frontends, as programmed before and as wanted now.
        let mut scope: BTreeSet<Frontend> = want.keys().copied().collect();
        for k in &changed {
            scope.extend(self.names.frontends_of(&k.to_string()));
        }
        let mut stats = SyncStats {
            service_ports: self.names.len(),
            ..SyncStats::default()
        };
        let result = self.apply(want, Some(&scope), &mut stats);
        stats.service_ports = self.names.len();
        self.finish(result, refused, stats)
    }

    fn map_entries(&self) -> Vec<(&'static str, usize)> {
        let Some(dp) = &self.dp else {
            return Vec::new();
        };
        let dp = links::lock(dp);
        let table = dp.nat.table();
        vec![
            (netlet_ebpf::maps::names::SERVICES, table.len()),
            (netlet_ebpf::maps::names::BACKENDS, table.slot_count()),
        ]
    }

    fn cleanup(&mut self) -> Result<SyncStats> {
        let mut stats = SyncStats::default();
        self.synced = false;
        // Stop attaching before detaching (the watch holds the datapath too).
        self.watch = None;
        self.dp = None;
        self.names.clear();
        self.masquerade_ip = None;
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
