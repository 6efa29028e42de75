//! Objects every cluster starts with: the `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` namespaces (kubectl uses `default` when no namespace is given; agents put
//! their Leases in `kube-node-lease`), and the `kubernetes` Service in `default` with the
//! Endpoints and EndpointSlice that point in-cluster clients at this apiserver.

use serde_json::json;

use std::net::IpAddr;

use serde_json::Value;

use super::deletion::is_deleting;
use super::error::ApiError;
use super::namespaces;
use super::object;
use super::path::collection_prefix;
use super::path::Target;
use super::read::get_object;
use super::resources::{find, namespaces};
use super::services::ServiceAllocator;
use super::strict::FieldValidation;
use super::write::{self, WriteOptions};
use crate::storage::Storage;

/// The namespaces created at startup.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the system namespaces that do not exist yet, and gives every namespace its default
/// ServiceAccount and a `kube-root-ca.crt` ConfigMap holding `root_ca` (idempotent; run at
/// every start, so namespaces from before either existed, or from another CA, catch up).
pub async fn ensure_system_namespaces(
    storage: &dyn Storage,
    root_ca: &str,
) -> Result<(), ApiError> {
    let target = Target {
        resource: namespaces(),
        namespace: None,
        name: None,
        subresource: None,
        watch_path: false,
    };
    let opts = WriteOptions {
        validation: FieldValidation::Strict,
        dry_run: false,
        services: None,
        root_ca: Some(root_ca),
    };
    for name in SYSTEM_NAMESPACES {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match write::create(storage, &target, ns, opts).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    let all = storage
        .list(&collection_prefix(namespaces(), None), None, 0, None)
        .await?;
    for kv in &all.kvs {
        let ns = object::from_kv(kv)?;
        if is_deleting(&ns) {
            continue;
        }
        let name = ns["metadata"]["name"].as_str().unwrap_or_default();
        let epoch = namespaces::termination_epoch();
        namespaces::ensure_namespace_defaults(storage, name, epoch, Some(root_ca)).await?;
    }
    Ok(())
}

fn target(group: &str, plural: &str, namespace: &str) -> Target {
    Target {
        resource: find(group, "v1", plural).expect("bootstrap kinds are in the table"),
        namespace: Some(namespace.into()),
        name: None,
        subresource: None,
        watch_path: false,
    }
}

/// Creates or reconciles the `kubernetes` Service in `default` (the first address of the
/// service CIDR, port 443 to this apiserver's port) and points its Endpoints and EndpointSlice
/// at `host:port`, updated when the apiserver moved (e.g. a `--port 0` restart). Run at every
/// start.
pub async fn ensure_kubernetes_service(
    storage: &dyn Storage,
    services: &ServiceAllocator,
    host: IpAddr,
    port: u16,
) -> Result<(), ApiError> {
    let opts = WriteOptions {
        validation: FieldValidation::Strict,
        dry_run: false,
        services: Some(services),
        root_ca: None,
    };
    let labels = json!({"component": "apiserver", "provider": "kubernetes"});
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": services.cidr().kubernetes_ip().to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
        },
    });
    upsert(storage, &target("", "services", "default"), svc, opts).await?;
    let ip = host.to_string();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{
            "addresses": [{"ip": ip}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }],
    });
    upsert(
        storage,
        &target("", "endpoints", "default"),
        endpoints,
        opts,
    )
    .await?;
    let family = if host.is_ipv4() { "IPv4" } else { "IPv6" };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": family,
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    upsert(
        storage,
        &target("discovery.k8s.io", "endpointslices", "default"),
        slice,
        opts,
    )
    .await
}

/// Creates `object`, or replaces the stored one's content (all but metadata) when it differs.
///
/// The stored object is read first rather than relying on the create's AlreadyExists: a
/// Service create checks its requested IP before the name, and the IP is the stored one's.
async fn upsert(
    storage: &dyn Storage,
    t: &Target,
    object: Value,
    opts: WriteOptions<'_>,
) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut current = match get_object(storage, t, name).await {
        Ok((_, current)) => current,
        Err(ApiError::NotFound { .. }) => {
            write::create(storage, t, object, opts).await?;
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    for (k, v) in object.as_object().into_iter().flatten() {
        if k != "metadata" {
            current[k] = v.clone();
        }
    }
    // A replacement equal to the stored object is a no-op in `write::update`.
    write::update(storage, t, name, current, opts).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn kubernetes_service_takes_the_first_ip_and_follows_the_port() {
        let storage = MemoryStorage::new();
        ensure_system_namespaces(&storage, "CA1").await.unwrap();
        let alloc = ServiceAllocator::default();
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        ensure_kubernetes_service(&storage, &alloc, host, 6443)
            .await
            .unwrap();
        ensure_kubernetes_service(&storage, &alloc, host, 7443)
            .await
            .unwrap();
        let t = target("", "services", "default");
        let (_, svc) = get_object(&storage, &t, "kubernetes").await.unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 7443);
        let t = target("discovery.k8s.io", "endpointslices", "default");
        let (_, slice) = get_object(&storage, &t, "kubernetes").await.unwrap();
        assert_eq!(slice["ports"][0]["port"], 7443);
        assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
        let t = target("", "endpoints", "default");
        let (_, ep) = get_object(&storage, &t, "kubernetes").await.unwrap();
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 7443);
    }

    #[tokio::test]
    async fn creates_once_and_publishes_the_current_ca_everywhere() {
        let storage = MemoryStorage::new();
        // A namespace from before root CA ConfigMaps existed.
        let old = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "old"}});
        let mut t = target("", "namespaces", "x");
        t.namespace = None;
        let opts = WriteOptions {
            validation: FieldValidation::Strict,
            dry_run: false,
            services: None,
            root_ca: None,
        };
        write::create(&storage, &t, old, opts).await.unwrap();
        ensure_system_namespaces(&storage, "CA1").await.unwrap();
        let rev = storage.current_revision().await.unwrap();
        // Five namespaces, each with its default ServiceAccount and CA ConfigMap.
        assert_eq!(rev, 15);
        ensure_system_namespaces(&storage, "CA1").await.unwrap();
        assert_eq!(storage.current_revision().await.unwrap(), rev);
        let ca = |ns: &'static str| {
            let storage = &storage;
            async move {
                let t = target("", "configmaps", ns);
                let (_, cm) = get_object(storage, &t, "kube-root-ca.crt").await.unwrap();
                cm["data"]["ca.crt"].as_str().unwrap().to_string()
            }
        };
        assert_eq!(ca("old").await, "CA1");
        assert_eq!(ca("kube-system").await, "CA1");
        // A new CA (the PKI was replaced) is published on the next start.
        ensure_system_namespaces(&storage, "CA2").await.unwrap();
        assert_eq!(ca("old").await, "CA2");
        assert_eq!(storage.current_revision().await.unwrap(), rev + 5);
    }
}
