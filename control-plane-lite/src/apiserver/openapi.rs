//! OpenAPI v3: the `/openapi/v3` index and one document per group/version, with the real
//! schemas of the served kinds.
//!
//! The schemas come from k8s-openapi's types through `schemars` (its `schemars` feature), named
//! as upstream (`io.k8s.api.core.v1.Pod`), references as `allOf: [{$ref}]` beside their
//! description as upstream's v3 documents have them, and each served kind marked with
//! `x-kubernetes-group-version-kind`, which is how `kubectl explain` finds a kind's schema.
//! Every write operation lists the `fieldValidation` query parameter: kubectl then leaves
//! validation to the server (`fieldValidation=Strict`, see `strict.rs`) instead of
//! validating against the schemas itself. PATCH operations declare no request body, so
//! `kubectl apply` computes strategic merge patches from its compiled-in types rather than from
//! these schemas (which carry the patch-strategy extensions of `strategic.rs`'s merge keys all
//! the same). The documents are built once, on
//! first use. `openapi_v2.rs` derives the Swagger 2.0 document from the same schemas and
//! operations.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::discovery::MINOR;
use super::resources::{group_versions, Resource, RESOURCES};
use super::strategic;

/// The content hash in the index's URLs; the documents change only with the binary.
const HASH: &str = concat!("netlet-", env!("CARGO_PKG_VERSION"));

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the group/version documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    let all = std::iter::once(("", "v1")).chain(group_versions());
    for (g, v) in all {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{p}?hash={HASH}") }),
        );
    }
    json!({ "paths": paths })
}

/// The prefix of references to the document's component schemas.
const COMPONENTS: &str = "#/components/schemas/";

fn operation(r: &Resource, action: &str, with_validation: bool, schema: Option<&str>) -> Value {
    let mut params = vec![json!({"name": "pretty", "in": "query", "schema": {"type": "string"}})];
    if with_validation {
        for name in ["dryRun", "fieldManager", "fieldValidation"] {
            params.push(json!({"name": name, "in": "query", "schema": {"type": "string"}}));
        }
    }
    json!({
        "operationId": format!("{action}{}", r.kind),
        "parameters": params,
        "responses": {"200": response(schema)},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
    })
}

fn response(schema: Option<&str>) -> Value {
    match schema {
        Some(name) => json!({
            "description": "OK",
            "content": {"application/json": {"schema": {"$ref": format!("{COMPONENTS}{name}")}}},
        }),
        None => json!({"description": "OK"}),
    }
}

/// The documents by group/version path, built on first use.
static DOCUMENTS: LazyLock<BTreeMap<String, Value>> = LazyLock::new(|| {
    let all = std::iter::once(("", "v1")).chain(group_versions());
    all.filter_map(|(g, v)| {
        let path = gv_path(g, v);
        build(&path).map(|doc| (path, doc))
    })
    .collect()
});

/// The document of one group/version path such as `api/v1` or `apis/apps/v1`.
pub fn document(path: &str) -> Option<Value> {
    DOCUMENTS.get(path).cloned()
}

/// The component schemas of the kinds in `resources` and everything they refer to, each kind
/// marked with its group/version/kind; returns them with each kind's component name.
pub(super) fn schemas(resources: &[&Resource]) -> (Map<String, Value>, Vec<String>) {
    let mut generator = SchemaSettings::openapi3()
        .with(|s| s.meta_schema = None)
        .into_generator();
    let names: Vec<String> = resources
        .iter()
        .map(|r| {
            let reference = (r.schema)(&mut generator);
            reference
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|s| s.strip_prefix(COMPONENTS))
                .unwrap_or(r.kind)
                .to_string()
        })
        .collect();
    // Status is what deletes and failed requests return.
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    let mut components = generator.take_definitions(true);
    add_patch_strategies(&mut components);
    for (r, name) in resources.iter().zip(&names) {
        if let Some(schema) = components.get_mut(name).and_then(Value::as_object_mut) {
            // k8s-openapi requires `metadata` (a non-optional Rust field); upstream does not.
            if let Some(Value::Array(required)) = schema.get_mut("required") {
                required.retain(|f| f != "metadata");
                if required.is_empty() {
                    schema.remove("required");
                }
            }
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "kind": r.kind, "version": r.version}]),
            );
        }
    }
    (components, names)
}

/// The collection and object paths of `resources` (whose component schemas are `names`) with
/// their operations.
pub(super) fn operations(resources: &[&Resource], names: &[String]) -> Vec<(String, Value)> {
    let mut paths = Vec::new();
    for (r, name) in resources.iter().zip(names) {
        let kind = Some(name.as_str());
        let base = format!("/{}", gv_path(r.group, r.version));
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let mut ops = json!({
            "get": operation(r, "list", false, None),
            "post": operation(r, "post", true, kind),
        });
        if r.verbs().contains(&"deletecollection") {
            ops["delete"] = operation(r, "deletecollection", false, None);
        }
        paths.push((collection.clone(), ops));
        let object = json!({
            "get": operation(r, "get", false, kind),
            "put": operation(r, "put", true, kind),
            "patch": operation(r, "patch", true, kind),
            "delete": operation(r, "delete", false, None),
        });
        paths.push((format!("{collection}/{{name}}"), object));
    }
    paths
}

