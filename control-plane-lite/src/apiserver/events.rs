//! `events.k8s.io/v1` Events: a second view of the core `v1` Events, as in Kubernetes.
//!
//! Both versions share one storage key space (`/registry/events/…`), stored in the core form;
//! objects of `events.k8s.io` are converted on the way in and out, with the field renames of
//! Kubernetes' `pkg/apis/events/v1` conversion.

use serde_json::{Map, Value};

/// `(events.k8s.io name, core name)` of the renamed fields; the rest keep their names.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(object: Value, from_new: bool, api_version: &str) -> Value {
    let Value::Object(fields) = object else {
        return object;
    };
    let mut out = Map::with_capacity(fields.len());
    for (k, v) in fields {
        let renamed = RENAMED.iter().find_map(|(new, core)| match from_new {
            true if k == *new => Some(*core),
            false if k == *core => Some(*new),
            _ => None,
        });
        out.insert(renamed.map_or(k, str::to_string), v);
    }
    out.insert("apiVersion".into(), Value::from(api_version));
    out.insert("kind".into(), Value::from("Event"));
    Value::Object(out)
}

/// The core `v1` form of an `events.k8s.io/v1` Event.
pub fn to_core(event: Value) -> Value {
    rename(event, true, "v1")
}

/// The `events.k8s.io/v1` form of a core `v1` Event.
pub fn from_core(event: Value) -> Value {
    rename(event, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p"},
            "note": "pulled", "reason": "Pulled", "type": "Normal", "deprecatedCount": 2});
        let core = to_core(new.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["count"], 2);
        assert_eq!(from_core(core), new);
    }
}
