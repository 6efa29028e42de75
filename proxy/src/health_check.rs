//! The health check node port server of LoadBalancer Services with `externalTrafficPolicy:
//! Local`, as kube-proxy's: cloud load balancers probe `http://NODE:healthCheckNodePort/` on
//! every node and send traffic only to the nodes that answer 200, i.e. those with local ready
//! endpoints (others answer 503), so the client's source address can be kept without ever
//! landing on a node that would have to drop it.
//!
//! [`desired`] is the pure part (table → port → status); [`HealthCheckServer`] keeps one
//! listener per port in the proxy's namespace, opened and closed as syncs change the table.
//! It does not depend on the backend: every dataplane gets the same server from the sync loop.

use crate::error::{Error, Result};
use crate::exec::NetnsExec;
use crate::model::{ServiceKey, ServiceTable};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The Service the port belongs to.
    pub service: ServiceKey,
    /// Distinct ready endpoint addresses of the Service on this node.
    pub local_endpoints: usize,
}

/// The health check ports `table` asks for and what each reports.
pub fn desired(table: &ServiceTable) -> BTreeMap<u16, Status> {
    table
        .health_check_node_ports()
        .iter()
        .map(|(key, port)| {
            let ips: BTreeSet<IpAddr> = table
                .ports_of(key)
                .flat_map(|p| &p.endpoints)
                .filter(|e| e.local && e.ready)
                .map(|e| e.ip)
                .collect();
            let status = Status {
                service: key.clone(),
                local_endpoints: ips.len(),
            };
            (*port, status)
        })
        .collect()
}

