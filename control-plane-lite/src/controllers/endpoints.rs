//! EndpointSlice and Endpoints controller: for every Service with a selector, the pods it selects
//! that have an IPv4 pod IP become endpoints, in EndpointSlices (≤ 100 endpoints each, owned by
//! the Service) and in the core/v1 Endpoints object of the same name.
//!
//! Endpoints are grouped by their resolved ports (a named `targetPort` can resolve to different
//! numbers on different pods), one group per slice set and per Endpoints subset, as upstream.
//! Reconciles on Service, owned EndpointSlice and Pod events (a pod maps to the Services whose
//! selector it matches now or that listed it last time, so relabelled pods leave too); objects
//! are written only when their content changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use super::{owner, pods, selector, ControllerError};

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`] (upstream's, so tools that look for it find ours).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Most endpoints in one slice (upstream `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// One port of a Service resolved for one pod: (name, number, protocol, appProtocol).
type Port = (Option<String>, i32, String, Option<String>);

/// One pod as an endpoint.
#[derive(Debug, Clone, PartialEq)]
struct PodEndpoint {
    pod: String,
    uid: Option<String>,
    ip: String,
    node: Option<String>,
    ready: bool,
    terminating: bool,
}

/// The number `sp` targets on `pod`, or `None` if a named target port is not declared there.
fn resolve_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(s.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port),
        },
    }
}

/// The pod's endpoints grouped by resolved port set, pods sorted by name within a group.
fn group_endpoints(svc: &Service, pod_list: &[Pod]) -> BTreeMap<Vec<Port>, Vec<PodEndpoint>> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut groups: BTreeMap<Vec<Port>, Vec<PodEndpoint>> = BTreeMap::new();
    for pod in pod_list {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if ip.parse::<Ipv4Addr>().is_err() || matches!(pods::phase(pod), "Succeeded" | "Failed") {
            continue;
        }
        let ports: Vec<Port> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                let number = resolve_port(sp, pod)?;
                let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                Some((sp.name.clone(), number, protocol, sp.app_protocol.clone()))
            })
            .collect();
        groups.entry(ports).or_default().push(PodEndpoint {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone(),
            ip,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready: pods::is_ready(pod),
            terminating: pods::is_terminating(pod),
        });
    }
    for eps in groups.values_mut() {
        eps.sort_by(|a, b| a.pod.cmp(&b.pod));
    }
    groups
}

fn target_ref(ep: &PodEndpoint, ns: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: Some(ns.into()),
        name: Some(ep.pod.clone()),
        uid: ep.uid.clone(),
        ..Default::default()
    }
}

/// The slices the Service should have, named `<service>-<n>`.
fn desired_slices(
    svc: &Service,
    groups: &BTreeMap<Vec<Port>, Vec<PodEndpoint>>,
) -> Result<Vec<EndpointSlice>, ControllerError> {
    let (ns, name) = names(svc)?;
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let owner = owner::controller_ref(svc).ok_or_else(|| ControllerError::MissingField {
        object: format!("service {ns}/{name}"),
        field: "metadata.uid",
    })?;
    let mut chunks: Vec<(Vec<Port>, &[PodEndpoint])> = Vec::new();
    for (ports, eps) in groups {
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            chunks.push((ports.clone(), chunk));
        }
    }
    if chunks.is_empty() {
        // Upstream keeps one empty placeholder slice so consumers see "no endpoints" explicitly.
        chunks.push((Vec::new(), &[]));
    }
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, (ports, eps))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{i}")),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                eps.iter()
                    .map(|ep| Endpoint {
                        addresses: vec![ep.ip.clone()],
                        conditions: Some(EndpointConditions {
                            ready: Some(publish || (ep.ready && !ep.terminating)),
                            serving: Some(ep.ready),
                            terminating: Some(ep.terminating),
                        }),
                        node_name: ep.node.clone(),
                        target_ref: Some(target_ref(ep, &ns)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, port, proto, app)| EndpointPort {
                        name: n.clone(),
                        port: Some(*port),
                        protocol: Some(proto.clone()),
                        app_protocol: app.clone(),
                    })
                    .collect(),
            ),
        })
        .collect())
}

