//! The iptables backend: renders the table into `NETLET-*` chains ([`render`]) and applies the
//! difference to the kernel with one `iptables-restore --noflush` per family and sync.
//!
//! Restart safety: a full sync reads `iptables-save`, rewrites every desired chain whose
//! content it cannot vouch for (not written by this process, or a different rule count in the
//! kernel), deletes `NETLET-*` chains nothing wants and fixes the hooks in the kernel's chains.
//! Rewriting a nat chain only affects connections not yet seen by conntrack, so established
//! connections keep flowing through every sync. A second sync of the same table writes nothing.
//!
//! A partial sync re-renders only the changed Services and diffs against what this process
//! installed, without reading the kernel: rendering, diffing and kernel writes are proportional
//! to the change (plus the shared dispatch chains when the changed Services' lines in them do).
//! What the kernel then does is not: legacy iptables replaces the whole nat table on every
//! commit, and nf_tables re-validates every chain reachable from a hook when a jump is added.

mod cli;
#[cfg(test)]
mod fake;
pub mod render;
pub mod ruleset;
pub mod save;
#[cfg(test)]
mod tests;

pub use cli::{IptablesCli, IptablesMode, SystemIptables, Variant};

use super::{Backend, SyncStats};
use crate::config::ProxyConfig;
use crate::error::Result;
use crate::exec::NetnsExec;
use crate::model::{IpFamily, ServiceKey, ServicePortName, ServiceTable};
use render::{RenderContext, ServiceRules};
use ruleset::{ChainId, Table, Transaction};
use std::collections::{BTreeMap, BTreeSet};

/// Chains of the kernel's own that our hooks live in.
const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// The `iptables-restore` input a first sync of `table` would install for `family`, without
/// the hooks: the text the golden tests pin, and a dry run's output.
pub fn render_restore(table: &ServiceTable, cfg: &ProxyConfig, family: IpFamily) -> String {
    render::render(table, &RenderContext::new(cfg, family, table)).to_restore()
}

/// What this process rendered and installed for one family.
#[derive(Debug, Default)]
struct FamilyState {
    /// Per service port, its last rendered rules.
    fragments: BTreeMap<ServicePortName, ServiceRules>,
    /// Our chains as this process last wrote or verified them.
    installed: BTreeMap<ChainId, Vec<String>>,
    /// `fragments` were rendered for a large cluster (without per-endpoint comments).
    large_cluster: bool,
}

impl FamilyState {
    /// The transaction for a partial sync of the Services `keys`, updating `fragments` and
    /// `installed` as if it succeeds. Work is proportional to the change: the Services' own
    /// chains are diffed one by one, and the shared dispatch chains are re-assembled only
    /// when a changed Service's lines in them differ (Services or ports added or removed,
    /// endpoints appearing or all going), never for an endpoint moving.
    fn plan_partial(
        &mut self,
        table: &ServiceTable,
        keys: &[ServiceKey],
        ctx: &RenderContext,
    ) -> Transaction {
        let mut tx = Transaction::default();
        let mut shared_changed = false;
        for key in keys {
            let stale: Vec<ServicePortName> =
                (self.fragments.range(ServicePortName::first_of(key)..))
                    .take_while(|(name, _)| &name.service == key)
                    .map(|(name, _)| name.clone())
                    .collect();
            let old: Vec<ServiceRules> = stale
                .iter()
                .filter_map(|name| self.fragments.remove(name))
                .collect();
            let new: Vec<(ServicePortName, ServiceRules)> = table
                .ports_of(key)
                .filter_map(|p| render_port(p, ctx))
                .collect();
            let shared = |f: &ServiceRules| f.shared.clone();
            shared_changed |= old
                .iter()
                .flat_map(shared)
                .ne(new.iter().flat_map(|(_, f)| shared(f)));
            let old_own: BTreeSet<&String> = old.iter().flat_map(|f| f.own.keys()).collect();
            for (_, f) in &new {
                for (name, rules) in &f.own {
                    let id = ChainId::new(Table::Nat, name.as_str());
                    if self.installed.get(&id) != Some(rules) {
                        tx.write_chain(&id, rules);
                        self.installed.insert(id, rules.clone());
                    }
                }
            }
            for name in old_own {
                if !new.iter().any(|(_, f)| f.own.contains_key(name)) {
                    let id = ChainId::new(Table::Nat, name.as_str());
                    tx.delete_chain(&id);
                    self.installed.remove(&id);
                }
            }
            self.fragments.extend(new);
        }
        if shared_changed {
            // The shared chains are the same set whatever the Services: none to delete.
            let shared = render::assemble_shared(ctx, self.fragments.values());
            for (id, rules) in shared.chains {
                if self.installed.get(&id) != Some(&rules) {
                    tx.write_chain(&id, &rules);
                    self.installed.insert(id, rules);
                }
            }
        }
        tx
    }
}

/// A service port's rules for the family `ctx` renders, if the port has that family.
fn render_port(
    p: &crate::model::ServicePort,
    ctx: &RenderContext,
) -> Option<(ServicePortName, ServiceRules)> {
    let p = p.for_family(ctx.family)?;
    Some((p.name.clone(), render::render_service(&p, ctx)))
}

/// The iptables [`Backend`].
#[derive(Debug)]
pub struct IptablesBackend {
    cfg: ProxyConfig,
    cli: Box<dyn IptablesCli>,
    state: BTreeMap<IpFamily, FamilyState>,
    /// A full sync succeeded and nothing failed since: partial syncs may trust `state`.
    synced: bool,
}

