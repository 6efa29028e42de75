//! The nftables backend: one table `ip netlet` (and `ip6 netlet`) of fixed shape, programmed
//! over nf_tables netlink directly, with all Service state in a few named maps and sets.
//!
//! # Why this shape
//!
//! On this machine kind the kernel, not the encoding, is the cost of nftables at scale: every
//! chain, named or anonymous set and jump rule makes each transaction re-validate more, so a
//! kube-proxy-like shape (verdict map → chain per service → chain per endpoint) takes about a
//! minute for 10,000 services × 5 endpoints even as one batch, and a single-service update
//! 25–120 ms. Here the chains and rules never depend on which Services exist: they are built
//! once from the node config (and the distinct session-affinity timeouts in use), and a
//! Service change is only element additions and deletions in hash maps, which the kernel
//! applies without re-validating rules.
//!
//! # Shape (`nft list table ip netlet`)
//!
//! - A frontend is `address . proto . port` (cluster, external and load-balancer IPs) or
//!   `proto . port` on a node address (node ports).
//! - `service-endpoints` / `nodeport-endpoints`: `frontend . modulus . slot → endpoint
//!   address . port`. A frontend with `n` ≤ [`render::EXACT_MAX`] (16) endpoints has modulus
//!   `n` and one slot per endpoint; larger groups have modulus [`render::SLOTS`] (64) with the
//!   slots filled round-robin (`⌊64/n⌋` or `⌈64/n⌉` each, at most 1/64 of the traffic off; at
//!   most the first 64 endpoints are used). Per kind of frontend there is one rule per modulus
//!   (1–16 and 64), each `dnat to <frontend> . <modulus> . numgen random mod <modulus> map
//!   @…`: only the rule of the frontend's own modulus finds its elements, so a new connection
//!   costs at most 17 hash lookups whatever the number of services, and 10,000 services × 5
//!   endpoints are 50,000 endpoint elements (with 64 slots for every frontend they were
//!   640,000 and a full sync took ten times as long).
//! - externalTrafficPolicy Local: the endpoint maps hold the local endpoints; pods (source in
//!   a cluster CIDR) and the node itself use `local-policy-cluster-endpoints` /
//!   `local-policy-cluster-nodeport-endpoints` instead (kube-proxy's short circuit).
//! - Session affinity: `affinity-ips` / `affinity-nodeports` list affine frontends with their
//!   timeout. In nat postrouting, one rule per distinct timeout remembers
//!   `client . original destination → endpoint` in the dynamic map `affinity` (conntrack gives
//!   the pre-DNAT destination, the packet the endpoint), refreshed by every new connection;
//!   the first DNAT rule reuses a remembered endpoint. A sync that removes an endpoint (or an
//!   affinity) deletes the choices pointing at it.
//! - Masquerade: rules set mark `0x4000` (off-cluster source to a cluster IP, external
//!   traffic with policy Cluster, the node's own traffic to policy Local frontends);
//!   `nat-postrouting` masquerades marked packets, and DNATed packets whose `saddr . daddr` is
//!   in `hairpin` (an endpoint reaching itself).
//! - Filter: new connections to frontends in `no-endpoints` / `no-endpoint-nodeports` are
//!   rejected (TCP reset, ICMP port unreachable); those in `no-local-endpoints` /
//!   `no-local-endpoint-nodeports` (policy Local, no endpoint here) are dropped.
//! - Element and rule comments name the service port / purpose, so `nft list table` (1.0.6
//!   included) reads well. Every key is a concatenation of plain expressions: nft 1.0.6
//!   cannot print (and aborts on) a lookup keyed by another lookup's result, which is why
//!   there is no "service id" indirection.
//!
//! Other tables' drop policies are not overridden (nftables cannot accept for another table);
//! a node whose forward policy drops must allow service traffic itself.
//!
//! # Syncs
//!
//! The first full sync of a process rebuilds the table in one transaction (delete, create,
//! all elements): whatever a previous process left, the table then matches this code, config
//! and table exactly. Established connections survive because conntrack keeps their NAT
//! bindings; remembered affinities are lost. (Before rebuilding it reads back the small
//! frontend sets, only to report how many stale elements go; the endpoint maps are not read:
//! the kernel's dump of a big set restarts its walk per datagram, quadratic — 65 s for
//! 640,000 elements.) Later full syncs diff against what this process installed and apply
//! the difference in one transaction, rebuilding if our table has disappeared; a sync of an
//! unchanged table sends nothing. Hand edits inside our table are repaired by a restart.
//!
//! Every element set is created with a size ([`capacity`]): the kernel then allocates its hash
//! table once instead of rehashing while a rebuild inserts; a sync that would pass a set's
//! size rebuilds the table with bigger ones. A full sync of a big table renders on two threads.
//!
//! A partial sync re-renders only the changed Services and writes only their elements (one
//! transaction, no rule touched); elements shared between services (hairpin pairs) are
//! reference-counted. A new set of distinct affinity timeouts changes the rules, so it
//! rebuilds the table like a first sync.
//!
//! Stats: `chains_written` counts elements added (or replaced), `chains_deleted` elements
//! removed (tables, on cleanup), `rules_written` the rules and `hooks_changed` the chains and
//! sets of a rebuild.
//!
//! # Layout
//!
//! [`render`] (pure: table → elements), [`base`] (table, chains, sets) and [`rules`] (the
//! fixed rules), [`expr`] (expression encoding), [`netlink`] (socket, batches, dumps),
//! [`apply`] (read back, diff, batch elements).

