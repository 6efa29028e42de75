//! Strategic merge patch, the subset kubectl relies on (`apply`, `edit`, `set image`, plain
//! `patch`).
//!
//! Lists named in [`merge_key`] merge element-wise by their patch merge key (containers by
//! `name`, container ports by `containerPort`, …) instead of being replaced, `finalizers`
//! merge as a set, and the directives `$patch: replace|delete` and
//! `$deleteFromPrimitiveList/<field>` are honoured; `$setElementOrder/<field>` and
//! `$retainKeys` are accepted and ignored (element order is kept as stored, retained keys are
//! not pruned). The merge keys come from a table by field name rather than from the OpenAPI
//! schema, which is close for the kinds served here but not exact.

use serde_json::{Map, Value};

/// The patch merge key of the list field `field` whose elements look like `sample`.
fn merge_key(field: &str, sample: &Value) -> Option<&'static str> {
    merge_key_where(field, |k| sample.get(k).is_some())
}

/// The patch merge key of the list field `field` whose elements have the fields for which
/// `has` holds: the one table of merge keys, which the OpenAPI schemas publish too (as
/// `x-kubernetes-patch-merge-key`) so that kubectl computes the patches this code merges.
pub fn merge_key_where(field: &str, has: impl Fn(&str) -> bool) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "readinessGates" => "conditionType",
        // Containers' ports merge by containerPort, services' by port.
        "ports" if has("containerPort") => "containerPort",
        "ports" => "port",
        _ => return None,
    })
}

/// Lists of primitives that merge as sets.
pub fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

fn is_directive(key: &str) -> bool {
    key.starts_with('$')
}

/// The patch value with directives removed, for inserting where nothing is merged.
fn strip(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !is_directive(k))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
        other => other.clone(),
    }
}

fn merge_list(field: &str, target: &mut Vec<Value>, patch: &[Value]) {
    let Some(key) = patch.first().and_then(|s| merge_key(field, s)) else {
        if is_set_list(field) {
            for v in patch {
                if !target.contains(v) {
                    target.push(v.clone());
                }
            }
        } else {
            *target = patch.iter().map(strip).collect();
        }
        return;
    };
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .map(strip)
            .collect();
        return;
    }
    for element in patch {
        let id = &element[key];
        let pos = target.iter().position(|t| &t[key] == id && !id.is_null());
        let delete = element.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                target.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => apply(&mut target[i], element),
            (None, false) => target.push(strip(element)),
        }
    }
}

/// Applies the strategic merge patch `patch` (an object) to `target`.
pub fn apply(target: &mut Value, patch: &Value) {
    let Some(patch_obj) = patch.as_object() else {
        *target = strip(patch);
        return;
    };
    match patch_obj.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_obj = target.as_object_mut().expect("just made an object");
    for (key, value) in patch_obj {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(remove)) = (
                target_obj.get_mut(field).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if is_directive(key) {
            continue;
        }
        match value {
            Value::Null => {
                target_obj.remove(key);
            }
            Value::Array(items) => match target_obj.get_mut(key).and_then(Value::as_array_mut) {
                Some(existing) => merge_list(key, existing, items),
                None => {
                    target_obj.insert(key.clone(), strip(value));
                }
            },
            Value::Object(_) => apply(target_obj.entry(key.clone()).or_insert(Value::Null), value),
            other => {
                target_obj.insert(key.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_keep_other_fields() {
        let mut pod = json!({"spec":{"containers":[
            {"name":"a","image":"x:1","ports":[{"containerPort":80,"name":"http"}]},
            {"name":"b","image":"y:1"}]}});
        apply(
            &mut pod,
            &json!({"spec":{
                "$setElementOrder/containers":[{"name":"a"},{"name":"b"}],
                "containers":[{"name":"a","image":"x:2","ports":[{"containerPort":81}]},{"name":"c","image":"z"}]}}),
        );
        assert_eq!(
            pod,
            json!({"spec":{"containers":[
                {"name":"a","image":"x:2","ports":[{"containerPort":80,"name":"http"},{"containerPort":81}]},
                {"name":"b","image":"y:1"},
                {"name":"c","image":"z"}]}})
        );
    }

    #[test]
    fn directives_delete_replace_and_sets() {
        let mut obj = json!({"metadata":{"finalizers":["a","b"],"labels":{"x":"1","y":"2"}},
            "spec":{"containers":[{"name":"a"},{"name":"b"}],"args":["1","2"]}});
        apply(
            &mut obj,
            &json!({"metadata":{"finalizers":["c"],"$deleteFromPrimitiveList/finalizers":["a"],"labels":{"x":null}},
                "spec":{"containers":[{"name":"a","$patch":"delete"}],"args":["3"]}}),
        );
        assert_eq!(
            obj,
            json!({"metadata":{"finalizers":["b","c"],"labels":{"y":"2"}},
                "spec":{"containers":[{"name":"b"}],"args":["3"]}})
        );
        apply(
            &mut obj,
            &json!({"metadata":{"labels":{"$patch":"replace","z":"3"}}}),
        );
        assert_eq!(obj["metadata"]["labels"], json!({"z":"3"}));
    }
}
