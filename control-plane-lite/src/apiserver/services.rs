//! Service IP and NodePort allocation, as the Kubernetes apiserver does it on Service writes.
//!
//! There is no separate allocation record: the stored Services are the only source of truth.
//! Every Service write takes the allocator's lock, scans the stored Services for the IPs and
//! ports in use, picks or checks its own, and writes while still holding the lock. So two
//! concurrent creates can never get the same IP or port, a delete frees its IP and ports just by
//! removing the Service, and nothing drifts across restarts. The price is one list of Services
//! per Service write, which is small next to the rest of a write at this control plane's scale.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

use rand::Rng;
use serde_json::{json, Value};

use super::error::{ApiError, FieldCause};
use super::object;
use super::path::collection_prefix;
use super::resources::find;
use crate::storage::Storage;

/// The lowest NodePort (Kubernetes' default `--service-node-port-range`).
pub const NODE_PORT_MIN: u16 = 30000;
/// The highest NodePort.
pub const NODE_PORT_MAX: u16 = 32767;

/// An IPv4 service CIDR, e.g. the default `10.96.0.0/12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    network: u32,
    prefix: u8,
}

/// A `--service-cidr` that is not an IPv4 CIDR with room for services.
#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    /// Not `a.b.c.d/n`.
    #[error("service CIDR {0:?} is not of the form a.b.c.d/n")]
    Syntax(String),
    /// The prefix leaves fewer than two addresses for services besides `kubernetes`.
    #[error("service CIDR {0:?} must have a prefix length between 8 and 29")]
    Prefix(String),
}

