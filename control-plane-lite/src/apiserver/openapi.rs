//! A minimal OpenAPI v3 (`/openapi/v3` index and one document per group/version).
//!
//! The documents carry only paths with operations, their `x-kubernetes-group-version-kind` and
//! the `fieldValidation` query parameter; no schemas. That is what kubectl's validation needs:
//! when the PATCH operation of a kind lists `fieldValidation`, kubectl leaves validation to the
//! server (`fieldValidation=Strict`, see `strict.rs`) instead of downloading schemas. Clients
//! that need schemas (`kubectl explain`) find none yet; `/openapi/v2` is not served.

use serde_json::{json, Map, Value};

use super::discovery::MINOR;
use super::resources::{group_versions, Resource, RESOURCES};

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

fn operation(r: &Resource, action: &str, with_validation: bool) -> Value {
    let mut params = vec![json!({"name": "pretty", "in": "query", "schema": {"type": "string"}})];
    if with_validation {
        for name in ["dryRun", "fieldManager", "fieldValidation"] {
            params.push(json!({"name": name, "in": "query", "schema": {"type": "string"}}));
        }
    }
    json!({
        "operationId": format!("{action}{}", r.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
    })
}

/// The document of one group/version path such as `api/v1` or `apis/apps/v1`.
pub fn document(path: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| gv_path(r.group, r.version) == path)
    {
        let base = format!("/{path}");
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"get": operation(r, "list", false), "post": operation(r, "post", true)}),
        );
        let object = json!({
            "get": operation(r, "get", false),
            "put": operation(r, "put", true),
            "patch": operation(r, "patch", true),
            "delete": operation(r, "delete", false),
        });
        paths.insert(format!("{collection}/{{name}}"), object);
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{MINOR}.0")},
        "paths": paths,
        "components": {"schemas": {}},
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
    }
}
