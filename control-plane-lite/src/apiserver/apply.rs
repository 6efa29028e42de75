//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): field ownership in
//! `metadata.managedFields`, the merge of an applied configuration, and its conflicts.
//!
//! A manager's applied configuration is reduced to the set of paths it sets ([`fields`]):
//! scalars, atomic lists and empty objects are leaves; list elements with a patch merge key
//! (`strategic.rs`'s table: containers by `name`, ports by `containerPort`, …) are items of
//! their own, `k:{"name":"c"}` in the `FieldsV1` encoding upstream uses. Applying then
//! 1. refuses (409) to change a leaf another manager owns to a different value, unless
//!    `force=true`, which moves the leaf to the applier;
//! 2. merges the configuration into the live object (strategic merge);
//! 3. removes what the applier set last time but no longer does, when no other manager owns it;
//! 4. records the applier's new set (operation `Apply`).
//!
//! Not done as upstream does: other writes (create, update, patch) record no managed fields,
//! so only appliers conflict with each other; lists without a merge key and `finalizers` are
//! atomic leaves; field ownership is by path only, without schema types.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::strategic;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// An object field.
    Field(String),
    /// A list element by its merge key, as the JSON object `{"key": value}`.
    Key(String),
}

/// A field path from the object root.
pub type Path = Vec<Step>;

/// Top-level and metadata fields that identify the object or belong to the server; never
/// owned.
fn unowned(path: &[Step]) -> bool {
    match path {
        [Step::Field(f)] => matches!(f.as_str(), "apiVersion" | "kind" | "status"),
        [Step::Field(m), Step::Field(f)] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The paths an applied configuration sets.
pub fn fields(config: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(config, &mut Vec::new(), &mut out);
    out
}

fn walk(value: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                path.push(Step::Field(k.clone()));
                if !unowned(path) {
                    walk(v, path, out);
                }
                path.pop();
            }
        }
        Value::Array(items) => match list_key(path, items) {
            Some(key) => {
                for item in items {
                    path.push(Step::Key(key_of(key, item)));
                    out.insert(path.clone());
                    walk(item, path, out);
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The merge key of the list at `path` whose elements are `items`, when every element is an
/// object carrying it.
fn list_key(path: &[Step], items: &[Value]) -> Option<&'static str> {
    let Some(Step::Field(field)) = path.last() else {
        return None;
    };
    let key = strategic::merge_key_where(field, |k| {
        items.iter().all(|i| i.get(k).is_some_and(|v| !v.is_null()))
    })?;
    (!items.is_empty() && items.iter().all(Value::is_object)).then_some(key)
}

fn key_of(key: &str, item: &Value) -> String {
    json!({ key: item[key] }).to_string()
}

/// The value at `path` in `obj`, if any.
pub fn get<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        cur = match step {
            Step::Field(f) => cur.get(f)?,
            Step::Key(k) => find_item(cur.as_array()?, k).map(|i| &cur[i])?,
        };
    }
    Some(cur)
}

/// The index of the element of `items` matching the key object `k`.
fn find_item(items: &[Value], k: &str) -> Option<usize> {
    let key: Map<String, Value> = serde_json::from_str(k).ok()?;
    items
        .iter()
        .position(|i| key.iter().all(|(f, v)| i.get(f) == Some(v)))
}

/// Removes what `path` names from `obj` (a field, or a list element); absent paths are fine.
pub fn remove(obj: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for step in parent {
        let next = match step {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(k) => match cur.as_array().and_then(|a| find_item(a, k)) {
                Some(i) => cur.get_mut(i),
                None => None,
            },
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let Some(i) = cur.as_array().and_then(|a| find_item(a, k)) {
                cur.as_array_mut().expect("checked").remove(i);
            }
        }
    }
}

/// Encodes a path set as `FieldsV1` (`{"f:spec": {"f:replicas": {}}, …}`; a list element's
/// own entry is `"."`).
pub fn encode(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut cur = &mut root;
        for step in path {
            let name = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
            };
            cur = cur
                .entry(name)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("inserted objects");
        }
        if matches!(path.last(), Some(Step::Key(_))) {
            cur.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

/// Decodes `FieldsV1` into a path set (unknown prefixes such as `v:` are skipped).
pub fn decode(fields: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    decode_into(fields, &mut Vec::new(), &mut out);
    out
}

fn decode_into(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(m) = v.as_object() else { return };
    if m.is_empty() && !path.is_empty() {
        out.insert(path.clone());
        return;
    }
    for (k, child) in m {
        let step = if k == "." {
            out.insert(path.clone());
            continue;
        } else if let Some(f) = k.strip_prefix("f:") {
            Step::Field(f.to_owned())
        } else if let Some(key) = k.strip_prefix("k:") {
            Step::Key(key.to_owned())
        } else {
            continue;
        };
        path.push(step);
        decode_into(child, path, out);
        path.pop();
    }
}

/// `.spec.containers[name="c"].image`, for conflict messages.
pub fn display(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(f, v)| format!("{f}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
        }
    }
    s
}

/// The managers of `live` (`metadata.managedFields`) as `(manager, operation) → paths`.
fn managers(live: &Value) -> BTreeMap<(String, String), (Value, BTreeSet<Path>)> {
    let mut out = BTreeMap::new();
    for e in live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let manager = e["manager"].as_str().unwrap_or_default().to_owned();
        let op = e["operation"].as_str().unwrap_or_default().to_owned();
        out.insert((manager, op), (e.clone(), decode(&e["fieldsV1"])));
    }
    out
}

