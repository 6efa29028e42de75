//! Starting a proxy from node settings: the one place that turns a [`BackendKind`] and a
//! [`ProxyConfig`] into a ready [`ProxySyncer`], shared by the `netlet-proxy` binary and
//! `netlet-agent` (which runs the proxy in-process), so both build backends the same way.

use crate::backend::{new_backend, BackendConfig, BackendKind, EbpfOptions, IptablesMode};
use crate::config::ProxyConfig;
use crate::conntrack::NetlinkConntrack;
use crate::error::Result;
use crate::health_check::HealthCheckServer;
use crate::model::IpFamily;
use crate::sync_loop::ProxySyncer;

/// The backend config a daemon uses: the current network namespace, for iptables the tool
/// variant (nft or legacy) detected from what the node already uses, and for eBPF `ebpf`.
pub fn backend_config(kind: BackendKind, ebpf: EbpfOptions) -> BackendConfig {
    BackendConfig {
        kind,
        iptables_mode: IptablesMode::Auto,
        ebpf,
        ..BackendConfig::default()
    }
}

/// Makes `proxy` dual-stack when it was told about IPv6 node addresses or pod networks
/// (IPv4 only otherwise), so a single-stack node does not program an empty IPv6 table.
pub fn with_families_from_addresses(mut proxy: ProxyConfig) -> ProxyConfig {
    let v6 = proxy.node_ips.iter().any(|ip| ip.is_ipv6())
        || proxy.cluster_cidrs.iter().any(|n| n.is_ipv6());
    proxy.families = if v6 {
        vec![IpFamily::V4, IpFamily::V6]
    } else {
        vec![IpFamily::V4]
    };
    proxy
}

/// Builds the backend `cfg` describes for `proxy` (families derived from its addresses) and
/// the syncer that drives it (with UDP conntrack cleanup in the backend's namespace for the
/// backends that NAT through conntrack, and the health check node port server when called
/// inside a tokio runtime); run it with [`crate::sync_loop::run`].
pub fn new_syncer(cfg: &BackendConfig, proxy: ProxyConfig) -> Result<ProxySyncer> {
    let proxy = with_families_from_addresses(proxy);
    let backend = new_backend(cfg, &proxy)?;
    let mut syncer = ProxySyncer::new(backend, proxy);
    // Daemons build the syncer inside their runtime, which then serves the health checks.
    if let (Ok(runtime), false) = (
        tokio::runtime::Handle::try_current(),
        cfg.kind == BackendKind::None,
    ) {
        syncer = syncer.with_health_check(HealthCheckServer::new(cfg.netns.clone(), runtime));
    }
    Ok(match cfg.kind {
        // These NAT through the kernel's conntrack, whose UDP entries outlive endpoints.
        BackendKind::Iptables | BackendKind::Nftables => {
            syncer.with_conntrack(Box::new(NetlinkConntrack::new(cfg.netns.clone())))
        }
        BackendKind::Ebpf | BackendKind::None => syncer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_the_addresses_and_none_builds_without_a_kernel() {
        let mut p = ProxyConfig::new("n");
        p.node_ips = vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(
            with_families_from_addresses(p.clone()).families,
            [IpFamily::V4]
        );
        p.cluster_cidrs = vec!["fd00::/64".parse().unwrap()];
        assert_eq!(
            with_families_from_addresses(p.clone()).families,
            [IpFamily::V4, IpFamily::V6]
        );
        let cfg = backend_config(BackendKind::Nftables, EbpfOptions::default());
        assert_eq!(cfg.kind, BackendKind::Nftables);
        let none = backend_config(BackendKind::None, EbpfOptions::default());
        assert!(new_syncer(&none, p).is_ok());
    }
}
