//! What the apiserver fills in: system metadata on create and update, and the per-kind defaults
//! that kubectl's output relies on (phases, replicas, service type).

use rand::Rng;
use serde_json::{json, Map, Value};

use super::resources::Resource;

/// The current time as an RFC 3339 string with second precision (`metav1.Time`).
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::from_second(now_seconds())
        .unwrap_or_default()
        .to_string()
}

/// Seconds since the Unix epoch (jiff's clock needs its `std` feature, which we do not pull).
pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A random lowercase UUID (v4) for `metadata.uid`.
pub fn uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

/// `generateName` plus five random characters, as the apiserver does.
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v[key].is_object() {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("just made an object")
}

/// Sets the system metadata of a new object (the caller has settled name and namespace);
/// `generation` says whether its kind tracks `metadata.generation`.
pub fn on_create(object: &mut Value, generation: bool) {
    let meta = obj_mut(object, "metadata");
    meta.insert("uid".into(), json!(uid()));
    meta.insert("creationTimestamp".into(), json!(now()));
    if generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
}

/// Carries the system metadata of `old` into the replacement `new`; where the kind tracks it
/// (`generation`), bumps `metadata.generation` when anything but metadata and status changed.
pub fn on_update(old: &Value, new: &mut Value, tracked: bool) {
    let spec_changed = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        strip(old) != strip(new)
    };
    let old_meta = &old["metadata"];
    let generation = old_meta["generation"].as_i64().unwrap_or(1) + i64::from(spec_changed);
    let meta = obj_mut(new, "metadata");
    for key in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(key) {
            Some(v) => meta.insert(key.into(), v.clone()),
            None => meta.remove(key),
        };
    }
    if tracked {
        meta.insert("generation".into(), json!(generation));
    } else {
        meta.remove("generation");
    }
    meta.remove("resourceVersion");
}

/// Fills the per-kind defaults of a new or updated object.
pub fn apply_kind_defaults(resource: &Resource, object: &mut Value) {
    match resource.plural {
        "namespaces" => {
            let status = obj_mut(object, "status");
            status.entry("phase").or_insert(json!("Active"));
            let spec = obj_mut(object, "spec");
            spec.entry("finalizers").or_insert(json!(["kubernetes"]));
            let name = object["metadata"]["name"].clone();
            let meta = obj_mut(object, "metadata");
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), name);
            }
        }
        "pods" => {
            let status = obj_mut(object, "status");
            status.entry("phase").or_insert(json!("Pending"));
            status.entry("qosClass").or_insert(json!("BestEffort"));
            pod_spec_defaults(&mut object["spec"]);
            if let Some(spec) = object["spec"].as_object_mut() {
                spec.entry("serviceAccountName").or_insert(json!("default"));
            }
        }
        "services" => {
            let spec = obj_mut(object, "spec");
            spec.entry("type").or_insert(json!("ClusterIP"));
            spec.entry("sessionAffinity").or_insert(json!("None"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    p.entry("protocol").or_insert(json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        p.entry("targetPort").or_insert(port);
                    }
                }
            }
        }
        "deployments" => {
            let spec = obj_mut(object, "spec");
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            spec.entry("progressDeadlineSeconds").or_insert(json!(600));
            spec.entry("strategy").or_insert(json!({
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            }));
            template_defaults(spec);
        }
        "replicasets" => {
            let spec = obj_mut(object, "spec");
            spec.entry("replicas").or_insert(json!(1));
            template_defaults(spec);
        }
        "statefulsets" => {
            let spec = obj_mut(object, "spec");
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("podManagementPolicy")
                .or_insert(json!("OrderedReady"));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            spec.entry("updateStrategy").or_insert(json!({
                "type": "RollingUpdate",
                "rollingUpdate": {"partition": 0},
            }));
            spec.entry("persistentVolumeClaimRetentionPolicy")
                .or_insert(json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
            template_defaults(spec);
        }
        "daemonsets" => {
            let spec = obj_mut(object, "spec");
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            spec.entry("updateStrategy").or_insert(json!({
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
            }));
            template_defaults(spec);
        }
        "jobs" => {
            job_selector(object);
            let spec = obj_mut(object, "spec");
            spec.entry("parallelism").or_insert(json!(1));
            spec.entry("completions").or_insert(json!(1));
            spec.entry("backoffLimit").or_insert(json!(6));
            spec.entry("completionMode").or_insert(json!("NonIndexed"));
            spec.entry("suspend").or_insert(json!(false));
            spec.entry("manualSelector").or_insert(json!(false));
            spec.entry("podReplacementPolicy")
                .or_insert(json!("TerminatingOrFailed"));
            // A Job's pods must say Never or OnFailure themselves; `Always` is not defaulted.
            let explicit = spec
                .get("template")
                .is_some_and(|t| t["spec"]["restartPolicy"].is_string());
            template_defaults(spec);
            if !explicit {
                if let Some(s) = spec
                    .get_mut("template")
                    .and_then(|t| t["spec"].as_object_mut())
                {
                    s.remove("restartPolicy");
                }
            }
        }
        "secrets" => {
            if let Some(string_data) = object
                .as_object_mut()
                .and_then(|o| o.remove("stringData"))
                .and_then(|v| v.as_object().cloned())
            {
                let data = obj_mut(object, "data");
                for (k, v) in string_data {
                    let raw = v.as_str().unwrap_or_default().as_bytes();
                    data.insert(k, json!(base64_encode(raw)));
                }
            }
            if !object["type"].is_string() {
                object["type"] = json!("Opaque");
            }
        }
        _ => {}
    }
}

