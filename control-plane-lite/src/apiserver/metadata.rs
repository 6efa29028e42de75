//! Metadata-only rendering (`as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`): what
//! kube-rs `metadata_watcher`, `Api::list_metadata` and `Controller::owns` ask for.

use serde_json::{json, Value};

/// The `apiVersion` of partial-metadata objects and lists.
const API_VERSION: &str = "meta.k8s.io/v1";

/// `object` reduced to a `PartialObjectMetadata` (its metadata only).
pub fn partial(object: &Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "PartialObjectMetadata",
        "metadata": object["metadata"].clone(),
    })
}

/// A `PartialObjectMetadataList` of `items` with the list metadata `list_meta`.
pub fn partial_list(items: &[Value], list_meta: Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "PartialObjectMetadataList",
        "metadata": list_meta,
        "items": items.iter().map(partial).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_metadata() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u"}, "spec": {"nodeName": "n"}});
        let p = partial(&pod);
        assert_eq!(p["kind"], "PartialObjectMetadata");
        assert_eq!(p["metadata"]["uid"], "u");
        assert!(p.get("spec").is_none());
        let l = partial_list(&[pod], json!({"resourceVersion": "7"}));
        assert_eq!(l["kind"], "PartialObjectMetadataList");
        assert_eq!(l["metadata"]["resourceVersion"], "7");
        assert_eq!(l["items"][0]["apiVersion"], "meta.k8s.io/v1");
    }
}
