//! The one table of the kinds this apiserver serves.
//!
//! Everything kind-specific that is only data (names, scope, subresources, short names) lives
//! here; discovery, routing, storage keys and body decoding all read it. Per-kind behaviour that
//! is code (defaults, table columns) is keyed by [`Resource::plural`] in `defaults.rs` and
//! `table.rs`.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use k8s_openapi::api::{apps, batch, coordination, core, discovery, events, networking};

/// Decodes a JSON object into the kind's typed struct and back, so that malformed fields are
/// rejected and unknown ones dropped (the apiserver's decoding and pruning).
pub type DecodeFn = fn(Value) -> Result<Value, serde_json::Error>;

/// Registers the kind's JSON schema (and those it refers to) with an OpenAPI generator and
/// returns the reference to it; `openapi.rs` builds the documents from these.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// One served resource (a kind in one group/version).
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    /// API group, empty for core.
    pub group: &'static str,
    /// API version, e.g. `v1`.
    pub version: &'static str,
    /// The kind, e.g. `Pod`.
    pub kind: &'static str,
    /// The URL segment and storage key segment, e.g. `pods`.
    pub plural: &'static str,
    /// The singular name, e.g. `pod`.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names for kubectl, e.g. `po`.
    pub short_names: &'static [&'static str],
    /// Whether the `status` subresource is served.
    pub status: bool,
    /// Whether the `scale` subresource is served.
    pub scale: bool,
    /// Whether names must be DNS-1123 labels (namespaces, services) rather than subdomains.
    pub name_is_label: bool,
    /// The typed round trip of an incoming body.
    pub decode: DecodeFn,
    /// The kind's schema, from the same typed struct.
    pub schema: SchemaFn,
}

impl Resource {
    /// `v1` for core, `group/version` otherwise: the `apiVersion` of objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of the list type, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The verbs discovery lists for the resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.plural == "namespaces" {
            NAMESPACE_VERBS
        } else {
            VERBS
        }
    }

    /// The `group/version` pair matches.
    pub fn is_in(&self, group: &str, version: &str) -> bool {
        self.group == group && self.version == version
    }

    /// Whether objects carry `metadata.generation`, bumped on spec changes: the kinds whose
    /// controllers report an `observedGeneration` (upstream's strategies set it for these only;
    /// a ConfigMap or a Node has none).
    pub fn tracks_generation(&self) -> bool {
        GENERATION_TRACKED.contains(&(self.group, self.plural))
    }

    /// Whether a DELETE that removes the object at once answers with the object (pods and
    /// services, as upstream) rather than a `Status` of `Success`.
    pub fn returns_deleted_object(&self) -> bool {
        self.group.is_empty() && matches!(self.plural, "pods" | "services")
    }
}

/// The `(group, plural)` of kinds with `metadata.generation` (see
/// [`Resource::tracks_generation`]).
const GENERATION_TRACKED: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "daemonsets"),
    ("apps", "statefulsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.k8s.io", "networkpolicies"),
    ("networking.k8s.io", "ingresses"),
    ("policy", "poddisruptionbudgets"),
];

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.group == other.group && self.version == other.version && self.plural == other.plural
    }
}

impl Eq for Resource {}

/// The verbs served for every resource but namespaces.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs of namespaces, which (as upstream) take no `deletecollection`.
pub const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// The decoding and the schema of the typed struct `T`.
const fn typed<T: DeserializeOwned + Serialize + JsonSchema>() -> (DecodeFn, SchemaFn) {
    (roundtrip::<T>, schema::<T>)
}

fn roundtrip<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, serde_json::Error> {
    let typed: T = serde_json::from_value(value)?;
    serde_json::to_value(typed)
}

const fn core(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    (decode, schema): (DecodeFn, SchemaFn),
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        status: false,
        scale: false,
        name_is_label: false,
        decode,
        schema,
    }
}

/// A namespaced kind of a named group, in `v1`, without subresources.
const fn grouped(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    typed: (DecodeFn, SchemaFn),
) -> Resource {
    Resource {
        group,
        ..core(kind, plural, singular, true, short_names, typed)
    }
}