/// The full HTTP answer for a port's status: 200 with local endpoints, 503 without (or when
/// the port no longer belongs to a Service).
pub fn response(status: Option<&Status>) -> String {
    let n = status.map_or(0, |s| s.local_endpoints);
    let (code, reason) = if n > 0 {
        (200, "OK")
    } else {
        (503, "Service Unavailable")
    };
    let service = status.map_or(
        serde_json::Value::Null,
        |s| serde_json::json!({"namespace": s.service.namespace, "name": s.service.name}),
    );
    let body = serde_json::json!({
        "service": service,
        "localEndpoints": n,
        "serviceProxyHealthy": true,
    })
    .to_string();
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n\
         X-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {n}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

type Statuses = Arc<Mutex<BTreeMap<u16, Status>>>;

/// Listeners for the health check node ports, in one network namespace, served on a tokio
/// runtime. Dropping it closes every port.
pub struct HealthCheckServer {
    netns: NetnsExec,
    runtime: tokio::runtime::Handle,
    statuses: Statuses,
    listeners: BTreeMap<u16, Listener>,
}

/// A served port: the accept task and a handle on its socket to close it at once (aborting
/// the task drops the socket only when the runtime gets to it; a probe arriving in between
/// would be accepted and reset instead of refused).
struct Listener {
    task: tokio::task::JoinHandle<()>,
    socket: std::net::TcpListener,
}

impl Listener {
    fn close(&self) {
        use std::os::fd::AsRawFd;
        // Shutting a listening socket down stops it listening (Linux); the task then ends.
        let _ =
            nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        self.task.abort();
    }
}

impl std::fmt::Debug for HealthCheckServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheckServer")
            .field("netns", &self.netns)
            .field("ports", &self.listeners.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl HealthCheckServer {
    /// A server listening in `netns` (the proxy's own in production), serving on `runtime`.
    pub fn new(netns: NetnsExec, runtime: tokio::runtime::Handle) -> Self {
        Self {
            netns,
            runtime,
            statuses: Arc::default(),
            listeners: BTreeMap::new(),
        }
    }

    /// The ports listened on.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    /// Opens the ports `table` asks for, closes the others and updates what each reports.
    /// A port that cannot be opened (in use) is reported in the error and retried at the
    /// next sync; the others are served regardless.
    pub fn sync(&mut self, table: &ServiceTable) -> Result<()> {
        let want = desired(table);
        *self.statuses.lock().expect("health statuses lock") = want.clone();
        self.listeners.retain(|port, listener| {
            let keep = want.contains_key(port);
            if !keep {
                listener.close();
            }
            keep
        });
        let mut first_error = None;
        for (port, status) in &want {
            if self.listeners.contains_key(port) {
                continue;
            }
            match self.listen(*port, &status.service) {
                Ok((listener, socket)) => {
                    let statuses = self.statuses.clone();
                    let task = self.runtime.spawn(serve(listener, *port, statuses));
                    self.listeners.insert(*port, Listener { task, socket });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "opening a health check node port");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A listener on every address of the namespace: dual-stack, or IPv4 where the namespace
    /// has no IPv6.
    /// Also returns a second handle on the socket, for [`Listener::close`].
    fn listen(
        &self,
        port: u16,
        service: &ServiceKey,
    ) -> Result<(tokio::net::TcpListener, std::net::TcpListener)> {
        let err = |source| Error::HealthCheckListen {
            port,
            service: service.to_string(),
            source,
        };
        let std_listener = self.netns.enter(|| {
            let any6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
            let any4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            std::net::TcpListener::bind(any6)
                .or_else(|_| std::net::TcpListener::bind(any4))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(err)
        })?;
        let socket = std_listener.try_clone().map_err(err)?;
        let _guard = self.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(err)?;
        Ok((listener, socket))
    }
}

impl Drop for HealthCheckServer {
    fn drop(&mut self) {
        for listener in self.listeners.values() {
            listener.close();
        }
    }
}

/// Accepts probes on one port until aborted; each gets the port's current status.
async fn serve(listener: tokio::net::TcpListener, port: u16, statuses: Statuses) {
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(port, error = %e, "accepting a health check probe");
                // Out of descriptors and the like: let them free up instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let statuses = statuses.clone();
        tokio::spawn(async move {
            // Read the request head (its content does not matter), bounded in size and time.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            });
            if read.await.is_err() {
                return;
            }
            let status = statuses
                .lock()
                .expect("health statuses lock")
                .get(&port)
                .cloned();
            let _ = conn.write_all(response(status.as_ref()).as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn table(health_port: u16, eps: &[(&str, &str, bool)]) -> ServiceTable {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": health_port,
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}
        }))
        .unwrap();
        let endpoints: Vec<_> = eps
            .iter()
            .map(|(ip, node, ready)| {
                json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}})
            })
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": endpoints,
        }))
        .unwrap();
        ServiceTable::build(&[svc], &[slice], &ProxyConfig::new("n1"))
    }

    #[test]
    fn counts_ready_local_addresses_once_across_ports() {
        let t = table(
            32000,
            &[
                ("10.244.1.2", "n1", true),
                ("10.244.1.3", "n1", false),
                ("10.244.2.2", "n2", true),
            ],
        );
        let d = desired(&t);
        assert_eq!(
            d,
            BTreeMap::from([(
                32000,
                Status {
                    service: ServiceKey::new("default", "web"),
                    local_endpoints: 1
                }
            )])
        );
    }

    #[test]
    fn answers_200_with_local_endpoints_and_503_without() {
        let ok = response(desired(&table(32000, &[("10.244.1.2", "n1", true)])).get(&32000));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let body = ok.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["localEndpoints"], 1);
        assert_eq!(v["service"]["name"], "web");
        assert!(ok.contains(&format!("Content-Length: {}\r\n", body.len())));
        let none = response(desired(&table(32000, &[("10.244.2.2", "n2", true)])).get(&32000));
        assert!(none.starts_with("HTTP/1.1 503 "), "{none}");
        let body = none.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["localEndpoints"], 0, "{none}");
        assert_eq!(v["serviceProxyHealthy"], true, "{none}");
    }
}
