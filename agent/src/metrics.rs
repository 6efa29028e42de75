//! The agent's Prometheus text: a few agent gauges plus the in-process service proxy's
//! counters, served by `netlet_proxy::metrics_http` on `metricsAddr`.

use netlet_proxy::sync_loop::SyncMetrics;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Everything the endpoint reports, read at scrape time.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// This agent's node name (a label of `netlet_agent_info`).
    pub node_name: String,
    /// Whether the agent runs in network-only mode (no pods of its own).
    pub network_only: bool,
    /// Pods the pod manager currently runs (its workers).
    pub managed_pods: Arc<AtomicUsize>,
    /// The service proxy's counters; `None` when the proxy is off.
    pub proxy: Option<Arc<SyncMetrics>>,
}

impl AgentMetrics {
    /// The Prometheus text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP netlet_agent_info The agent's node and mode.\n# TYPE netlet_agent_info gauge\n\
             netlet_agent_info{{node=\"{}\",network_only=\"{}\"}} 1",
            self.node_name, self.network_only
        );
        let _ = writeln!(
            out,
            "# HELP netlet_agent_pods_managed Pods bound to this node that the agent runs.\n\
             # TYPE netlet_agent_pods_managed gauge\nnetlet_agent_pods_managed {}",
            self.managed_pods.load(Ordering::Relaxed)
        );
        if let Some(proxy) = &self.proxy {
            out.push_str(&proxy.render_prometheus());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_gauges_and_proxy_counters_render() {
        let m = AgentMetrics {
            node_name: "n1".into(),
            network_only: false,
            managed_pods: Arc::new(AtomicUsize::new(3)),
            proxy: Some(Arc::default()),
        };
        let text = m.render();
        for line in [
            "netlet_agent_info{node=\"n1\",network_only=\"false\"} 1",
            "netlet_agent_pods_managed 3",
            "netlet_proxy_services_programmed 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        let off = AgentMetrics { proxy: None, ..m };
        assert!(!off.render().contains("netlet_proxy_"));
    }
}