impl FromStr for ServiceCidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.into()))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        // Below /8 the random search would be slow to notice exhaustion; above /29 there is no
        // room for anything but the kubernetes Service.
        if !(8..=29).contains(&prefix) {
            return Err(CidrError::Prefix(s.into()));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceCidr {
            network: u32::from(ip) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl Default for ServiceCidr {
    fn default() -> Self {
        ServiceCidr {
            network: u32::from(Ipv4Addr::new(10, 96, 0, 0)),
            prefix: 12,
        }
    }
}

impl ServiceCidr {
    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The address reserved for the `kubernetes` Service in `default` (the first host).
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// Whether `ip` is a usable host address of the range (not network or broadcast).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.network && ip < self.network + self.size() - 1
    }
}

/// Serializes Service writes (see the module docs) for one service CIDR.
#[derive(Debug, Default)]
pub struct ServiceAllocator {
    cidr: ServiceCidr,
    lock: tokio::sync::Mutex<()>,
}

impl ServiceAllocator {
    /// An allocator over `cidr`.
    pub fn new(cidr: ServiceCidr) -> Self {
        ServiceAllocator {
            cidr,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The service CIDR.
    pub fn cidr(&self) -> ServiceCidr {
        self.cidr
    }

    /// Takes the lock, scans storage and fills or checks `new`'s IP and ports; the caller
    /// writes `new` before dropping the returned guard. `current` is the stored Service an
    /// update replaces (its own IP and ports do not count as taken).
    pub async fn allocate(
        &self,
        storage: &dyn Storage,
        current: Option<&Value>,
        new: &mut Value,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
        let guard = self.lock.lock().await;
        let exclude = new["metadata"]["uid"].as_str().map(str::to_string);
        let in_use = InUse::scan(storage, exclude.as_deref()).await?;
        assign(self.cidr, &in_use, current, new)?;
        Ok(guard)
    }
}

/// The cluster IPs and NodePorts of the stored Services.
#[derive(Debug, Default, Clone)]
pub struct InUse {
    /// Cluster IPs (headless and ExternalName Services have none).
    pub ips: HashSet<Ipv4Addr>,
    /// NodePorts.
    pub node_ports: HashSet<u16>,
}

impl InUse {
    /// Reads every stored Service but the one with uid `exclude`.
    pub async fn scan(storage: &dyn Storage, exclude: Option<&str>) -> Result<Self, ApiError> {
        let services = find("", "v1", "services").expect("services is in the table");
        let page = storage
            .list(&collection_prefix(services, None), None, 0, None)
            .await?;
        let mut in_use = InUse::default();
        for kv in &page.kvs {
            let svc = object::from_kv(kv)?;
            if exclude.is_some() && svc["metadata"]["uid"].as_str() == exclude {
                continue;
            }
            in_use.add(&svc);
        }
        Ok(in_use)
    }

    fn add(&mut self, svc: &Value) {
        if let Some(ip) = svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
        {
            self.ips.insert(ip);
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                self.node_ports.insert(np);
            }
        }
    }
}

fn invalid(svc: &Value, field: String, reason: &'static str, message: String) -> ApiError {
    ApiError::Invalid {
        group: "",
        kind: "Service",
        name: svc["metadata"]["name"].as_str().unwrap_or_default().into(),
        causes: vec![FieldCause {
            field,
            reason,
            message,
        }],
    }
}

/// Fills or checks `new`'s cluster IP and NodePorts against `in_use`, carrying `current`'s
/// allocations over on updates (as Kubernetes' `patchAllocatedValues` does).
pub fn assign(
    cidr: ServiceCidr,
    in_use: &InUse,
    current: Option<&Value>,
    new: &mut Value,
) -> Result<(), ApiError> {
    let ty = new["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    assign_ip(cidr, in_use, current, new, &ty)?;
    assign_node_ports(in_use, current, new, &ty)
}

fn assign_ip(
    cidr: ServiceCidr,
    in_use: &InUse,
    current: Option<&Value>,
    new: &mut Value,
    ty: &str,
) -> Result<(), ApiError> {
    let old_ip = current
        .and_then(|c| c["spec"]["clusterIP"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let spec = &mut new["spec"];
    // `clusterIPs[0]` stands in for an empty `clusterIP`, as in Kubernetes.
    let requested = [&spec["clusterIP"], &spec["clusterIPs"][0]]
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
        .map(str::to_string);
    if ty == "ExternalName" {
        if let Some(s) = spec.as_object_mut() {
            s.remove("clusterIP");
            s.remove("clusterIPs");
        }
        return Ok(());
    }
    let ip = match (requested, old_ip) {
        (Some(r), Some(o)) if r != o => {
            let field = "spec.clusterIPs[0]".to_string();
            let msg = format!("Invalid value: {:?}: field is immutable", r);
            return Err(invalid(new, field, "FieldValueInvalid", msg));
        }
        (Some(r), _) | (None, Some(r)) if r == "None" => r,
        (Some(r), Some(_)) => r,
        (None, Some(o)) => o,
        (Some(r), None) => {
            let field = "spec.clusterIPs[0]".to_string();
            let parsed: Option<Ipv4Addr> = r.parse().ok();
            let Some(addr) = parsed.filter(|a| cidr.contains(*a)) else {
                let msg = format!(
                    "Invalid value: {r:?}: provided IP is not in the valid range. The range of valid IPs is {cidr}"
                );
                return Err(invalid(new, field, "FieldValueInvalid", msg));
            };
            if in_use.ips.contains(&addr) {
                let msg = format!("Invalid value: {r:?}: provided IP is already allocated");
                return Err(invalid(new, field, "FieldValueInvalid", msg));
            }
            r
        }
        (None, None) => random_ip(cidr, in_use)
            .ok_or_else(|| {
                let msg = format!("failed to allocate a serviceIP: range {cidr} is full");
                invalid(new, "spec.clusterIPs".into(), "FieldValueInvalid", msg)
            })?
            .to_string(),
    };
    let spec = &mut new["spec"];
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if ip != "None" {
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    Ok(())
}

/// A random free host address, never the `kubernetes` one.
fn random_ip(cidr: ServiceCidr, in_use: &InUse) -> Option<Ipv4Addr> {
    let hosts = cidr.size() - 2;
    let free = |a: Ipv4Addr| !in_use.ips.contains(&a) && a != cidr.kubernetes_ip();
    let start = rand::rng().random_range(0..hosts);
    (0..hosts)
        .map(|i| Ipv4Addr::from(cidr.network + 1 + (start + i) % hosts))
        .find(|a| free(*a))
}

fn assign_node_ports(
    in_use: &InUse,
    current: Option<&Value>,
    new: &mut Value,
    ty: &str,
) -> Result<(), ApiError> {
    let wants = matches!(ty, "NodePort" | "LoadBalancer");
    let old_ports: Vec<Value> = current
        .and_then(|c| c["spec"]["ports"].as_array().cloned())
        .unwrap_or_default();
    let old_node_port = |p: &Value| -> Option<u64> {
        old_ports
            .iter()
            .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
            .and_then(|o| o["nodePort"].as_u64())
    };
    let mut taken: HashSet<u16> = in_use.node_ports.clone();
    let mut mine: Vec<(u16, Value)> = Vec::new();
    let ports = new["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::with_capacity(ports.len());
    for (i, mut p) in ports.into_iter().enumerate() {
        let field = format!("spec.ports[{i}].nodePort");
        let requested = p["nodePort"].as_u64().filter(|n| *n != 0);
        if !wants {
            match requested {
                // Left over from a NodePort type: released with the type change.
                Some(n) if Some(n) == old_node_port(&p) => {}
                Some(n) => {
                    let msg =
                        format!("Forbidden: may not be used when `type` is '{ty}' (port {n})");
                    return Err(invalid(new, field, "FieldValueForbidden", msg));
                }
                None => {}
            }
            if let Some(o) = p.as_object_mut() {
                o.remove("nodePort");
            }
            out.push(p);
            continue;
        }
        let port = match requested.or_else(|| old_node_port(&p)) {
            Some(n) => {
                let in_range = (u64::from(NODE_PORT_MIN)..=u64::from(NODE_PORT_MAX)).contains(&n);
                if !in_range {
                    let msg = format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}");
                    return Err(invalid(new, field, "FieldValueInvalid", msg));
                }
                let n = n as u16;
                let shared = mine
                    .iter()
                    .any(|(m, proto)| *m == n && *proto != p["protocol"]);
                if mine
                    .iter()
                    .any(|(m, proto)| *m == n && *proto == p["protocol"])
                {
                    let msg = format!("Duplicate value: {n}");
                    return Err(invalid(new, field, "FieldValueDuplicate", msg));
                }
                if taken.contains(&n) && !shared {
                    let msg = format!("Invalid value: {n}: provided port is already allocated");
                    return Err(invalid(new, field, "FieldValueInvalid", msg));
                }
                n
            }
            None => random_node_port(&taken).ok_or_else(|| {
                let msg = format!(
                    "failed to allocate a nodePort: range {NODE_PORT_MIN}-{NODE_PORT_MAX} is full"
                );
                invalid(new, field.clone(), "FieldValueInvalid", msg)
            })?,
        };
        taken.insert(port);
        mine.push((port, p["protocol"].clone()));
        p["nodePort"] = json!(port);
        out.push(p);
    }
    if new["spec"]["ports"].is_array() {
        new["spec"]["ports"] = Value::Array(out);
    }
    Ok(())
}

fn random_node_port(taken: &HashSet<u16>) -> Option<u16> {
    let span = NODE_PORT_MAX - NODE_PORT_MIN + 1;
    let start = rand::rng().random_range(0..span);
    (0..span)
        .map(|i| NODE_PORT_MIN + (start + i) % span)
        .find(|p| !taken.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ty: &str, ip: Option<&str>, node_port: Option<u16>) -> Value {
        let mut s = json!({"metadata": {"name": "s", "uid": "u1"},
            "spec": {"type": ty, "ports": [{"port": 80, "protocol": "TCP"}]}});
        if let Some(ip) = ip {
            s["spec"]["clusterIP"] = json!(ip);
        }
        if let Some(np) = node_port {
            s["spec"]["ports"][0]["nodePort"] = json!(np);
        }
        s
    }

    #[test]
    fn cidr_parsing() {
        let c: ServiceCidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(c, ServiceCidr::default());
        assert_eq!(c.kubernetes_ip(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 112, 0, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 96, 0, 0)));
        assert_eq!(
            "10.0.0.7/24".parse::<ServiceCidr>().unwrap().to_string(),
            "10.0.0.0/24"
        );
        assert!("10.0.0.0".parse::<ServiceCidr>().is_err());
        assert!("10.0.0.0/31".parse::<ServiceCidr>().is_err());
    }

    #[test]
    fn allocates_fresh_and_requested_ips() {
        let cidr: ServiceCidr = "10.0.0.0/29".parse().unwrap();
        let mut in_use = InUse::default();
        // Hosts .1 to .6; .1 is never handed out at random.
        let mut seen = HashSet::new();
        for _ in 0..5 {
            let mut s = svc("ClusterIP", None, None);
            assign(cidr, &in_use, None, &mut s).unwrap();
            let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
            assert_ne!(ip, cidr.kubernetes_ip());
            assert!(seen.insert(ip));
            in_use.ips.insert(ip);
            assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
        }
        let err = assign(cidr, &in_use, None, &mut svc("ClusterIP", None, None)).unwrap_err();
        assert!(err.to_string().contains("is full"), "{err}");
        let mut k = svc("ClusterIP", Some("10.0.0.1"), None);
        assign(cidr, &in_use, None, &mut k).unwrap();
        let taken = seen.iter().next().unwrap().to_string();
        let err = assign(
            cidr,
            &in_use,
            None,
            &mut svc("ClusterIP", Some(&taken), None),
        )
        .unwrap_err();
        assert_eq!(err.code(), 422);
        assert!(
            err.to_string().contains("provided IP is already allocated"),
            "{err}"
        );
        let err = assign(
            cidr,
            &in_use,
            None,
            &mut svc("ClusterIP", Some("10.1.0.1"), None),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not in the valid range"), "{err}");
        let mut by_list = svc("ClusterIP", None, None);
        by_list["spec"]["clusterIPs"] = json!(["10.0.0.1"]);
        assign(cidr, &in_use, None, &mut by_list).unwrap();
        assert_eq!(by_list["spec"]["clusterIP"], "10.0.0.1");
        let mut headless = svc("ClusterIP", Some("None"), None);
        assign(cidr, &in_use, None, &mut headless).unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[test]
    fn updates_keep_allocations_and_type_changes_release_node_ports() {
        let cidr = ServiceCidr::default();
        let in_use = InUse::default();
        let mut np = svc("NodePort", None, None);
        assign(cidr, &in_use, None, &mut np).unwrap();
        let port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&port));
        // A PUT without the allocated values keeps them.
        let mut put = svc("NodePort", None, None);
        assign(cidr, &in_use, Some(&np), &mut put).unwrap();
        assert_eq!(put["spec"]["clusterIP"], np["spec"]["clusterIP"]);
        assert_eq!(put["spec"]["ports"][0]["nodePort"], port);
        // Changing the IP is refused.
        let mut moved = svc("NodePort", Some("10.96.0.9"), None);
        assert!(assign(cidr, &in_use, Some(&np), &mut moved).is_err());
        // Back to ClusterIP: the node port goes.
        let mut back = np.clone();
        back["spec"]["type"] = json!("ClusterIP");
        assign(cidr, &in_use, Some(&np), &mut back).unwrap();
        assert!(back["spec"]["ports"][0].get("nodePort").is_none());
        // A node port on a ClusterIP Service is refused.
        let err = assign(
            cidr,
            &in_use,
            None,
            &mut svc("ClusterIP", None, Some(30001)),
        )
        .unwrap_err();
        assert_eq!(err.code(), 422);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_never_share_an_ip_or_port_and_deletes_free_them() {
        use crate::apiserver::deletion::{delete, DeleteOptions};
        use crate::apiserver::path::Target;
        use crate::apiserver::strict::FieldValidation;
        use crate::apiserver::write::{create, WriteOptions};
        use crate::storage::MemoryStorage;
        use std::sync::Arc;

        let storage = Arc::new(MemoryStorage::new());
        crate::apiserver::ensure_system_namespaces(storage.as_ref(), "CA")
            .await
            .unwrap();
        // A /28 has 13 addresses besides the kubernetes one: 12 Services fit with room for
        // exactly one more, so any double allocation shows up as a missing or duplicate IP.
        let alloc = Arc::new(ServiceAllocator::new("10.0.0.0/28".parse().unwrap()));
        let t = Target {
            resource: find("", "v1", "services").unwrap(),
            namespace: Some("default".into()),
            name: None,
            subresource: None,
            watch_path: false,
        };
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (storage, alloc, t) = (Arc::clone(&storage), Arc::clone(&alloc), t.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("s{i}")},
                    "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
                let opts = WriteOptions {
                    validation: FieldValidation::Strict,
                    dry_run: false,
                    services: Some(alloc.as_ref()),
                    root_ca: None,
                };
                create(storage.as_ref(), &t, body, opts).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let in_use = InUse::scan(storage.as_ref(), None).await.unwrap();
        assert_eq!(in_use.ips.len(), 12);
        assert_eq!(in_use.node_ports.len(), 12);
        // A fresh allocator (a restart) sees the same state in storage.
        let restarted = ServiceAllocator::new(alloc.cidr());
        let opts = WriteOptions {
            validation: FieldValidation::Strict,
            dry_run: false,
            services: Some(&restarted),
            root_ca: None,
        };
        let page = storage.list("/registry/services/default/s", None, 1, None);
        let first = object::from_kv(&page.await.unwrap().kvs[0]).unwrap();
        let victim = first["metadata"]["name"].as_str().unwrap().to_string();
        let taken = first["spec"]["clusterIP"].as_str().unwrap().to_string();
        let again = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "again"},
            "spec": {"clusterIP": taken, "ports": [{"port": 80}]}});
        let err = create(storage.as_ref(), &t, again.clone(), opts)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already allocated"), "{err}");
        let one = Target {
            name: Some(victim.clone()),
            ..t.clone()
        };
        delete(
            storage.as_ref(),
            &one,
            &victim,
            &DeleteOptions::default(),
            false,
        )
        .await
        .unwrap();
        create(storage.as_ref(), &t, again, opts).await.unwrap();
    }

    #[test]
    fn node_port_conflicts() {
        let cidr = ServiceCidr::default();
        let mut in_use = InUse::default();
        in_use.node_ports.insert(30080);
        let err = assign(cidr, &in_use, None, &mut svc("NodePort", None, Some(30080))).unwrap_err();
        assert!(
            err.to_string()
                .contains("provided port is already allocated"),
            "{err}"
        );
        let err = assign(
            cidr,
            &in_use,
            None,
            &mut svc("LoadBalancer", None, Some(80)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("valid range"), "{err}");
        let mut two = svc("NodePort", None, Some(30081));
        two["spec"]["ports"] = json!([
            {"port": 53, "protocol": "TCP", "nodePort": 30081},
            {"port": 53, "protocol": "UDP", "nodePort": 30081},
        ]);
        assign(cidr, &in_use, None, &mut two).unwrap();
        two["spec"]["ports"][1]["protocol"] = json!("TCP");
        assert!(assign(cidr, &in_use, None, &mut two).is_err());
    }
}