/// All served resources.
pub static RESOURCES: &[Resource] = &[
    Resource {
        status: true,
        name_is_label: true,
        ..core(
            "Namespace",
            "namespaces",
            "namespace",
            false,
            &["ns"],
            typed::<core::v1::Namespace>(),
        )
    },
    Resource {
        status: true,
        ..core(
            "Pod",
            "pods",
            "pod",
            true,
            &["po"],
            typed::<core::v1::Pod>(),
        )
    },
    core(
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        typed::<core::v1::ConfigMap>(),
    ),
    core(
        "Secret",
        "secrets",
        "secret",
        true,
        &[],
        typed::<core::v1::Secret>(),
    ),
    Resource {
        status: true,
        name_is_label: true,
        ..core(
            "Service",
            "services",
            "service",
            true,
            &["svc"],
            typed::<core::v1::Service>(),
        )
    },
    Resource {
        status: true,
        ..core(
            "Node",
            "nodes",
            "node",
            false,
            &["no"],
            typed::<core::v1::Node>(),
        )
    },
    core(
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        typed::<core::v1::Event>(),
    ),
    core(
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        typed::<core::v1::ServiceAccount>(),
    ),
    core(
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        typed::<core::v1::Endpoints>(),
    ),
    Resource {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        status: true,
        scale: true,
        name_is_label: false,
        decode: roundtrip::<apps::v1::Deployment>,
        schema: schema::<apps::v1::Deployment>,
    },
    Resource {
        status: true,
        scale: true,
        ..grouped(
            "apps",
            "ReplicaSet",
            "replicasets",
            "replicaset",
            &["rs"],
            typed::<apps::v1::ReplicaSet>(),
        )
    },
    Resource {
        status: true,
        scale: true,
        ..grouped(
            "apps",
            "StatefulSet",
            "statefulsets",
            "statefulset",
            &["sts"],
            typed::<apps::v1::StatefulSet>(),
        )
    },
    grouped(
        "apps",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        &[],
        typed::<apps::v1::ControllerRevision>(),
    ),
    Resource {
        status: true,
        ..grouped(
            "apps",
            "DaemonSet",
            "daemonsets",
            "daemonset",
            &["ds"],
            typed::<apps::v1::DaemonSet>(),
        )
    },
    Resource {
        status: true,
        ..grouped(
            "batch",
            "Job",
            "jobs",
            "job",
            &[],
            typed::<batch::v1::Job>(),
        )
    },
    grouped(
        "networking.k8s.io",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        &["netpol"],
        typed::<networking::v1::NetworkPolicy>(),
    ),
    Resource {
        status: true,
        ..grouped(
            "networking.k8s.io",
            "Ingress",
            "ingresses",
            "ingress",
            &["ing"],
            typed::<networking::v1::Ingress>(),
        )
    },
    // The same objects as core Events (one storage key space); see `events.rs`.
    grouped(
        "events.k8s.io",
        "Event",
        "events",
        "event",
        &["ev"],
        typed::<events::v1::Event>(),
    ),
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        status: false,
        scale: false,
        name_is_label: false,
        decode: roundtrip::<coordination::v1::Lease>,
        schema: schema::<coordination::v1::Lease>,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        status: false,
        scale: false,
        name_is_label: false,
        decode: roundtrip::<discovery::v1::EndpointSlice>,
        schema: schema::<discovery::v1::EndpointSlice>,
    },
];

/// The resource `plural` in `group/version`, if served.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.is_in(group, version) && r.plural == plural)
}

/// The served `(group, version)` pairs other than core `v1`, in table order, deduplicated.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The namespaces resource, which namespaced creates check against.
pub fn namespaces() -> &'static Resource {
    find("", "v1", "namespaces").expect("namespaces is in the table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_group_versions() {
        assert_eq!(
            find("apps", "v1", "deployments").unwrap().kind,
            "Deployment"
        );
        assert!(find("", "v1", "deployments").is_none());
        assert_eq!(namespaces().api_version(), "v1");
        assert!(group_versions().contains(&("discovery.k8s.io", "v1")));
        assert!(group_versions().contains(&("batch", "v1")));
        let rs = find("apps", "v1", "replicasets").unwrap();
        assert!(rs.namespaced && rs.status && rs.scale);
        assert!(!find("apps", "v1", "daemonsets").unwrap().scale);
        assert_eq!(
            find("networking.k8s.io", "v1", "ingresses")
                .unwrap()
                .short_names,
            ["ing"]
        );
    }

    #[test]
    fn decode_rejects_wrong_kind_and_bad_fields() {
        let cm = find("", "v1", "configmaps").unwrap();
        let ok = serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"k":"v"}});
        assert!((cm.decode)(ok).is_ok());
        let wrong = serde_json::json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"}});
        assert!((cm.decode)(wrong).is_err());
        let bad = serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","data":"x"});
        assert!((cm.decode)(bad).is_err());
    }
}