/// Without `manualSelector`, a Job selects its pods by its uid, and its template carries the
/// matching labels (as the Job registry strategy does).
fn job_selector(job: &mut Value) {
    if job["spec"]["manualSelector"] == true || job["spec"]["selector"].is_object() {
        return;
    }
    let uid = job["metadata"]["uid"].clone();
    let name = job["metadata"]["name"].clone();
    if !uid.is_string() {
        return;
    }
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    let spec = obj_mut(job, "spec");
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    if let Some(template) = spec.get_mut("template") {
        let meta = obj_mut(template, "metadata");
        let existing = meta.entry("labels").or_insert_with(|| json!({}));
        if let (Some(existing), Some(labels)) = (existing.as_object_mut(), labels.as_object()) {
            for (k, v) in labels {
                existing.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The pod spec defaults of `spec.template` in a workload's spec.
fn template_defaults(spec: &mut Map<String, Value>) {
    if let Some(template) = spec.get_mut("template") {
        pod_spec_defaults(&mut template["spec"]);
    }
}

/// The defaults of a pod spec, in pods and in pod templates.
fn pod_spec_defaults(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    spec.entry("restartPolicy").or_insert(json!("Always"));
    spec.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    spec.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    spec.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let latest = c.get("image").and_then(Value::as_str).is_some_and(|i| {
                let name = i.rsplit('/').next().unwrap_or(i);
                !name.contains(':') || name.ends_with(":latest")
            });
            let pull = if latest { "Always" } else { "IfNotPresent" };
            c.entry("imagePullPolicy").or_insert(json!(pull));
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    p.entry("protocol").or_insert(json!("TCP"));
                }
            }
        }
    }
}

fn base64_encode(raw: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    #[test]
    fn uid_looks_like_a_v4_uuid() {
        let u = uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(uid(), u);
    }

    #[test]
    fn update_keeps_system_metadata_and_bumps_generation_on_spec_change() {
        let old = json!({"metadata":{"name":"a","uid":"u","generation":1,"creationTimestamp":"t"},"spec":{"x":1}});
        let mut same = json!({"metadata":{"name":"a","labels":{"l":"v"}},"spec":{"x":1}});
        on_update(&old, &mut same, true);
        assert_eq!(same["metadata"]["uid"], "u");
        assert_eq!(same["metadata"]["generation"], 1);
        let mut changed = json!({"metadata":{"name":"a"},"spec":{"x":2}});
        on_update(&old, &mut changed, true);
        assert_eq!(changed["metadata"]["generation"], 2);
    }

    #[test]
    fn kind_defaults() {
        let mut ns = json!({"metadata":{"name":"t1"}});
        apply_kind_defaults(find("", "v1", "namespaces").unwrap(), &mut ns);
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "t1"
        );
        let mut secret = json!({"metadata":{"name":"s"},"stringData":{"a":"b"}});
        apply_kind_defaults(find("", "v1", "secrets").unwrap(), &mut secret);
        assert_eq!(secret["data"]["a"], "Yg==");
        assert_eq!(secret["type"], "Opaque");
        let template = json!({"spec": {"containers": [{"name": "c", "image": "i:1"}]}});
        let mut sts = json!({"metadata": {"name": "s"}, "spec": {"template": template}});
        apply_kind_defaults(find("apps", "v1", "statefulsets").unwrap(), &mut sts);
        assert_eq!(sts["spec"]["replicas"], 1);
        assert_eq!(sts["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let mut job =
            json!({"metadata": {"name": "j", "uid": "u"}, "spec": {"template": template}});
        apply_kind_defaults(find("batch", "v1", "jobs").unwrap(), &mut job);
        assert_eq!(job["spec"]["backoffLimit"], 6);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "j"
        );
        assert!(job["spec"]["template"]["spec"]
            .get("restartPolicy")
            .is_none());
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }
}
