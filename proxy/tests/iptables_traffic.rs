//! Real traffic through the iptables backend: the conformance suite, run once with the
//! nf_tables variant of the tools and once with the legacy one, each case in its own
//! namespaces (see `conformance/topology.rs`). Needs root; never touches the host namespace.

#[macro_use]
mod conformance;

use conformance::Harness;
use integration::NetNs;
use netlet_proxy::backend::{IptablesBackend, IptablesMode};
use netlet_proxy::{Backend, NetnsExec, ProxyConfig};

fn make(ns: &NetNs, cfg: &ProxyConfig, mode: IptablesMode) -> Box<dyn Backend> {
    let netns = NetnsExec::Named(ns.name().to_string());
    Box::new(IptablesBackend::new(cfg.clone(), netns, mode).expect("iptables backend"))
}

fn leftovers(ns: &NetNs, save: &str) -> Vec<String> {
    ns.run_ok(save, &[])
        .lines()
        .filter(|l| l.contains("NETLET"))
        .map(String::from)
        .collect()
}

mod nft {
    use super::*;

    fn harness() -> Harness {
        Harness {
            caps: crate::conformance::Capabilities::ALL,
            make: |ns, cfg| make(ns, cfg, IptablesMode::Nft),
            leftovers: |ns| leftovers(ns, "iptables-nft-save"),
        }
    }

    conformance_suite!(harness());

    #[test]
    fn udp_flow_moves_off_a_removed_endpoint() {
        crate::conformance::conntrack::udp_flow_moves_off_a_removed_endpoint(&harness());
    }

    #[test]
    fn health_check_node_port_reports_local_endpoints() {
        crate::conformance::health_check::health_check_node_port_reports_local_endpoints(&harness());
    }
}

mod legacy {
    use super::*;

    fn harness() -> Harness {
        Harness {
            caps: crate::conformance::Capabilities::ALL,
            make: |ns, cfg| make(ns, cfg, IptablesMode::Legacy),
            leftovers: |ns| leftovers(ns, "iptables-legacy-save"),
        }
    }

    conformance_suite!(harness());

    #[test]
    fn udp_flow_moves_off_a_removed_endpoint() {
        crate::conformance::conntrack::udp_flow_moves_off_a_removed_endpoint(&harness());
    }

    #[test]
    fn health_check_node_port_reports_local_endpoints() {
        crate::conformance::health_check::health_check_node_port_reports_local_endpoints(&harness());
    }
}