pub mod apply;
pub mod base;
pub mod capacity;
pub mod expr;
pub mod netlink;
pub mod render;
pub mod rules;

use super::{Backend, SyncStats};
use crate::config::ProxyConfig;
use crate::error::Result;
use crate::exec::NetnsExec;
use crate::model::{IpFamily, ServiceKey, ServicePortName, ServiceTable};
use apply::Elements;
use base::{BaseSpec, Family};
use capacity::{Capacities, Counts};
use netlink::NftSocket;
use render::{Context, Element, Encoded};
use std::collections::{BTreeMap, BTreeSet};

/// The desired elements a first sync of `table` installs for `family`: the text the golden
/// tests pin, and a dry run's output.
pub fn render_elements(table: &ServiceTable, cfg: &ProxyConfig, family: IpFamily) -> String {
    render::render(&table.for_family(family), &context(cfg, family)).to_string()
}

fn family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::V4,
        IpFamily::V6 => Family::V6,
    }
}

fn context(cfg: &ProxyConfig, f: IpFamily) -> Context {
    Context {
        family: family(f),
        cluster_cidrs: cfg.cluster_cidrs_of(f),
        node_ips: cfg.node_ips_of(f),
        masquerade_all: cfg.masquerade_all,
    }
}

/// A set element's identity: its set and key bytes.
type ElementKey = (&'static str, Vec<u8>);

/// What this process rendered and installed for one family.
#[derive(Debug, Default)]
struct FamilyState {
    /// Per service port, its last rendered elements.
    fragments: BTreeMap<ServicePortName, Vec<Element>>,
    /// How many fragments want each element (endpoints shared by services share hairpins).
    refs: BTreeMap<ElementKey, u32>,
    /// The fixed part as this process built it; `None`: rebuild on the next sync.
    base: Option<BaseSpec>,
    /// The elements as this process last wrote them.
    installed: Elements,
    /// `installed`'s elements per set.
    counts: Counts,
    /// What the sets were created with.
    capacity: Capacities,
}

impl FamilyState {
    fn remove_service(
        &mut self,
        key: &ServiceKey,
        touched: &mut BTreeMap<ElementKey, Option<Encoded>>,
    ) {
        let gone: Vec<ServicePortName> = (self.fragments.range(ServicePortName::first_of(key)..))
            .take_while(|(n, _)| &n.service == key)
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            for e in self.fragments.remove(&n).unwrap_or_default() {
                let k = (e.set, render::concat_bytes(&e.key));
                if let Some(c) = self.refs.get_mut(&k) {
                    *c = c.saturating_sub(1);
                }
                touched.entry(k).or_insert(None);
            }
        }
    }

    /// The distinct affinity timeouts wanted, from the reference counts (a range scan).
    fn timeouts(&self) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        for set in [base::set::AFFINITY_IPS, base::set::AFFINITY_NODEPORTS] {
            for ((_, key), n) in self
                .refs
                .range((set, Vec::new())..)
                .take_while(|((s, _), _)| *s == set)
            {
                if *n > 0 {
                    let t: [u8; 4] = key[key.len() - 4..].try_into().expect("4-byte timeout");
                    out.insert(u32::from_ne_bytes(t));
                }
            }
        }
        out
    }
}

/// An element as the maps of installed elements hold it: its identity and encoded value.
fn encoded_pair(e: &Element) -> (ElementKey, Encoded) {
    ((e.set, render::concat_bytes(&e.key)), e.encoded())
}