/// Marks the list properties that strategic merge patches merge (`strategic.rs`'s table) with
/// `x-kubernetes-patch-strategy: merge` and their `x-kubernetes-patch-merge-key`, as upstream's
/// schemas do: kubectl computes apply patches from these when it uses the schemas.
fn add_patch_strategies(components: &mut Map<String, Value>) {
    let item_fields = |prop: &Value| -> Vec<String> {
        let items = &prop["items"];
        let reference = items["$ref"]
            .as_str()
            .or_else(|| items["allOf"][0]["$ref"].as_str())
            .and_then(|r| r.strip_prefix(COMPONENTS));
        reference
            .and_then(|name| components.get(name))
            .and_then(|def| def["properties"].as_object())
            .map(|props| props.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut marks = Vec::new();
    for (name, schema) in components.iter() {
        for (field, prop) in schema["properties"].as_object().into_iter().flatten() {
            if prop["type"] != "array" {
                continue;
            }
            let fields = item_fields(prop);
            let key = strategic::merge_key_where(field, |k| fields.iter().any(|f| f == k));
            if key.is_some() || strategic::is_set_list(field) {
                marks.push((name.clone(), field.clone(), key));
            }
        }
    }
    for (name, field, key) in marks {
        let prop = &mut components[&name]["properties"][&field];
        prop["x-kubernetes-patch-strategy"] = json!("merge");
        if let Some(key) = key {
            prop["x-kubernetes-patch-merge-key"] = json!(key);
        }
    }
}

fn build(path: &str) -> Option<Value> {
    let resources: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| gv_path(r.group, r.version) == path)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let (components, names) = schemas(&resources);
    let paths: Map<String, Value> = operations(&resources, &names).into_iter().collect();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{MINOR}.0")},
        "paths": paths,
        "components": {"schemas": components},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_documents_agree() {
        let idx = index();
        let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc = document("apis/apps/v1").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        let params = patch["parameters"].as_array().unwrap();
        assert!(params.iter().any(|p| p["name"] == "fieldValidation"));
        assert!(document("api/v1").unwrap()["paths"]["/api/v1/nodes/{name}"].is_object());
        assert!(document("apis/nope/v1").is_none());
        let response = &patch["responses"]["200"]["content"]["application/json"]["schema"];
        assert_eq!(
            response["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.Deployment"
        );
        assert!(patch.get("requestBody").is_none(), "see the module doc");
    }

    #[test]
    fn schemas_are_named_and_marked_as_upstream() {
        let doc = document("api/v1").unwrap();
        let schemas = &doc["components"]["schemas"];
        let pod = &schemas["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "kind": "Pod", "version": "v1"}])
        );
        assert!(pod.get("required").is_none(), "{}", pod["required"]);
        assert_eq!(
            pod["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        let container = &schemas["io.k8s.api.core.v1.Container"];
        assert_eq!(container["properties"]["image"]["type"], "string");
        assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
        let spec = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(spec["containers"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(spec["containers"]["x-kubernetes-patch-strategy"], "merge");
        let ports = &schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        let service_ports = &schemas["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(service_ports["x-kubernetes-patch-merge-key"], "port");
        let meta = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"];
        assert_eq!(meta["finalizers"]["x-kubernetes-patch-strategy"], "merge");
        assert!(meta["finalizers"]
            .get("x-kubernetes-patch-merge-key")
            .is_none());
        assert!(spec["nodeSelector"]
            .get("x-kubernetes-patch-strategy")
            .is_none());
        assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Status"].is_object());
        // Only served kinds are marked: a PodSpec is no kind.
        assert!(schemas["io.k8s.api.core.v1.PodSpec"]
            .get("x-kubernetes-group-version-kind")
            .is_none());
        let events = document("apis/events.k8s.io/v1").unwrap();
        assert_eq!(
            events["components"]["schemas"]["io.k8s.api.events.v1.Event"]
                ["x-kubernetes-group-version-kind"][0]["group"],
            "events.k8s.io"
        );
        let namespaces = &doc["paths"]["/api/v1/namespaces"];
        assert!(namespaces.get("delete").is_none(), "no deletecollection");
        assert_eq!(
            doc["paths"]["/api/v1/namespaces/{namespace}/pods"]["delete"]["x-kubernetes-action"],
            "deletecollection"
        );
    }
}
