//! Discovery documents built from the resource table: legacy (`/version`, `/api`, `/apis`,
//! `/api/v1`, `/apis/<g>[/<v>]`) and aggregated (`apidiscovery.k8s.io/v2`
//! `APIGroupDiscoveryList` on `/api` and `/apis`, when `Accept` asks for it), which lets kubectl
//! learn every resource in two requests.

use serde_json::{json, Value};

use super::resources::{group_versions, Resource, RESOURCES};

/// The Kubernetes minor version this server claims (it serves a subset of it).
pub const MINOR: &str = "33";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0-netlet"),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

fn api_group(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({ "name": group, "versions": [gv], "preferredVersion": gv })
}

/// `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = group_versions()
        .into_iter()
        .map(|(g, v)| api_group(g, v))
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/<group>`, if served.
pub fn api_group_doc(group: &str) -> Option<Value> {
    let (g, v) = group_versions().into_iter().find(|(g, _)| *g == group)?;
    let mut doc = api_group(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// Whether `kubectl get all` lists the resource (Kubernetes' `all` category).
fn in_category_all(r: &Resource) -> bool {
    matches!(
        r.plural,
        "pods"
            | "services"
            | "deployments"
            | "replicasets"
            | "statefulsets"
            | "daemonsets"
            | "jobs"
    )
}

/// A subresource that only takes a POST of its own kind: name, group, version, kind, verbs.
type ExtraSubresource = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// The subresources of `r` with a kind or verbs of their own (pods' `binding` and `eviction`
/// take a POST, `log` a GET of plain text; serviceaccounts' `token` a POST of a TokenRequest).
fn extra_subresources(r: &Resource) -> Vec<ExtraSubresource> {
    if r.is_in("", "v1") && r.plural == "serviceaccounts" {
        return vec![(
            "token",
            "authentication.k8s.io",
            "v1",
            "TokenRequest",
            &["create"],
        )];
    }
    if !(r.is_in("", "v1") && r.plural == "pods") {
        return Vec::new();
    }
    vec![
        ("binding", "", "v1", "Binding", &["create"]),
        ("eviction", "policy", "v1", "Eviction", &["create"]),
        ("log", "", "v1", "Pod", &["get"]),
        ("exec", "", "v1", "PodExecOptions", &["create", "get"]),
        ("attach", "", "v1", "PodAttachOptions", &["create", "get"]),
        (
            "portforward",
            "",
            "v1",
            "PodPortForwardOptions",
            &["create", "get"],
        ),
    ]
}

fn resource_entries(r: &Resource) -> Vec<Value> {
    let mut main = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        main["shortNames"] = json!(r.short_names);
    }
    if in_category_all(r) {
        main["categories"] = json!(["all"]);
    }
    let mut out = vec![main];
    for (sub, group, version, kind, verbs) in extra_subresources(r) {
        out.push(json!({
            "name": format!("{}/{sub}", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "group": group,
            "version": version,
            "kind": kind,
            "verbs": verbs,
        }));
    }
    if r.status {
        out.push(json!({
            "name": format!("{}/status", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    if r.scale {
        out.push(json!({
            "name": format!("{}/scale", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "group": "autoscaling",
            "version": "v1",
            "kind": "Scale",
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

/// `/api/v1` or `/apis/<group>/<version>`, if served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.is_in(group, version))
        .flat_map(resource_entries)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// The `Content-Type` of an aggregated discovery reply.
pub const AGGREGATED_MEDIA_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn scope(r: &Resource) -> &'static str {
    if r.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_resource(r: &Resource) -> Value {
    let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let mut subresources = Vec::new();
    if r.status {
        subresources.push(json!({
            "subresource": "status",
            "responseKind": kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    for (sub, group, version, kind, verbs) in extra_subresources(r) {
        subresources.push(json!({
            "subresource": sub,
            "responseKind": {"group": group, "version": version, "kind": kind},
            "verbs": verbs,
        }));
    }
    if r.scale {
        subresources.push(json!({
            "subresource": "scale",
            "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
            "verbs": ["get", "patch", "update"],
        }));
    }
    let mut out = json!({
        "resource": r.plural,
        "responseKind": kind,
        "scope": scope(r),
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        out["shortNames"] = json!(r.short_names);
    }
    if in_category_all(r) {
        out["categories"] = json!(["all"]);
    }
    if !subresources.is_empty() {
        out["subresources"] = json!(subresources);
    }
    out
}

fn aggregated_group(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.is_in(group, version))
        .map(aggregated_resource)
        .collect();
    let metadata = if group.is_empty() {
        json!({"creationTimestamp": null})
    } else {
        json!({"name": group, "creationTimestamp": null})
    };
    json!({
        "metadata": metadata,
        "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
    })
}

/// The aggregated `APIGroupDiscoveryList` of `/api` (`core`) or `/apis`.
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("", "v1")]
    } else {
        group_versions()
            .into_iter()
            .map(|(g, v)| aggregated_group(g, v))
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_list_has_subresources() {
        let doc = resource_list("", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/status"));
        let binding = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/binding")
            .unwrap();
        assert_eq!(
            (&binding["kind"], &binding["verbs"]),
            (&json!("Binding"), &json!(["create"]))
        );
        assert!(resource_list("apps", "v2").is_none());
        let apps = resource_list("apps", "v1").unwrap();
        assert_eq!(apps["resources"][2]["kind"], "Scale");
        assert!(api_group_doc("apps").is_some());
    }

    #[test]
    fn aggregated_lists_resources_with_subresources() {
        let core = aggregated(true);
        assert_eq!(core["items"][0]["versions"][0]["version"], "v1");
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap()
            .clone();
        assert_eq!(pods["scope"], "Namespaced");
        assert!(pods["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("deletecollection")));
        let namespaces = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "namespaces")
            .unwrap()
            .clone();
        assert!(!namespaces["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("deletecollection")));
        let subs: Vec<&str> = pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subresource"].as_str().unwrap())
            .collect();
        assert_eq!(
            subs,
            [
                "status",
                "binding",
                "eviction",
                "log",
                "exec",
                "attach",
                "portforward"
            ]
        );
        let groups = aggregated(false);
        assert!(groups["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["metadata"]["name"] == "apps"));
    }
}