/// The subsets of the Service's core/v1 Endpoints: terminating pods left out unless
/// `publishNotReadyAddresses`, which also makes every address ready.
fn desired_subsets(
    svc: &Service,
    groups: &BTreeMap<Vec<Port>, Vec<PodEndpoint>>,
) -> Vec<EndpointSubset> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut subsets = Vec::new();
    for (ports, eps) in groups {
        let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
        for ep in eps {
            if ep.terminating && !publish {
                continue;
            }
            let addr = EndpointAddress {
                ip: ep.ip.clone(),
                node_name: ep.node.clone(),
                target_ref: Some(target_ref(ep, &ns)),
                ..Default::default()
            };
            if publish || ep.ready {
                ready.push(addr);
            } else {
                not_ready.push(addr);
            }
        }
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        ready.sort_by(|a, b| a.ip.cmp(&b.ip));
        not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
        subsets.push(EndpointSubset {
            addresses: Some(ready).filter(|v| !v.is_empty()),
            not_ready_addresses: Some(not_ready).filter(|v| !v.is_empty()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, port, proto, app)| CorePort {
                        name: n.clone(),
                        port: *port,
                        protocol: Some(proto.clone()),
                        app_protocol: app.clone(),
                    })
                    .collect(),
            )
            .filter(|v: &Vec<CorePort>| !v.is_empty()),
        });
    }
    subsets
}

fn names(svc: &Service) -> Result<(String, String), ControllerError> {
    let missing = |field| ControllerError::MissingField {
        object: format!("service {}", super::key(svc)),
        field,
    };
    Ok((
        svc.metadata
            .namespace
            .clone()
            .ok_or_else(|| missing("metadata.namespace"))?,
        svc.metadata
            .name
            .clone()
            .ok_or_else(|| missing("metadata.name"))?,
    ))
}

/// Whether `have` already says what `want` says (the fields this controller owns).
fn same_slice(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    have.metadata.labels == want.metadata.labels
        && have.metadata.owner_references == want.metadata.owner_references
        && have.address_type == want.address_type
        && have.endpoints.clone().unwrap_or_default() == want.endpoints.clone().unwrap_or_default()
        && have.ports.clone().unwrap_or_default() == want.ports.clone().unwrap_or_default()
}

struct Ctx {
    client: Client,
    /// (namespace, pod) → Services that listed the pod at their last reconcile.
    listed: std::sync::Mutex<HashMap<(String, String), HashSet<String>>>,
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let Some(sel) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
    else {
        return Ok(Action::await_change());
    };
    let (ns, name) = names(&svc)?;
    let pod_list = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector::map_to_query(&sel)))
        .await
        .map_err(ControllerError::kube(
            "list pods for service",
            format!("{ns}/{name}"),
        ))?
        .items;
    {
        let mut listed = ctx.listed.lock().expect("endpoints index lock");
        let now: HashSet<&str> = pod_list
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        listed.retain(|(pns, pod), svcs| {
            if *pns == ns && !now.contains(pod.as_str()) {
                svcs.remove(&name);
            }
            !svcs.is_empty()
        });
        for pod in &now {
            listed
                .entry((ns.clone(), pod.to_string()))
                .or_default()
                .insert(name.clone());
        }
    }
    let groups = group_endpoints(&svc, &pod_list);
    sync_slices(&ctx.client, &desired_slices(&svc, &groups)?, &ns, &name).await?;
    sync_endpoints(&ctx.client, &svc, desired_subsets(&svc, &groups)).await?;
    Ok(Action::await_change())
}

async fn sync_slices(
    client: &Client,
    want: &[EndpointSlice],
    ns: &str,
    svc: &str,
) -> Result<(), ControllerError> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let have = api
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={svc},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )))
        .await
        .map_err(ControllerError::kube(
            "list endpointslices of service",
            format!("{ns}/{svc}"),
        ))?
        .items;
    for slice in want {
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        let object = format!("{ns}/{slice_name}");
        match have.iter().find(|h| h.metadata.name == slice.metadata.name) {
            Some(h) if same_slice(h, slice) => {}
            Some(h) => {
                let mut next = slice.clone();
                next.metadata.resource_version = h.metadata.resource_version.clone();
                api.replace(&slice_name, &PostParams::default(), &next)
                    .await
                    .map_err(ControllerError::kube("update endpointslice", object))?;
            }
            None => {
                api.create(&PostParams::default(), slice)
                    .await
                    .map_err(ControllerError::kube("create endpointslice", object))?;
            }
        }
    }
    for h in &have {
        if !want.iter().any(|w| w.metadata.name == h.metadata.name) {
            let slice_name = h.metadata.name.clone().unwrap_or_default();
            match api.delete(&slice_name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if super::is_not_found(&e) => {}
                Err(e) => {
                    return Err(ControllerError::kube(
                        "delete endpointslice",
                        format!("{ns}/{slice_name}"),
                    )(e))
                }
            }
        }
    }
    Ok(())
}

