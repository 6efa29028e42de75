//! Cell helpers of `table.rs` for the kinds whose columns need more than a field read: label
//! selectors, Job status, Events in either API group (after kubectl's `printers.go`).

use serde_json::{json, Value};

use super::table::{human_age, str_or};

/// `k=v,…` of a string map.
pub fn pairs(map: &Value) -> String {
    map.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A label selector as kubectl prints it (`metav1.FormatLabelSelector`).
pub fn selector(sel: &Value) -> String {
    let mut parts = vec![pairs(&sel["matchLabels"])];
    parts.retain(|p| !p.is_empty());
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    parts.join(",")
}

/// The STATUS column of a Job (kubectl 1.30+): its finished or suspended condition, else
/// Running.
pub fn job_status(job: &Value) -> &'static str {
    if job["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating";
    }
    let conditions = job["status"]["conditions"].as_array();
    let holds = |ty: &str| {
        conditions.is_some_and(|c| c.iter().any(|c| c["type"] == ty && c["status"] == "True"))
    };
    [
        ("Failed", "Failed"),
        ("Complete", "Complete"),
        ("Suspended", "Suspended"),
        ("FailureTarget", "FailureTarget"),
        ("SuccessCriteriaMet", "SuccessCriteriaMet"),
    ]
    .into_iter()
    .find(|(ty, _)| holds(ty))
    .map_or("Running", |(_, shown)| shown)
}

/// A cell of an Event row, in either the core or the `events.k8s.io` form.
pub fn event_cell(name: &str, e: &Value) -> Value {
    let either = |core: &str, new: &str| {
        let v = &e[core];
        if v.is_null() {
            e[new].clone()
        } else {
            v.clone()
        }
    };
    match name {
        "Last Seen" => {
            let seen = [
                either("lastTimestamp", "deprecatedLastTimestamp"),
                e["series"]["lastObservedTime"].clone(),
                e["eventTime"].clone(),
                e["metadata"]["creationTimestamp"].clone(),
            ]
            .into_iter()
            .find_map(|v| {
                v.as_str()
                    .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
            });
            json!(seen.map_or("<unknown>".to_string(), |t| human_age(
                super::defaults::now_seconds() - t.as_second()
            )))
        }
        "Type" => json!(str_or(&e["type"], "")),
        "Reason" => json!(str_or(&e["reason"], "")),
        "Object" => {
            let o = either("involvedObject", "regarding");
            let kind = o["kind"].as_str().unwrap_or("").to_lowercase();
            json!(format!("{kind}/{}", o["name"].as_str().unwrap_or("")))
        }
        "Message" => json!(either("message", "note").as_str().unwrap_or("").trim()),
        _ => json!(""),
    }
}
