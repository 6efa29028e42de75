//! Server-side printing: `meta.k8s.io/v1 Table` rows for `kubectl get`, columns per kind.

use serde_json::{json, Value};

use super::printers::{event_cell, job_status, pairs, selector};
use super::resources::Resource;

/// Which object each row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter (default `Metadata`).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// A column: name, type, priority (1 = only in `-o wide`).
type Column = (&'static str, &'static str, u8);

fn columns(resource: &Resource) -> Vec<Column> {
    // kubectl's Event columns put the name last, among the wide ones.
    if resource.plural == "events" {
        return vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
            ("Name", "string", 1),
        ];
    }
    let mut cols: Vec<Column> = vec![("Name", "string", 0)];
    cols.extend_from_slice(match resource.plural {
        "pods" => &[
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ][..],
        "namespaces" => &[("Status", "string", 0), ("Age", "string", 0)],
        "nodes" => &[
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
        ],
        "services" => &[
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        "deployments" => &[
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        "replicasets" => &[
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "daemonsets" => &[
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "statefulsets" => &[
            ("Ready", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        "jobs" => &[
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "networkpolicies" => &[("Pod-Selector", "string", 0), ("Age", "string", 0)],
        "ingresses" => &[
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            ("Age", "string", 0),
        ],
        "configmaps" => &[("Data", "integer", 0), ("Age", "string", 0)],
        "controllerrevisions" => &[
            ("Controller", "string", 0),
            ("Revision", "integer", 0),
            ("Age", "string", 0),
        ],
        "secrets" => &[
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        _ => &[("Age", "string", 0)],
    });
    cols
}

/// Go's `duration.HumanDuration` for the AGE column.
pub fn human_age(seconds: i64) -> String {
    if seconds < 0 {
        return "0s".into();
    }
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if m < 10 {
        match seconds % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(object: &Value) -> String {
    let created = object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok());
    match created {
        Some(t) => human_age(super::defaults::now_seconds() - t.as_second()),
        None => "<unknown>".into(),
    }
}

/// The string `v`, or `default` when absent or empty.
pub fn str_or<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().filter(|s| !s.is_empty()).unwrap_or(default)
}

fn count(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn cell(resource: &Resource, name: &str, o: &Value) -> Value {
    let (spec, status) = (&o["spec"], &o["status"]);
    match (resource.plural, name) {
        (_, "Name") => o["metadata"]["name"].clone(),
        (_, "Age") => json!(age(o)),
        ("pods", "Ready") => {
            let statuses = status["containerStatuses"].as_array();
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
            json!(format!("{ready}/{total}"))
        }
        // As kubectl's printer: a pod being deleted shows Terminating.
        ("pods", "Status") if o["metadata"]["deletionTimestamp"].is_string() => {
            json!("Terminating")
        }
        ("pods", "Status") => json!(str_or(
            &status["reason"],
            str_or(&status["phase"], "Pending")
        )),
        ("pods", "Restarts") => {
            let n: i64 = status["containerStatuses"].as_array().map_or(0, |s| {
                s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            json!(n.to_string())
        }
        ("pods", "IP") => json!(str_or(&status["podIP"], "<none>")),
        ("pods", "Node") => json!(str_or(&spec["nodeName"], "<none>")),
        ("pods", "Nominated Node") => json!(str_or(&status["nominatedNodeName"], "<none>")),
        ("pods", "Readiness Gates") => json!("<none>"),
        ("namespaces", "Status") => json!(str_or(&status["phase"], "Active")),
        ("nodes", "Status") => {
            let ready = status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
            let mut s = match ready.map(|c| c["status"].as_str().unwrap_or("")) {
                Some("True") => "Ready".to_string(),
                Some("False") => "NotReady".to_string(),
                _ => "Unknown".to_string(),
            };
            if spec["unschedulable"] == true {
                s.push_str(",SchedulingDisabled");
            }
            json!(s)
        }
        ("nodes", "Roles") => {
            let roles: Vec<&str> = o["metadata"]["labels"]
                .as_object()
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .collect()
                })
                .unwrap_or_default();
            json!(if roles.is_empty() {
                "<none>".to_string()
            } else {
                roles.join(",")
            })
        }
        ("nodes", "Version") => json!(str_or(&status["nodeInfo"]["kubeletVersion"], "")),
        ("services", "Type") => json!(str_or(&spec["type"], "ClusterIP")),
        ("services", "Cluster-IP") => json!(str_or(&spec["clusterIP"], "<none>")),
        ("services", "External-IP") => {
            let ips: Vec<&str> = spec["externalIPs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            json!(if ips.is_empty() {
                "<none>".to_string()
            } else {
                ips.join(",")
            })
        }
        ("services", "Port(s)") => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            let proto = str_or(&p["protocol"], "TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                                None => format!("{}/{proto}", p["port"]),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            })
        }
        ("services", "Selector") => {
            let sel: Vec<String> = spec["selector"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            json!(if sel.is_empty() {
                "<none>".to_string()
            } else {
                sel.join(",")
            })
        }
        ("deployments", "Ready") => json!(format!(
            "{}/{}",
            status["readyReplicas"].as_i64().unwrap_or(0),
            spec["replicas"].as_i64().unwrap_or(1)
        )),
        ("deployments", "Up-to-date") => json!(status["updatedReplicas"].as_i64().unwrap_or(0)),
        ("deployments", "Available") => json!(status["availableReplicas"].as_i64().unwrap_or(0)),
        (_, "Containers" | "Images") => {
            let field = if name == "Containers" {
                "name"
            } else {
                "image"
            };
            let v: Vec<&str> = spec["template"]["spec"]["containers"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c[field].as_str()).collect())
                .unwrap_or_default();
            json!(v.join(","))
        }
        (_, "Selector") if resource.plural != "services" => json!(selector(&spec["selector"])),
        ("controllerrevisions", "Controller") => {
            let owner = o["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["controller"] == true);
            json!(owner.map_or_else(
                || "<none>".to_string(),
                |r| format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or("").to_lowercase(),
                    r["name"].as_str().unwrap_or("")
                )
            ))
        }
        ("controllerrevisions", "Revision") => json!(int(&o["revision"])),
        ("replicasets", "Desired") => json!(spec["replicas"].as_i64().unwrap_or(1)),
        ("replicasets", "Current") => json!(int(&status["replicas"])),
        ("replicasets", "Ready") => json!(int(&status["readyReplicas"])),
        ("daemonsets", "Desired") => json!(int(&status["desiredNumberScheduled"])),
        ("daemonsets", "Current") => json!(int(&status["currentNumberScheduled"])),
        ("daemonsets", "Ready") => json!(int(&status["numberReady"])),
        ("daemonsets", "Up-to-date") => json!(int(&status["updatedNumberScheduled"])),
        ("daemonsets", "Available") => json!(int(&status["numberAvailable"])),
        ("daemonsets", "Node Selector") => {
            json!(or_none(pairs(&spec["template"]["spec"]["nodeSelector"])))
        }
        ("statefulsets", "Ready") => json!(format!(
            "{}/{}",
            int(&status["readyReplicas"]),
            spec["replicas"].as_i64().unwrap_or(1)
        )),
        ("jobs", "Status") => json!(job_status(o)),
        ("jobs", "Completions") => {
            let succeeded = int(&status["succeeded"]);
            json!(match spec["completions"].as_i64() {
                Some(c) => format!("{succeeded}/{c}"),
                None => format!(
                    "{succeeded}/1 of {}",
                    spec["parallelism"].as_i64().unwrap_or(1)
                ),
            })
        }
        ("jobs", "Duration") => {
            let at = |v: &Value| {
                v.as_str()
                    .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .map(|t| t.as_second())
            };
            json!(match at(&status["startTime"]) {
                Some(start) => {
                    let end =
                        at(&status["completionTime"]).unwrap_or_else(super::defaults::now_seconds);
                    human_age(end - start)
                }
                None => String::new(),
            })
        }
        ("networkpolicies", "Pod-Selector") => json!(or_none(selector(&spec["podSelector"]))),
        ("ingresses", "Class") => json!(str_or(&spec["ingressClassName"], "<none>")),
        ("ingresses", "Hosts") => {
            let hosts: Vec<&str> = spec["rules"]
                .as_array()
                .map(|r| r.iter().filter_map(|r| r["host"].as_str()).collect())
                .unwrap_or_default();
            json!(if hosts.is_empty() {
                "*".to_string()
            } else {
                hosts.join(",")
            })
        }
        ("ingresses", "Address") => {
            let addrs: Vec<&str> = status["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
                        .collect()
                })
                .unwrap_or_default();
            json!(addrs.join(","))
        }
        ("ingresses", "Ports") => {
            let tls = spec["tls"].as_array().is_some_and(|t| !t.is_empty());
            json!(if tls { "80, 443" } else { "80" })
        }
        ("events", _) => event_cell(name, o),
        ("configmaps", "Data") => json!(count(&o["data"]) + count(&o["binaryData"])),
        ("secrets", "Type") => json!(str_or(&o["type"], "Opaque")),
        ("secrets", "Data") => json!(count(&o["data"])),
        _ => json!(""),
    }
}

/// One row of `object`.
pub fn row(resource: &Resource, object: &Value, include: IncludeObject) -> Value {
    let cells: Vec<Value> = columns(resource)
        .iter()
        .map(|(name, _, _)| cell(resource, name, object))
        .collect();
    let mut row = json!({ "cells": cells });
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = object.clone(),
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object["metadata"],
            })
        }
    }
    row
}

/// The `Table` of `objects`, as of `resource_version`.
pub fn table(
    resource: &Resource,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include: IncludeObject,
) -> Value {
    let defs: Vec<Value> = columns(resource)
        .iter()
        .map(|(name, ty, priority)| {
            json!({
                "name": name,
                "type": ty,
                "format": if *name == "Name" { "name" } else { "" },
                "description": "",
                "priority": priority,
            })
        })
        .collect();
    let mut meta = json!({ "resourceVersion": resource_version });
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": objects.iter().map(|o| row(resource, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(150), "2m30s");
        assert_eq!(human_age(3600 * 3 + 60), "3h1m");
        assert_eq!(human_age(86400 * 3), "3d");
    }

    #[test]
    fn pod_row_cells() {
        let pods = find("", "v1", "pods").unwrap();
        let pod = json!({"metadata":{"name":"p"},"spec":{"containers":[{"name":"c"}]},
            "status":{"phase":"Running","containerStatuses":[{"ready":true,"restartCount":2}]}});
        let t = table(pods, &[pod], "7", None, IncludeObject::Metadata);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
    }

    #[test]
    fn event_rows_in_both_forms() {
        let core = json!({"metadata": {"name": "e1"}, "type": "Normal", "reason": "Pulled",
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": "done"});
        let new = crate::apiserver::events::from_core(core.clone());
        for (group, e) in [("", core), ("events.k8s.io", new)] {
            let r = find(group, "v1", "events").unwrap();
            let t = table(r, &[e], "1", None, IncludeObject::None);
            let cells = &t["rows"][0]["cells"];
            assert_eq!(cells[1], "Normal");
            assert_eq!(cells[3], "pod/p");
            assert_eq!(cells[4], "done");
            assert_eq!(cells[5], "e1");
        }
    }

    #[test]
    fn workload_and_network_cells() {
        let cells = |group: &str, plural: &str, o: Value| -> Vec<Value> {
            let r = find(group, "v1", plural).unwrap();
            let t = table(r, &[o], "1", None, IncludeObject::None);
            t["rows"][0]["cells"].as_array().unwrap().clone()
        };
        let template = json!({"spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let rs = json!({"metadata": {"name": "r"}, "spec": {"replicas": 3, "template": template,
            "selector": {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
            "status": {"replicas": 2, "readyReplicas": 1}});
        let c = cells("apps", "replicasets", rs);
        assert_eq!(&c[1..4], &[json!(3), json!(2), json!(1)]);
        assert_eq!(c[5], "c");
        assert_eq!(c[6], "nginx");
        assert_eq!(c[7], "app=web,tier in (a,b)");
        let sts = json!({"metadata": {"name": "s"}, "spec": {"replicas": 2},
            "status": {"readyReplicas": 2}});
        assert_eq!(cells("apps", "statefulsets", sts)[1], "2/2");
        let job = json!({"metadata": {"name": "j"}, "spec": {"completions": 1},
            "status": {"succeeded": 1, "startTime": "2024-01-01T00:00:00Z",
                "completionTime": "2024-01-01T00:00:05Z",
                "conditions": [{"type": "Complete", "status": "True"}]}});
        let c = cells("batch", "jobs", job);
        assert_eq!(&c[1..4], &[json!("Complete"), json!("1/1"), json!("5s")]);
        let np = json!({"metadata": {"name": "n"}, "spec": {"podSelector": {}}});
        assert_eq!(
            cells("networking.k8s.io", "networkpolicies", np)[1],
            "<none>"
        );
        let ing = json!({"metadata": {"name": "i"}, "spec": {"ingressClassName": "nginx",
            "rules": [{"host": "a.example"}], "tls": [{"hosts": ["a.example"]}]}});
        let c = cells("networking.k8s.io", "ingresses", ing);
        assert_eq!(
            &c[1..5],
            &[
                json!("nginx"),
                json!("a.example"),
                json!(""),
                json!("80, 443")
            ]
        );
    }
}