/// Applies `config` for `manager` onto `live` (the stored object) and returns the new object;
/// `now` is the entry's timestamp. A conflict is a 409 naming each field and its owner.
pub fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
    names: (&'static str, &'static str, &str),
) -> Result<Value, ApiError> {
    let (group, resource, name) = names;
    let applied = fields(config);
    let me = (manager.to_owned(), "Apply".to_owned());
    let mut owners = managers(live);
    let previous = owners.remove(&me).map(|(_, p)| p).unwrap_or_default();

    // 1. Conflicts: leaves another manager owns that would change value.
    let mut conflicts = Vec::new();
    for path in &applied {
        if matches!(path.last(), Some(Step::Key(_))) || get(live, path) == get(config, path) {
            continue;
        }
        for ((other, _), (_, owned)) in &owners {
            if owned.contains(path) {
                conflicts.push((other.clone(), path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let list: Vec<String> = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": {}", display(p)))
            .collect();
        return Err(ApiError::Refused {
            group,
            resource,
            name: name.to_owned(),
            reason: format!(
                "Apply failed with {} conflict{}: {}",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                list.join("; ")
            ),
        });
    }
    // Forced: the applier takes the conflicting fields over.
    for (other, path) in &conflicts {
        for ((m, _), (_, owned)) in owners.iter_mut() {
            if m == other {
                owned.remove(path);
            }
        }
    }

    // 2. Merge, without the identity fields the server owns.
    let mut merged = live.clone();
    let mut patch = config.clone();
    if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "resourceVersion",
            "uid",
            "managedFields",
            "creationTimestamp",
        ] {
            meta.remove(f);
        }
    }
    if let Some(obj) = patch.as_object_mut() {
        obj.remove("status");
    }
    strategic::apply(&mut merged, &patch);

    // 3. What the applier dropped since last time, unless someone else owns it.
    for path in previous.difference(&applied) {
        let shared = owners.values().any(|(_, owned)| owned.contains(path));
        if !shared {
            remove(&mut merged, path);
        }
    }

    // 4. managedFields: the others (minus forced-away fields, empty ones dropped), then ours.
    let api_version = config["apiVersion"].as_str().unwrap_or_default();
    let mut entries: Vec<Value> = Vec::new();
    for ((_, _), (mut entry, owned)) in owners {
        if owned.is_empty() {
            continue;
        }
        entry["fieldsV1"] = encode(&owned);
        entries.push(entry);
    }
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": encode(&applied),
    }));
    merged["metadata"]["managedFields"] = Value::Array(entries);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: (&str, &str, &str) = ("apps", "deployments", "web");

    fn deploy(replicas: u32, image: &str, extra_label: bool) -> Value {
        let mut labels = json!({"app": "web"});
        if extra_label {
            labels["tier"] = json!("x");
        }
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": labels},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "c", "image": image, "args": ["a", "b"]}
            ]}}}
        })
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let f = fields(&deploy(3, "i:1", true));
        let containers = vec![
            Step::Field("spec".into()),
            Step::Field("template".into()),
            Step::Field("spec".into()),
            Step::Field("containers".into()),
            Step::Key(r#"{"name":"c"}"#.into()),
        ];
        assert!(f.contains(&containers), "{f:?}");
        let mut args = containers.clone();
        args.push(Step::Field("args".into()));
        assert!(f.contains(&args), "atomic list is a leaf");
        assert!(!f.iter().any(|p| p[0] == Step::Field("kind".into())));
        let enc = encode(&f);
        assert_eq!(
            enc["f:spec"]["f:template"]["f:spec"]["f:containers"][r#"k:{"name":"c"}"#]["."],
            json!({})
        );
        assert_eq!(enc["f:metadata"]["f:labels"]["f:tier"], json!({}));
        assert_eq!(decode(&enc), f);
        assert_eq!(
            display(&args),
            r#".spec.template.spec.containers[name="c"].args"#
        );
    }

    #[test]
    fn reapply_merges_removes_dropped_fields_and_detects_conflicts() {
        let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u1", "labels": {"other": "keep"}},
            "spec": {"paused": false}});
        let once = apply(
            &live,
            &deploy(3, "i:1", true),
            "kubectl",
            false,
            "t1",
            NAMES,
        )
        .unwrap();
        assert_eq!(
            once["metadata"]["labels"],
            json!({"other": "keep", "app": "web", "tier": "x"})
        );
        assert_eq!(
            once["spec"]["paused"],
            json!(false),
            "unmanaged fields stay"
        );
        assert_eq!(once["metadata"]["uid"], json!("u1"));
        assert_eq!(
            once["metadata"]["managedFields"][0]["manager"],
            json!("kubectl")
        );

        // Dropping the tier label removes it; the unmanaged label stays.
        let twice = apply(
            &once,
            &deploy(3, "i:2", false),
            "kubectl",
            false,
            "t2",
            NAMES,
        )
        .unwrap();
        assert_eq!(
            twice["metadata"]["labels"],
            json!({"other": "keep", "app": "web"})
        );
        assert_eq!(
            twice["spec"]["template"]["spec"]["containers"][0]["image"],
            json!("i:2")
        );

        // Another applier changing replicas conflicts, names the field, and stores nothing.
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let err = apply(&twice, &other, "hpa", false, "t3", NAMES).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("conflict with \"kubectl\": .spec.replicas"),
            "{msg}"
        );
        assert_eq!(err.code(), 409);
        // Same value: shared ownership, no conflict.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 3}});
        let shared = apply(&twice, &same, "hpa", false, "t3", NAMES).unwrap();
        // kubectl stops applying replicas: hpa still owns it, so it stays.
        let mut without = deploy(3, "i:2", false);
        without["spec"].as_object_mut().unwrap().remove("replicas");
        let kept = apply(&shared, &without, "kubectl", false, "t4", NAMES).unwrap();
        assert_eq!(kept["spec"]["replicas"], json!(3));
        // Forced: hpa takes replicas over, kubectl's entry loses it.
        let forced = apply(&twice, &other, "hpa", true, "t5", NAMES).unwrap();
        assert_eq!(forced["spec"]["replicas"], json!(5));
        let kubectl = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "kubectl")
            .unwrap();
        assert!(
            kubectl["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
            "{kubectl}"
        );
    }

    #[test]
    fn dropped_list_items_are_removed() {
        let two = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let live = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        let once = apply(&live, &two, "m", false, "t", NAMES).unwrap();
        let one = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}]}});
        let after = apply(&once, &one, "m", false, "t", NAMES).unwrap();
        assert_eq!(
            after["spec"]["containers"],
            json!([{"name": "a", "image": "x"}])
        );
    }
}
