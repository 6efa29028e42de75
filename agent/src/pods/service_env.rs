//! The Service environment variables of containers, as the kubelet sets them:
//! `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT NAME>]` and the Docker-link
//! `<NAME>_PORT…` variables, for every Service with a cluster IP in the pod's namespace (unless
//! the pod sets `enableServiceLinks: false`) and always for `kubernetes` in `default`. That
//! last pair is how in-cluster clients (client-go, kube-rs) find the apiserver.
//!
//! Services come from one reflector over all namespaces, so a container start costs no API
//! request. Until its first list is done, containers wait (as the kubelet makes them wait)
//! rather than start without the variables; static pods do not wait.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::env::EnvError;
use super::static_pods::is_static;

/// How long a container start waits for the first Service list.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// The Services of the cluster, kept current by a watch.
#[derive(Clone)]
pub struct ServiceEnv {
    store: Store<Service>,
}

impl ServiceEnv {
    /// Starts watching Services through `client` until `cancel` fires.
    pub fn spawn(client: Client, cancel: CancellationToken) -> Self {
        let (store, writer) = reflector::store::<Service>();
        let api: Api<Service> = Api::all(client);
        tokio::spawn(async move {
            let events =
                reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
            let mut events = std::pin::pin!(events);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    ev = events.next() => match ev {
                        None => return,
                        Some(Err(e)) => tracing::warn!("watching Services for container env: {e}"),
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
        ServiceEnv { store }
    }

    /// The Service variables of `pod`'s containers. Static pods, which must start while the
    /// apiserver is away, get what is known instead of waiting.
    pub async fn vars(&self, pod: &Pod) -> Result<Vec<(String, String)>, EnvError> {
        if !is_static(pod)
            && tokio::time::timeout(SYNC_WAIT, self.store.wait_until_ready())
                .await
                .is_err()
        {
            return Err(EnvError::ServicesNotSynced);
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let services: Vec<Arc<Service>> = self.store.state();
        Ok(vars_for(services.iter().map(|s| s.as_ref()), ns, links))
    }
}

/// `my-svc` → `MY_SVC`.
fn env_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

/// The variables of `services` for a pod in `ns`, sorted by name.
pub fn vars_for<'a>(
    services: impl Iterator<Item = &'a Service>,
    ns: &str,
    links: bool,
) -> Vec<(String, String)> {
    // As the kubelet does: a Service of the pod's namespace wins over the apiserver's
    // `kubernetes` Service of the same name.
    let mut chosen: std::collections::BTreeMap<&str, &Service> = Default::default();
    let mut master = None;
    for svc in services {
        let svc_ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        if svc_ns == ns && links {
            chosen.insert(name, svc);
        } else if svc_ns == "default" && name == "kubernetes" {
            master = Some(svc);
        }
    }
    if let Some(m) = master {
        chosen.entry("kubernetes").or_insert(m);
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        let prefix = env_name(name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        for (i, p) in ports.iter().enumerate() {
            let port = p.port.to_string();
            if i == 0 {
                out.push((format!("{prefix}_SERVICE_PORT"), port.clone()));
            }
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(n)),
                    port.clone(),
                ));
            }
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let lower = proto.to_lowercase();
            let host_port = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            let url = format!("{lower}://{host_port}");
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{port}_{}", proto.to_uppercase());
            out.push((format!("{pp}_PROTO"), lower));
            out.push((format!("{pp}_PORT"), port));
            out.push((format!("{pp}_ADDR"), ip.to_string()));
            out.push((pp, url));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .unwrap()
    }

    #[test]
    fn kubelet_style_variables() {
        let services = [
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                serde_json::json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
            ),
            svc(
                "app",
                "my-db",
                "10.96.0.9",
                serde_json::json!([{"name": "pg", "port": 5432}, {"port": 53, "protocol": "UDP"}]),
            ),
            svc("app", "headless", "None", serde_json::json!([{"port": 80}])),
            svc(
                "other",
                "web",
                "10.96.0.7",
                serde_json::json!([{"port": 80}]),
            ),
        ];
        let vars = vars_for(services.iter(), "app", true);
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{k} missing from {vars:?}"))
        };
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), "10.96.0.1");
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), "443");
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), "443");
        assert_eq!(get("KUBERNETES_PORT"), "tcp://10.96.0.1:443");
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), "10.96.0.1");
        assert_eq!(get("MY_DB_SERVICE_HOST"), "10.96.0.9");
        assert_eq!(get("MY_DB_SERVICE_PORT"), "5432");
        assert_eq!(get("MY_DB_SERVICE_PORT_PG"), "5432");
        assert_eq!(get("MY_DB_PORT_53_UDP"), "udp://10.96.0.9:53");
        assert_eq!(get("MY_DB_PORT_53_UDP_PROTO"), "udp");
        assert!(!vars
            .iter()
            .any(|(n, _)| n.starts_with("HEADLESS_") || n.starts_with("WEB_")));

        // Without service links only the apiserver's variables remain.
        let vars = vars_for(services.iter(), "app", false);
        assert!(
            vars.iter().all(|(n, _)| n.starts_with("KUBERNETES_")),
            "{vars:?}"
        );
        assert_eq!(vars.len(), 8);
    }
}
