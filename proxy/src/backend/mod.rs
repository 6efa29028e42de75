//! The [`Backend`] trait every dataplane implements, and the factory that picks one from config.
//!
//! One file per backend: [`iptables`], [`nftables`], [`ebpf`], [`none`].

pub mod ebpf;
pub mod iptables;
pub mod nftables;
pub mod none;

use crate::config::ProxyConfig;
use crate::error::{Error, Result};
use crate::exec::NetnsExec;
use crate::model::{ServiceKey, ServiceTable};
use std::fmt;
use std::str::FromStr;

pub use ebpf::{EbpfBackend, EbpfOptions};
pub use iptables::{IptablesBackend, IptablesMode};
pub use nftables::NftablesBackend;
pub use none::NoneBackend;

/// What one sync changed in the kernel; all zero means the dataplane already matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Service ports programmed, counted once per family (a dual-stack port counts twice).
    pub service_ports: usize,
    /// Chains (or maps, sets) written.
    pub chains_written: usize,
    /// Chains removed because nothing desired uses them any more.
    pub chains_deleted: usize,
    /// Rules written in the written chains.
    pub rules_written: usize,
    /// Hook rules (jumps from the kernel's own chains) added or removed.
    pub hooks_changed: usize,
    /// Kernel transactions made (e.g. `iptables-restore` runs).
    pub transactions: usize,
}

impl SyncStats {
    /// Nothing was changed.
    pub fn is_noop(&self) -> bool {
        self.chains_written == 0
            && self.chains_deleted == 0
            && self.hooks_changed == 0
            && self.transactions == 0
    }

    /// Adds another family's or pass's counts to these.
    pub fn add(&mut self, other: SyncStats) {
        self.service_ports += other.service_ports;
        self.chains_written += other.chains_written;
        self.chains_deleted += other.chains_deleted;
        self.rules_written += other.rules_written;
        self.hooks_changed += other.hooks_changed;
        self.transactions += other.transactions;
    }
}

/// A dataplane that makes the kernel forward service traffic as a [`ServiceTable`] says.
///
/// Implementations keep what they installed, so repeated syncs of the same table change nothing,
/// and must never disturb established connections (no flushing of conntrack-relevant state).
pub trait Backend: Send {
    /// The backend's name, as in config (`iptables`, …).
    fn name(&self) -> &'static str;

    /// Makes the kernel match `table` exactly: reconciles with what is installed (also by a
    /// previous process), writes what differs and removes what is no longer desired.
    fn sync(&mut self, table: &ServiceTable) -> Result<SyncStats>;

    /// Like [`Backend::sync`] but only the Services in `changed` (added, updated or removed)
    /// differ from the table of the previous sync; the rest is trusted to be in place. Falls
    /// back to a full sync when there is no previous sync.
    fn sync_changed(&mut self, table: &ServiceTable, changed: &[ServiceKey]) -> Result<SyncStats>;

    /// Removes everything this backend installs, also what a previous process left.
    fn cleanup(&mut self) -> Result<SyncStats>;

    /// Entries per kernel map the backend programs, as `(map, entries)`, for the metrics
    /// endpoint; empty for backends without maps of their own.
    fn map_entries(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
}

/// The dataplanes `netlet-proxy` can be configured with (also a `netlet-agent` config key, so
/// it is (de)serialized in the config spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// iptables rules through `iptables-restore` (nft or legacy variant).
    #[default]
    Iptables,
    /// Native nftables over netlink: a fixed table whose maps hold the services.
    Nftables,
    /// eBPF tc programs and maps (`netlet-ebpf`); ClusterIP only so far.
    Ebpf,
    /// Programs nothing: dry runs and tests.
    None,
}

impl BackendKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Ebpf => "ebpf",
            Self::None => "none",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "iptables" => Ok(Self::Iptables),
            "nftables" => Ok(Self::Nftables),
            "ebpf" => Ok(Self::Ebpf),
            "none" => Ok(Self::None),
            other => Err(Error::UnknownBackend(other.to_string())),
        }
    }
}

/// Which backend to build and where it acts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendConfig {
    /// The dataplane.
    pub kind: BackendKind,
    /// The namespace the backend programs (the current one in production).
    pub netns: NetnsExec,
    /// For `iptables`: which variant of the tools to use.
    pub iptables_mode: IptablesMode,
    /// For `ebpf`: state dir and interfaces.
    pub ebpf: EbpfOptions,
}

/// Builds the configured backend.
pub fn new_backend(cfg: &BackendConfig, proxy: &ProxyConfig) -> Result<Box<dyn Backend>> {
    match cfg.kind {
        BackendKind::Iptables => Ok(Box::new(IptablesBackend::new(
            proxy.clone(),
            cfg.netns.clone(),
            cfg.iptables_mode,
        )?)),
        BackendKind::Nftables => Ok(Box::new(NftablesBackend::new(proxy.clone(), &cfg.netns)?)),
        BackendKind::None => Ok(Box::new(NoneBackend::default())),
        BackendKind::Ebpf => Ok(Box::new(EbpfBackend::new(
            proxy.clone(),
            cfg.netns.clone(),
            cfg.ebpf.clone(),
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_unknown_ones_are_refused() {
        for k in ["iptables", "nftables", "ebpf", "none"] {
            assert_eq!(k.parse::<BackendKind>().unwrap().as_str(), k);
        }
        assert!(matches!(
            "ipvs".parse::<BackendKind>(),
            Err(Error::UnknownBackend(s)) if s == "ipvs"
        ));
        // nftables and ebpf are built too, but they touch the kernel: tested in namespaces
        // (tests/nftables_kernel.rs, tests/ebpf_traffic.rs).
        // ebpf touches nothing until its first sync (tests/ebpf_traffic.rs).
        let ebpf = BackendConfig {
            kind: BackendKind::Ebpf,
            ..Default::default()
        };
        assert_eq!(
            new_backend(&ebpf, &ProxyConfig::new("n")).unwrap().name(),
            "ebpf"
        );
        let none = BackendConfig {
            kind: BackendKind::None,
            ..Default::default()
        };
        assert_eq!(
            new_backend(&none, &ProxyConfig::new("n")).unwrap().name(),
            "none"
        );
    }
}