/// Ports in a table from which a full sync renders on two threads.
const PARALLEL_RENDER_MIN: usize = 2_000;

/// Renders `ports` (in table order) for `ipf`: each port's elements, and all of them encoded
/// and stably sorted by key.
#[allow(clippy::type_complexity)]
fn render_sorted(
    ports: &[&crate::model::ServicePort],
    ipf: IpFamily,
) -> (
    Vec<(ServicePortName, Vec<Element>)>,
    Vec<(ElementKey, Encoded)>,
) {
    let fragments: Vec<(ServicePortName, Vec<Element>)> = ports
        .iter()
        .filter_map(|p| p.for_family(ipf))
        .map(|p| (p.name.clone(), render::render_port(&p)))
        .collect();
    let mut pairs: Vec<(ElementKey, Encoded)> = fragments
        .iter()
        .flat_map(|(_, elems)| elems)
        .map(encoded_pair)
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    (fragments, pairs)
}

/// Merges two runs sorted by key, `a`'s before `b`'s among equal keys (a stable sort of
/// `a` then `b`).
fn merge_sorted<V>(a: Vec<(ElementKey, V)>, b: Vec<(ElementKey, V)>) -> Vec<(ElementKey, V)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut b = b.into_iter().peekable();
    for x in a {
        while let Some(y) = b.next_if(|y| y.0 < x.0) {
            out.push(y);
        }
        out.push(x);
    }
    out.extend(b);
    out
}

/// The nftables [`Backend`].
#[derive(Debug)]
pub struct NftablesBackend {
    cfg: ProxyConfig,
    sock: NftSocket,
    state: BTreeMap<IpFamily, FamilyState>,
    /// A full sync succeeded and nothing failed since: partial syncs may trust `state`.
    synced: bool,
}

impl NftablesBackend {
    /// A backend programming `netns` (its netlink socket is opened there, now).
    pub fn new(cfg: ProxyConfig, netns: &NetnsExec) -> Result<Self> {
        Ok(Self {
            cfg,
            sock: NftSocket::open(netns)?,
            state: BTreeMap::new(),
            synced: false,
        })
    }

    /// Re-renders every port and applies the difference to what this process installed, or
    /// rebuilds the table when the fixed part is not known to match (first sync, new config
    /// or affinity timeouts, a failed transaction, or our table gone).
    fn full_sync_family(&mut self, ipf: IpFamily, table: &ServiceTable) -> Result<SyncStats> {
        let ctx = context(&self.cfg, ipf);
        let f = ctx.family;
        let st = self.state.entry(ipf).or_default();
        // The desired elements as `render::assemble` has them (a later duplicate wins),
        // encoded and sorted: both maps are bulk-built from sorted runs, which at 100,000
        // elements is several times faster than inserting one by one. Big tables are rendered
        // in two halves on two threads, then merged.
        let ports: Vec<&crate::model::ServicePort> = table.ports().collect();
        let split = if ports.len() >= PARALLEL_RENDER_MIN {
            ports.len() / 2
        } else {
            ports.len()
        };
        let (left, right) = ports.split_at(split);
        let ((left_frags, left_pairs), (right_frags, right_pairs)) = std::thread::scope(|s| {
            let right = (!right.is_empty()).then(|| s.spawn(|| render_sorted(right, ipf)));
            let left = render_sorted(left, ipf);
            let right = right.map_or_else(Default::default, |h| {
                h.join().expect("the rendering thread does not panic")
            });
            (left, right)
        });
        st.fragments = left_frags.into_iter().chain(right_frags).collect();
        let mut node: Vec<(ElementKey, Encoded)> = render::node_elements(&ctx)
            .iter()
            .map(encoded_pair)
            .collect();
        node.sort_by(|a, b| a.0.cmp(&b.0));
        let pairs = merge_sorted(merge_sorted(node, left_pairs), right_pairs);
        st.refs = pairs
            .chunk_by(|a, b| a.0 == b.0)
            .map(|run| (run[0].0.clone(), run.len() as u32))
            .collect();
        // `collect` keeps the last of equal keys, and the sort was stable.
        let want: Elements = pairs.into_iter().collect();
        let spec = BaseSpec {
            timeouts: st.timeouts(),
            ctx,
        };
        let counts = capacity::count(&want);
        let mut rebuild = st.base.as_ref() != Some(&spec) || !st.capacity.fits(&counts);
        if !rebuild {
            let mut a = netlink::Attrs::new();
            a.str(1, base::TABLE);
            let op = format!("looking for nftables table {f:?} {}", base::TABLE);
            rebuild = !self
                .sock
                .exists(netlink::msg::GETTABLE, f.nfproto(), &a, &op)?;
        }
        let st = self.state.get_mut(&ipf).expect("state exists");
        let mut batch = self.sock.batch();
        let mut stats = SyncStats {
            service_ports: st.fragments.len(),
            ..SyncStats::default()
        };
        let affine = apply::has_affinity(&st.installed) || apply::has_affinity(&want);
        if rebuild {
            // Only to report what a previous process left behind: the frontend sets are
            // small, the endpoint maps are not read (dumping a big set is quadratic).
            let old = apply::read_installed(&mut self.sock, f, &base::FRONTEND_SETS)?;
            stats.chains_deleted = old
                .unwrap_or_default()
                .keys()
                .filter(|k| !want.contains_key(*k))
                .count();
            stats.chains_written = want.len();
            st.capacity = Capacities::for_counts(&counts);
            let (objects, rules) = base::build(&mut batch, &spec, &st.capacity);
            apply::push_all(&mut batch, f, &want);
            stats.rules_written = rules;
            stats.hooks_changed = objects;
        } else {
            let d = apply::diff(&st.installed, &want);
            stats.chains_written = d.add.len();
            stats.chains_deleted = d.delete.len();
            apply::push_diff(&mut batch, f, &d);
        }
        stats.transactions = self.apply(f, batch)?;
        let st = self.state.get_mut(&ipf).expect("state exists");
        st.base = Some(spec);
        st.installed = want;
        st.counts = counts;
        if !stats.is_noop() && affine && !rebuild {
            self.forget_stale_affinity(ipf)?;
        }
        tracing::debug!(family = %ipf, ?stats, "nftables full sync");
        Ok(stats)
    }