async fn sync_endpoints(
    client: &Client,
    svc: &Service,
    subsets: Vec<EndpointSubset>,
) -> Result<(), ControllerError> {
    let (ns, name) = names(svc)?;
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    let object = format!("{ns}/{name}");
    let labels = svc.metadata.labels.clone();
    let current = api
        .get_opt(&name)
        .await
        .map_err(ControllerError::kube("get endpoints", object.clone()))?;
    let want = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: labels.clone(),
            ..Default::default()
        },
        subsets: Some(subsets.clone()).filter(|s| !s.is_empty()),
    };
    match current {
        Some(cur)
            if cur.subsets.clone().unwrap_or_default() == subsets
                && cur.metadata.labels.clone().unwrap_or_default()
                    == labels.clone().unwrap_or_default() => {}
        Some(cur) => {
            let mut next = want;
            next.metadata.resource_version = cur.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &next)
                .await
                .map_err(ControllerError::kube("update endpoints", object))?;
        }
        None => {
            api.create(&PostParams::default(), &want)
                .await
                .map_err(ControllerError::kube("create endpoints", object))?;
        }
    }
    Ok(())
}

/// Services in the pod's namespace that select it now or listed it last time.
fn services_for_pod(
    pod: &Pod,
    store: &Store<Service>,
    listed: &std::sync::Mutex<HashMap<(String, String), HashSet<String>>>,
) -> Vec<ObjectRef<Service>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut names: HashSet<String> = store
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.selector.as_ref())
                .is_some_and(|sel| selector::map_matches(sel, pod.metadata.labels.as_ref()))
        })
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let key = (ns.clone(), pod.metadata.name.clone().unwrap_or_default());
    if let Some(prev) = listed.lock().expect("endpoints index lock").get(&key) {
        names.extend(prev.iter().cloned());
    }
    names
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(&ns))
        .collect()
}

/// The controller future (runs until its watches end); `pods` is the process's shared pod
/// watch ([`super::shared_watch`]).
pub async fn run(client: Client, pods: impl futures::Stream<Item = Arc<Pod>> + Send + 'static) {
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    // Full-object watch rather than `owns` (metadata-only, which our apiserver rejects).
    .watches(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        |slice| owner::controller_ref_of::<Service>(&slice.metadata),
    );
    let store = controller.store();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        listed: Default::default(),
    });
    let map_ctx = ctx.clone();
    let controller = controller.watches_shared_stream(pods, move |pod| {
        services_for_pod(&pod, &store, &map_ctx.listed)
    });
    super::drain("endpoints", controller.run(reconcile, super::on_error, ctx)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(publish: bool) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "publishNotReadyAddresses": publish, "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "metrics", "port": 9090, "targetPort": 9100}
            ]}
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, http_port: i32, ready: bool, deleting: bool) -> Pod {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                     "ports": [{"name": "http", "containerPort": http_port}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        });
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn named_ports_split_groups_and_conditions_follow_pods() {
        let pods = vec![
            pod("a", "10.0.0.1", 8080, true, false),
            pod("b", "10.0.0.2", 8080, false, false),
            pod("c", "10.0.0.3", 8081, true, true),
        ];
        let s = svc(false);
        let groups = group_endpoints(&s, &pods);
        assert_eq!(groups.len(), 2, "8080 and 8081 are different port sets");
        let slices = desired_slices(&s, &groups).unwrap();
        assert_eq!(slices.len(), 2);
        let first = &slices[0];
        assert_eq!(first.metadata.name.as_deref(), Some("web-0"));
        let ports: Vec<_> = first.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, vec![Some(8080), Some(9100)]);
        let conds: Vec<_> = first
            .endpoints
            .iter()
            .flatten()
            .map(|e| e.conditions.clone().unwrap())
            .collect();
        assert_eq!(conds[0].ready, Some(true));
        assert_eq!(conds[1].ready, Some(false));
        let term = slices[1].endpoints.as_ref().unwrap()[0]
            .conditions
            .clone()
            .unwrap();
        assert_eq!(
            (term.ready, term.serving, term.terminating),
            (Some(false), Some(true), Some(true))
        );

        let subsets = desired_subsets(&s, &groups);
        assert_eq!(
            subsets.len(),
            1,
            "the terminating pod's group leaves Endpoints"
        );
        assert_eq!(subsets[0].addresses.as_ref().unwrap()[0].ip, "10.0.0.1");
        assert_eq!(
            subsets[0].not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.0.0.2"
        );

        let published = desired_subsets(&svc(true), &group_endpoints(&svc(true), &pods));
        let ready: usize = published
            .iter()
            .map(|s| s.addresses.iter().flatten().count())
            .sum();
        assert_eq!(
            ready, 3,
            "publishNotReadyAddresses makes every address ready"
        );
    }

    #[test]
    fn slices_hold_at_most_100_endpoints_and_empty_services_get_a_placeholder() {
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.1.{}.{}", i / 200, i % 200 + 1),
                    8080,
                    true,
                    false,
                )
            })
            .collect();
        let s = svc(false);
        let slices = desired_slices(&s, &group_endpoints(&s, &pods)).unwrap();
        let sizes: Vec<_> = slices
            .iter()
            .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        let empty = desired_slices(&s, &BTreeMap::new()).unwrap();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.as_ref().is_none_or(Vec::is_empty));
    }
}
