//! The service proxy inside the agent: `netlet-proxy`'s sync loop, run in the agent's network
//! namespace (the node's), configured from the agent's own settings. Its rules outlive the
//! agent (a restart reconciles them, as `netlet-proxy` does); `proxyBackend: none` turns it off.

use crate::config::AgentConfig;
use ipnetwork::IpNetwork;
use netlet_proxy::backend::EbpfOptions;
use netlet_proxy::sync_loop::{self, ProxySyncer};
use netlet_proxy::watch::WatchConfig;
use netlet_proxy::{setup, BackendKind, ProxyConfig};
use std::net::Ipv4Addr;
use tokio_util::sync::CancellationToken;

/// What the proxy is told about this node: its name (local endpoints), its IP (the address
/// NodePorts answer on) and the pod network (traffic from elsewhere is masqueraded).
pub fn proxy_config(cfg: &AgentConfig, node_ip: Ipv4Addr) -> ProxyConfig {
    let mut p = ProxyConfig::new(cfg.node_name.clone());
    p.node_ips = vec![node_ip.into()];
    p.cluster_cidrs = vec![IpNetwork::V4(cfg.cluster_cidr)];
    p
}

/// Builds the configured backend (so a kernel that refuses it stops the agent at start-up,
/// not later); `None` when the proxy is off. `uplink` is the interface holding the node IP.
pub fn new_syncer(
    cfg: &AgentConfig,
    node_ip: Ipv4Addr,
    uplink: Option<&str>,
) -> Result<Option<ProxySyncer>, netlet_proxy::Error> {
    if cfg.proxy_backend == BackendKind::None {
        return Ok(None);
    }
    let backend = setup::backend_config(cfg.proxy_backend, ebpf_options(cfg, uplink));
    setup::new_syncer(&backend, proxy_config(cfg, node_ip)).map(Some)
}

/// The eBPF backend keeps its pinned maps below the agent's state dir and attaches to the
/// pods' host-side veths and to the uplink (off-cluster clients, node ports); it masquerades
/// to the pod bridge's address, which it finds inside the cluster CIDR.
fn ebpf_options(cfg: &AgentConfig, uplink: Option<&str>) -> EbpfOptions {
    let mut ebpf = EbpfOptions {
        state_dir: cfg.state_dir.join("proxy-ebpf"),
        ..EbpfOptions::default()
    };
    ebpf.interfaces.extend(uplink.map(str::to_owned));
    ebpf
}

/// Keeps the backend in step with Services and EndpointSlices until `cancel` fires; the rules
/// stay in place afterwards.
pub async fn run(client: kube::Client, syncer: ProxySyncer, cancel: CancellationToken) {
    match sync_loop::run(client, syncer, WatchConfig::default(), cancel).await {
        Ok(_) => tracing::info!("service proxy stopped (rules left in place)"),
        Err(e) => tracing::error!(error = %e, "the service proxy stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_gets_the_node_facts_and_none_is_off() {
        let cfg = AgentConfig {
            node_name: "n1".into(),
            cluster_cidr: "10.8.0.0/16".parse().unwrap(),
            ..AgentConfig::default()
        };
        let p = proxy_config(&cfg, Ipv4Addr::new(192, 0, 2, 4));
        assert_eq!(p.node_name, "n1");
        assert_eq!(
            p.node_ips,
            ["192.0.2.4".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            p.cluster_cidrs,
            ["10.8.0.0/16".parse::<IpNetwork>().unwrap()]
        );
        let off = AgentConfig {
            proxy_backend: BackendKind::None,
            ..cfg
        };
        assert!(new_syncer(&off, Ipv4Addr::new(192, 0, 2, 4), None)
            .unwrap()
            .is_none());
        let ebpf = ebpf_options(&off, Some("eth0"));
        assert_eq!(ebpf.interfaces, ["veth*", "eth0"]);
        assert!(ebpf.state_dir.ends_with("proxy-ebpf"));
    }

    #[test]
    fn ebpf_attaches_to_the_veths_netlet_cni_creates() {
        let veth = netlet_cni::naming::host_veth("netlet", "0123abcd", "eth0");
        let opts = EbpfOptions::default();
        assert!(opts.matches_interface(&veth), "{veth} vs {opts:?}");
        assert!(!opts.matches_interface("eth0"));
    }
}