    /// Re-renders the changed Services only and writes the difference to what this process
    /// installed, touching only their elements. Falls back to a full sync when the fixed part
    /// has to change (a new set of affinity timeouts).
    fn partial_sync_family(
        &mut self,
        ipf: IpFamily,
        table: &ServiceTable,
        keys: &[ServiceKey],
    ) -> Result<SyncStats> {
        let f = family(ipf);
        let st = self.state.entry(ipf).or_default();
        let mut touched: BTreeMap<ElementKey, Option<Encoded>> = BTreeMap::new();
        for key in keys {
            st.remove_service(key, &mut touched);
            for p in table.ports_of(key).filter_map(|p| p.for_family(ipf)) {
                let elems = render::render_port(&p);
                for (k, enc) in elems.iter().map(encoded_pair) {
                    *st.refs.entry(k.clone()).or_default() += 1;
                    touched.insert(k, Some(enc));
                }
                st.fragments.insert(p.name.clone(), elems);
            }
        }
        let timeouts = st.timeouts();
        if st.base.as_ref().map(|b| &b.timeouts) != Some(&timeouts) {
            return self.full_sync_family(ipf, table);
        }
        let mut delete = Vec::new();
        let mut add = Vec::new();
        for (k, value) in touched {
            let wanted = st.refs.get(&k).copied().unwrap_or(0) > 0;
            let have = st.installed.get(&k);
            if !wanted {
                st.refs.remove(&k);
                if have.is_some() {
                    delete.push(k);
                }
                continue;
            }
            // A shared element another port still wants keeps its installed value.
            let Some(want) = value.or_else(|| have.cloned()) else {
                continue;
            };
            if have == Some(&want) {
                continue;
            }
            if have.is_some() {
                delete.push(k.clone());
            }
            add.push((k, want));
        }
        let mut counts = st.counts.clone();
        for (set, _) in &delete {
            let n = counts.entry(set).or_default();
            *n = n.saturating_sub(1);
        }
        for ((set, _), _) in &add {
            *counts.entry(set).or_default() += 1;
        }
        if !st.capacity.fits(&counts) {
            // A set would pass its limit: rebuild with room for what is wanted now.
            st.base = None;
            return self.full_sync_family(ipf, table);
        }
        let affine = apply::has_affinity(&st.installed) || !timeouts.is_empty();
        let service_ports = st.fragments.len();
        let d = apply::Diff {
            delete: delete.iter().map(|(s, k)| (*s, k.as_slice())).collect(),
            add: add
                .iter()
                .map(|((s, k), e)| (*s, k.as_slice(), e))
                .collect(),
        };
        let mut batch = self.sock.batch();
        apply::push_diff(&mut batch, f, &d);
        let mut stats = SyncStats {
            service_ports,
            chains_written: add.len(),
            chains_deleted: delete.len(),
            ..SyncStats::default()
        };
        drop(d);
        stats.transactions = self.apply(f, batch)?;
        let st = self.state.get_mut(&ipf).expect("state exists");
        for k in &delete {
            st.installed.remove(k);
        }
        st.installed.extend(add);
        st.counts = counts;
        if !stats.is_noop() && affine {
            self.forget_stale_affinity(ipf)?;
        }
        tracing::debug!(family = %ipf, ?stats, "nftables partial sync");
        Ok(stats)
    }