impl IptablesBackend {
    /// A backend running the real tools in `netns`; resolves the variant now.
    pub fn new(cfg: ProxyConfig, netns: NetnsExec, mode: IptablesMode) -> Result<Self> {
        Ok(Self::with_cli(
            cfg,
            Box::new(SystemIptables::new(netns, mode)?),
        ))
    }

    /// A backend over any [`IptablesCli`] (a fake in unit tests).
    pub fn with_cli(cfg: ProxyConfig, cli: Box<dyn IptablesCli>) -> Self {
        Self {
            cfg,
            cli,
            state: BTreeMap::new(),
            synced: false,
        }
    }

    fn sync_family(
        &mut self,
        family: IpFamily,
        table: &ServiceTable,
        changed: Option<&[ServiceKey]>,
    ) -> Result<SyncStats> {
        let ctx = RenderContext::new(&self.cfg, family, table);
        let st = self.state.entry(family).or_default();
        // Crossing the large-cluster threshold changes every Service's rules.
        let changed = changed.filter(|_| st.large_cluster == ctx.large_cluster);
        st.large_cluster = ctx.large_cluster;
        let tx = match changed {
            None => {
                st.fragments = table.ports().filter_map(|p| render_port(p, &ctx)).collect();
                let desired = render::assemble(&ctx, st.fragments.values()).chains;
                let kernel = save::parse(&self.cli.save(family)?);
                let mut tx = Transaction::default();
                for (id, rules) in &desired {
                    let verified = kernel.chains.get(id) == Some(&rules.len())
                        && st.installed.get(id) == Some(rules);
                    if !verified {
                        tx.write_chain(id, rules);
                    }
                }
                for id in kernel.chains.keys().filter(|id| !desired.contains_key(*id)) {
                    tx.delete_chain(id);
                }
                plan_hooks(&kernel, &desired, &mut tx);
                st.installed = desired;
                tx
            }
            Some(keys) => st.plan_partial(table, keys, &ctx),
        };
        let mut stats = SyncStats {
            service_ports: st.fragments.len(),
            chains_written: tx.chains_written(),
            chains_deleted: tx.chains_deleted(),
            rules_written: tx.rules_written(),
            hooks_changed: tx.hooks_changed(),
            transactions: 0,
        };
        if !tx.is_empty() {
            if let Err(e) = self.cli.restore(family, &tx.render()) {
                // What is in the kernel is unknown now: vouch for nothing.
                st.installed.clear();
                return Err(e);
            }
            stats.transactions = 1;
        }
        tracing::debug!(%family, ?stats, "iptables sync");
        Ok(stats)
    }

    fn sync_all(
        &mut self,
        table: &ServiceTable,
        changed: Option<&[ServiceKey]>,
    ) -> Result<SyncStats> {
        let mut stats = SyncStats::default();
        for family in self.cfg.families.clone() {
            match self.sync_family(family, table, changed) {
                Ok(s) => stats.add(s),
                Err(e) => {
                    // Whatever failed, the next sync must be a full one.
                    self.synced = false;
                    return Err(e);
                }
            }
        }
        self.synced = true;
        Ok(stats)
    }
}

/// Adds the missing hooks and removes duplicate, misplaced or dangling ones.
fn plan_hooks(
    kernel: &save::Installed,
    desired: &BTreeMap<ChainId, Vec<String>>,
    tx: &mut Transaction,
) {
    let wanted = render::hooks();
    let mut seen = BTreeSet::new();
    for h in &kernel.hooks {
        let dangling = !desired.contains_key(&ChainId::new(h.table, h.target.as_str()));
        let builtin = BUILTIN_CHAINS.contains(&h.chain.as_str());
        let expected = wanted
            .iter()
            .any(|w| w.table == h.table && w.chain == h.chain && w.target == h.target);
        let first = seen.insert((h.table, h.chain.clone(), h.target.clone()));
        // A jump from someone else's chain to a chain we keep is theirs to manage.
        if dangling || (builtin && (!expected || !first)) {
            tx.delete_hook(h.table, &h.chain, &h.spec);
        }
    }
    for w in &wanted {
        if !seen.contains(&(w.table, w.chain.to_string(), w.target.to_string())) {
            tx.insert_hook(w.table, w.chain, &w.spec);
        }
    }
}

impl Backend for IptablesBackend {
    fn name(&self) -> &'static str {
        "iptables"
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
        for family in [IpFamily::V4, IpFamily::V6] {
            let save = match self.cli.save(family) {
                Ok(s) => s,
                // A family we were never configured for may not even exist in this kernel.
                Err(e) if !self.cfg.families.contains(&family) => {
                    tracing::debug!("cleanup skips {family}: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let kernel = save::parse(&save);
            let mut tx = Transaction::default();
            for h in &kernel.hooks {
                tx.delete_hook(h.table, &h.chain, &h.spec);
            }
            for id in kernel.chains.keys() {
                tx.delete_chain(id);
            }
            if tx.is_empty() {
                continue;
            }
            self.cli.restore(family, &tx.render())?;
            stats.add(SyncStats {
                chains_deleted: tx.chains_deleted(),
                hooks_changed: tx.hooks_changed(),
                transactions: 1,
                ..SyncStats::default()
            });
        }
        Ok(stats)
    }
}