    /// Sends a batch unless it is empty; the number of transactions made. On failure what is
    /// in the kernel is unknown: the next sync of the family rebuilds.
    fn apply(&mut self, f: Family, batch: netlink::Batch) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        let op = format!("syncing nftables table {f:?} {}", base::TABLE);
        if let Err(e) = self.sock.apply(batch, &op) {
            for st in self.state.values_mut() {
                st.base = None;
            }
            return Err(e);
        }
        Ok(1)
    }

    /// Deletes remembered ClientIP choices that point at endpoints a frontend no longer has
    /// (or whose frontend lost its affinity). A choice expiring meanwhile makes the kernel
    /// refuse the deletion; that is only logged, the next sync tries again.
    fn forget_stale_affinity(&mut self, ipf: IpFamily) -> Result<()> {
        let f = family(ipf);
        let want = &self.state[&ipf].installed;
        let Some(remembered) = apply::read_set(&mut self.sock, f, base::set::AFFINITY)? else {
            return Ok(());
        };
        let stale = apply::stale_affinity(f, want, &remembered);
        if stale.is_empty() {
            return Ok(());
        }
        let mut batch = self.sock.batch();
        apply::push_affinity_deletions(&mut batch, f, &stale);
        if let Err(e) = self
            .sock
            .apply(batch, "forgetting stale ClientIP affinities")
        {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    fn sync_all(
        &mut self,
        table: &ServiceTable,
        changed: Option<&[ServiceKey]>,
    ) -> Result<SyncStats> {
        let mut stats = SyncStats::default();
        for family in self.cfg.families.clone() {
            let result = match changed {
                None => self.full_sync_family(family, table),
                Some(keys) => self.partial_sync_family(family, table, keys),
            };
            match result {
                Ok(s) => stats.add(s),
                Err(e) => {
                    self.synced = false;
                    return Err(e);
                }
            }
        }
        self.synced = true;
        Ok(stats)
    }
}

impl Backend for NftablesBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn sync(&mut self, table: &ServiceTable) -> Result<SyncStats> {
        self.sync_all(table, None)
    }

    fn sync_changed(&mut self, table: &ServiceTable, changed: &[ServiceKey]) -> Result<SyncStats> {
        if !self.synced {
            return self.sync(table);
        }
        self.sync_all(table, Some(changed))
    }

    fn cleanup(&mut self) -> Result<SyncStats> {
        self.state.clear();
        self.synced = false;
        let mut stats = SyncStats::default();
        let mut batch = self.sock.batch();
        for f in [Family::V4, Family::V6] {
            let mut a = netlink::Attrs::new();
            a.str(1, base::TABLE);
            let op = format!("looking for nftables table {f:?} {}", base::TABLE);
            if self
                .sock
                .exists(netlink::msg::GETTABLE, f.nfproto(), &a, &op)?
            {
                base::delete_table(&mut batch, f);
                stats.chains_deleted += 1;
            }
        }
        if !batch.is_empty() {
            self.sock.apply(batch, "deleting the nftables tables")?;
            stats.transactions = 1;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_key_order_and_the_first_runs_elements_first_among_equals() {
        let k = |s: &'static str, b: u8| (s, vec![b]);
        let a = vec![(k("a", 1), "a1"), (k("a", 3), "a3"), (k("b", 0), "a-b0")];
        let b = vec![(k("a", 0), "b0"), (k("a", 3), "b3"), (k("c", 9), "b-c9")];
        let merged: Vec<&str> = merge_sorted(a, b).into_iter().map(|(_, v)| v).collect();
        assert_eq!(merged, ["b0", "a1", "a3", "b3", "a-b0", "b-c9"]);
    }
}
