//! End-to-end HTTP tests of `netlet-control-plane serve` (status codes, pagination, watch
//! errors), through `curl` with the admin client certificate.

mod support;

use std::time::Duration;

use serde_json::json;
use support::Server;

#[test]
fn http_status_codes() {
    let s = Server::start();
    // No client certificate: 401 Status.
    let (code, status) = s.curl_raw(
        &["--cacert", &s.pki("ca.crt")],
        "GET",
        "/api/v1/namespaces",
        None,
        None,
    );
    assert_eq!(code, 401);
    assert_eq!(status["reason"], "Unauthorized");

    let (code, _) = s.curl(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"t1"}})),
    );
    assert_eq!(code, 201);

    // 404 Status shape.
    let (code, status) = s.curl("GET", "/api/v1/namespaces/t1/configmaps/nope", None);
    assert_eq!(code, 404);
    assert_eq!(
        status,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"configmaps \"nope\" not found","reason":"NotFound",
            "details":{"name":"nope","group":"","kind":"configmaps"},"code":404})
    );

    // 422 invalid name, nothing stored.
    let (code, status) = s.curl(
        "POST",
        "/api/v1/namespaces/t1/configmaps",
        Some(&json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}})),
    );
    assert_eq!(code, 422);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");

    // 400 wrong kind and malformed field.
    let (code, _) = s.curl(
        "POST",
        "/api/v1/namespaces/t1/configmaps",
        Some(&json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"}})),
    );
    assert_eq!(code, 400);
    let (code, _) = s.curl(
        "POST",
        "/api/v1/namespaces/t1/configmaps",
        Some(&json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":"x"})),
    );
    assert_eq!(code, 400);

    // 409 AlreadyExists and stale update.
    let cm =
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c1"},"data":{"k":"1"}});
    let (code, created) = s.curl("POST", "/api/v1/namespaces/t1/configmaps", Some(&cm));
    assert_eq!(code, 201);
    let (code, status) = s.curl("POST", "/api/v1/namespaces/t1/configmaps", Some(&cm));
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let mut v2 = created.clone();
    v2["data"]["k"] = json!("2");
    let (code, updated) = s.curl("PUT", "/api/v1/namespaces/t1/configmaps/c1", Some(&v2));
    assert_eq!(code, 200);
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    let mut stale = created.clone();
    stale["data"]["k"] = json!("3");
    let (code, status) = s.curl("PUT", "/api/v1/namespaces/t1/configmaps/c1", Some(&stale));
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
    let (_, now) = s.curl("GET", "/api/v1/namespaces/t1/configmaps/c1", None);
    assert_eq!(now["data"]["k"], "2");

    // 413 oversize body.
    let big = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"k":"x".repeat(4 << 20)}});
    let (code, status) = s.curl("POST", "/api/v1/namespaces/t1/configmaps", Some(&big));
    assert_eq!(code, 413, "{status}");
    let (code, _) = s.curl("GET", "/api/v1/namespaces/t1/configmaps/big", None);
    assert_eq!(code, 404);

    // 415 unsupported patch type, 405 on a collection PUT.
    let (code, _) = s.curl(
        "PATCH",
        "/api/v1/namespaces/t1/configmaps/c1",
        Some(&json!({})),
    );
    assert_eq!(code, 415);
    let (code, status) = s.curl("PUT", "/api/v1/namespaces/t1/configmaps", Some(&cm));
    assert_eq!(
        (code, status["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
}

/// Which kinds carry `metadata.generation` and what a DELETE answers, as upstream: a Status of
/// Success for most kinds, the object itself for pods.
#[test]
fn http_generation_and_delete_answers_follow_the_kind() {
    let s = Server::start();
    let cm = json!({"apiVersion":"v1","kind":"ConfigMap",
        "metadata":{"name":"c","generation":7},"data":{"a":"1"}});
    let (code, created) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some(&cm));
    assert_eq!(code, 201, "{created}");
    assert!(created["metadata"].get("generation").is_none(), "{created}");
    let mut changed = created.clone();
    changed["data"]["a"] = json!("2");
    let (code, updated) = s.curl(
        "PUT",
        "/api/v1/namespaces/default/configmaps/c",
        Some(&changed),
    );
    assert_eq!(code, 200, "{updated}");
    assert!(updated["metadata"].get("generation").is_none(), "{updated}");
    let (code, deleted) = s.curl("DELETE", "/api/v1/namespaces/default/configmaps/c", None);
    assert_eq!(code, 200);
    assert_eq!(
        deleted,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success",
            "details":{"name":"c","kind":"configmaps","uid":created["metadata"]["uid"]}})
    );

    let deploy = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},
        "spec":{"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},
        "spec":{"containers":[{"name":"c","image":"i"}]}}}});
    let (code, created) = s.curl(
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        Some(&deploy),
    );
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    let (_, deleted) = s.curl(
        "DELETE",
        "/apis/apps/v1/namespaces/default/deployments/d",
        None,
    );
    assert_eq!(deleted["status"], "Success", "{deleted}");
    assert_eq!(deleted["details"]["group"], "apps", "{deleted}");
    assert_eq!(deleted["details"]["kind"], "deployments", "{deleted}");

    // An unbound pod goes at once, and the answer is the pod.
    let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
        "spec":{"containers":[{"name":"c","image":"i"}]}});
    let (code, _) = s.curl("POST", "/api/v1/namespaces/default/pods", Some(&pod));
    assert_eq!(code, 201);
    let (code, deleted) = s.curl("DELETE", "/api/v1/namespaces/default/pods/p", None);
    assert_eq!(code, 200);
    assert_eq!(deleted["kind"], "Pod", "{deleted}");
    assert_eq!(deleted["metadata"]["name"], "p", "{deleted}");
}

#[test]
fn watch_from_a_compacted_revision_is_410() {
    let s = Server::start_with(&["--compaction-interval", "1"]);
    let (code, _) = s.curl(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"t1"}})),
    );
    assert_eq!(code, 201);
    for i in 0..3 {
        let cm = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":format!("c{i}")}});
        assert_eq!(
            s.curl("POST", "/api/v1/namespaces/t1/configmaps", Some(&cm))
                .0,
            201
        );
    }
    // Compaction runs every second to the revision seen a second earlier: poll (bounded) until
    // revision 1 is gone, which the watch reports as an ERROR event.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = s.curl(
            "GET",
            "/api/v1/namespaces/t1/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1",
            None,
        );
        if body["type"] == "ERROR" || std::time::Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(200)); // polling for compaction to expire the watch: no event to wait on
    };
    assert_eq!(code, 200);
    assert_eq!(body["type"], "ERROR", "{body}");
    assert_eq!(body["object"]["code"], 410);
    assert_eq!(body["object"]["reason"], "Expired");
}

#[test]
fn http_list_pagination_and_selectors() {
    let s = Server::start();
    let ns = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"t1"}});
    let (code, created_ns) = s.curl("POST", "/api/v1/namespaces", Some(&ns));
    assert_eq!(code, 201);
    // The namespace's default ServiceAccount and kube-root-ca.crt ConfigMap take the next
    // revisions.
    let base: u64 = created_ns["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        + 2;
    for i in 0..5 {
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        let cm = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"c-","labels":{"env":env}}});
        let (code, created) = s.curl("POST", "/api/v1/namespaces/t1/configmaps", Some(&cm));
        assert_eq!(code, 201);
        assert!(created["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("c-"));
    }
    let (code, page1) = s.curl("GET", "/api/v1/namespaces/t1/configmaps?limit=2", None);
    assert_eq!(code, 200);
    assert_eq!(page1["kind"], "ConfigMapList");
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let rv = page1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rv, (base + 5).to_string());
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    // A write between pages must not show up: pages read one snapshot.
    let late = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"zz-late"}});
    assert_eq!(
        s.curl("POST", "/api/v1/namespaces/t1/configmaps", Some(&late))
            .0,
        201
    );
    let (_, page2) = s.curl(
        "GET",
        &format!("/api/v1/namespaces/t1/configmaps?limit=10&continue={token}"),
        None,
    );
    // The other three, and the namespace's kube-root-ca.crt.
    assert_eq!(page2["items"].as_array().unwrap().len(), 4);
    assert!(page2["metadata"].get("continue").is_none());
    // An exact snapshot read: two revisions after the namespace's own objects there were
    // two configmaps besides kube-root-ca.crt.
    let (code, old) = s.curl(
        "GET",
        &format!(
            "/api/v1/namespaces/t1/configmaps?resourceVersion={}&resourceVersionMatch=Exact",
            base + 2
        ),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(old["items"].as_array().unwrap().len(), 3);
    assert_eq!(old["metadata"]["resourceVersion"], (base + 2).to_string());
    let (code, status) = s.curl(
        "GET",
        "/api/v1/configmaps?resourceVersion=999&resourceVersionMatch=Exact",
        None,
    );
    assert_eq!((code, status["reason"].as_str()), (504, Some("Timeout")));

    let (_, prod) = s.curl(
        "GET",
        "/api/v1/namespaces/t1/configmaps?labelSelector=env%20in%20(prod)",
        None,
    );
    assert_eq!(prod["items"].as_array().unwrap().len(), 3);
    let (_, not_prod) = s.curl(
        "GET",
        "/api/v1/namespaces/t1/configmaps?labelSelector=env!%3Dprod",
        None,
    );
    assert_eq!(
        not_prod["items"].as_array().unwrap().len(),
        4,
        "two dev plus the unlabelled one and kube-root-ca.crt"
    );
    let (_, by_name) = s.curl(
        "GET",
        "/api/v1/configmaps?fieldSelector=metadata.name%3Dzz-late",
        None,
    );
    assert_eq!(by_name["items"][0]["metadata"]["namespace"], "t1");
    let (code, _) = s.curl(
        "GET",
        "/api/v1/configmaps?labelSelector=env%20in%20prod",
        None,
    );
    assert_eq!(code, 400);
}

fn events(body: &serde_json::Value) -> Vec<serde_json::Value> {
    let text = match body {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

#[test]
fn http_watch_replays_history_and_initial_state() {
    let s = Server::start();
    let ns = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"t1"}});
    let (code, created_ns) = s.curl("POST", "/api/v1/namespaces", Some(&ns));
    assert_eq!(code, 201);
    // The namespace's default ServiceAccount and kube-root-ca.crt ConfigMap take the next
    // revisions.
    let base: u64 = created_ns["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        + 2;
    let cm =
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","labels":{"w":"1"}}});
    let (_, created) = s.curl("POST", "/api/v1/namespaces/t1/configmaps", Some(&cm));
    let mut changed = created.clone();
    changed["data"] = json!({"k": "v"});
    assert_eq!(
        s.curl("PUT", "/api/v1/namespaces/t1/configmaps/c", Some(&changed))
            .0,
        200
    );
    assert_eq!(
        s.curl("DELETE", "/api/v1/namespaces/t1/configmaps/c", None)
            .0,
        200
    );
    let other = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"d"}});
    assert_eq!(
        s.curl("POST", "/api/v1/namespaces/t1/configmaps", Some(&other))
            .0,
        201
    );

    // From the namespace's revision: the history of the selected objects, in order.
    let (code, body) = s.curl(
        "GET",
        &format!("/api/v1/namespaces/t1/configmaps?watch=true&resourceVersion={base}&timeoutSeconds=1&labelSelector=w%3D1"),
        None,
    );
    assert_eq!(code, 200);
    let seen = events(&body);
    let types: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"], "{body}");
    let rvs: Vec<&str> = seen
        .iter()
        .map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (1..=3).map(|i| (base + i).to_string()).collect();
    assert_eq!(rvs, want);
    assert_eq!(seen[1]["object"]["data"]["k"], "v");

    // Without a resourceVersion: ADDED for what exists now, via the /watch/ path.
    let (_, body) = s.curl(
        "GET",
        "/api/v1/watch/namespaces/t1/configmaps?timeoutSeconds=1",
        None,
    );
    let seen = events(&body);
    assert_eq!(seen.len(), 2, "{body}");
    let mut names: Vec<&str> = seen
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "ADDED");
            e["object"]["metadata"]["name"].as_str().unwrap()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["d", "kube-root-ca.crt"]);
}

#[test]
fn http_status_subresource_splits_spec_and_status() {
    let s = Server::start();
    let ns = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"t1"}});
    assert_eq!(s.curl("POST", "/api/v1/namespaces", Some(&ns)).0, 201);
    let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
        "spec":{"containers":[{"name":"c","image":"nginx"}]},"status":{"phase":"Running"}});
    let (code, created) = s.curl("POST", "/api/v1/namespaces/t1/pods", Some(&pod));
    assert_eq!(code, 201);
    assert_eq!(
        created["status"]["phase"], "Pending",
        "status is not settable on create"
    );

    let mut via_status = created.clone();
    via_status["status"]["phase"] = json!("Running");
    via_status["spec"]["nodeName"] = json!("ignored");
    let (code, updated) = s.curl(
        "PUT",
        "/api/v1/namespaces/t1/pods/p/status",
        Some(&via_status),
    );
    assert_eq!(code, 200);
    assert_eq!(updated["status"]["phase"], "Running");
    assert!(updated["spec"].get("nodeName").is_none());

    let mut via_main = updated.clone();
    via_main["status"]["phase"] = json!("Failed");
    via_main["metadata"]["labels"] = json!({"a": "b"});
    let (code, updated) = s.curl("PUT", "/api/v1/namespaces/t1/pods/p", Some(&via_main));
    assert_eq!(code, 200);
    assert_eq!(updated["status"]["phase"], "Running");
    assert_eq!(updated["metadata"]["labels"]["a"], "b");
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
}

#[test]
fn http_discovery_legacy_and_aggregated() {
    let s = Server::start();
    let (code, legacy) = s.curl("GET", "/api/v1", None);
    assert_eq!(code, 200);
    assert_eq!(legacy["kind"], "APIResourceList");
    let (code, groups) = s.curl("GET", "/apis", None);
    assert_eq!(code, 200);
    assert_eq!(groups["kind"], "APIGroupList");

    let (ca, cert, key) = (s.pki("ca.crt"), s.pki("admin.crt"), s.pki("admin.key"));
    let accept = "Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let auth = [
        "--cacert", &ca, "--cert", &cert, "--key", &key, "-H", accept,
    ];
    let (code, aggregated) = s.curl_raw(&auth, "GET", "/apis", None, None);
    assert_eq!(code, 200);
    assert_eq!(aggregated["kind"], "APIGroupDiscoveryList");
    let names: Vec<&str> = aggregated["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "apps",
            "batch",
            "networking.k8s.io",
            "events.k8s.io",
            "coordination.k8s.io",
            "discovery.k8s.io"
        ]
    );

    let (code, openapi) = s.curl("GET", "/openapi/v3", None);
    assert_eq!(code, 200);
    assert!(openapi["paths"]["apis/apps/v1"]["serverRelativeURL"].is_string());
    let (code, swagger) = s.curl("GET", "/openapi/v2", None);
    assert_eq!((code, swagger["swagger"].as_str()), (200, Some("2.0")));
    assert!(swagger["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
}

#[test]
fn http_service_allocation_is_unique_under_concurrency_and_survives_restarts() {
    let mut s = Server::start_with(&["--service-cidr", "10.100.0.0/24"]);
    // The kubernetes Service takes the first address and points at this apiserver.
    let (code, k8s) = s.curl(
        "GET",
        "/api/v1/namespaces/default/services/kubernetes",
        None,
    );
    assert_eq!(code, 200, "{k8s}");
    assert_eq!(k8s["spec"]["clusterIP"], "10.100.0.1");
    let (code, slice) = s.curl(
        "GET",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
        None,
    );
    assert_eq!(code, 200, "{slice}");
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");

    // Parallel creates, each its own curl process: no IP or node port is handed out twice.
    let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    let svc = json!({"apiVersion":"v1","kind":"Service",
                        "metadata":{"name":format!("s{i}")},
                        "spec":{"type":"NodePort","ports":[{"port":80}]}});
                    s.curl("POST", "/api/v1/namespaces/default/services", Some(&svc))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for (code, svc) in &results {
        assert_eq!(*code, 201, "{svc}");
        let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.100.0.") && ip != "10.100.0.1", "{ip}");
        assert!(ips.insert(ip));
        let port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&port));
        assert!(ports.insert(port));
    }

    // After a restart the stored Services still hold their IPs and ports.
    s.restart();
    let (taken_ip, taken_port) = (
        results[0].1["spec"]["clusterIP"].clone(),
        results[0].1["spec"]["ports"][0]["nodePort"].clone(),
    );
    let (code, status) = s.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(
            &json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"dup-ip"},
            "spec":{"clusterIP":taken_ip,"ports":[{"port":80}]}}),
        ),
    );
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("provided IP is already allocated"),
        "{status}"
    );
    let (code, status) = s.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(
            &json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"dup-port"},
            "spec":{"type":"NodePort","ports":[{"port":80,"nodePort":taken_port}]}}),
        ),
    );
    assert_eq!(code, 422, "{status}");
    let (code, status) = s.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(
            &json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"outside"},
            "spec":{"clusterIP":"10.96.0.10","ports":[{"port":80}]}}),
        ),
    );
    assert_eq!(code, 422, "{status}");

    // Deleting frees the IP for a new Service; headless stays None.
    let name = results[0].1["metadata"]["name"].as_str().unwrap();
    let (code, _) = s.curl(
        "DELETE",
        &format!("/api/v1/namespaces/default/services/{name}"),
        None,
    );
    assert_eq!(code, 200);
    let (code, svc) = s.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"reuse"},
            "spec":{"clusterIP":taken_ip,"type":"NodePort","ports":[{"port":80,"nodePort":taken_port}]}})),
    );
    assert_eq!(code, 201, "{svc}");
    let (code, svc) = s.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(
            &json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"headless"},
            "spec":{"clusterIP":"None","ports":[{"port":80}]}}),
        ),
    );
    assert_eq!(
        (code, svc["spec"]["clusterIP"].as_str()),
        (201, Some("None"))
    );
}

#[test]
fn http_namespace_termination() {
    let s = Server::start();
    let ns = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"t2"}});
    assert_eq!(s.curl("POST", "/api/v1/namespaces", Some(&ns)).0, 201);
    let (code, sa) = s.curl("GET", "/api/v1/namespaces/t2/serviceaccounts/default", None);
    assert_eq!(code, 200, "{sa}");
    let (code, _) = s.curl(
        "GET",
        "/api/v1/namespaces/kube-system/serviceaccounts/default",
        None,
    );
    assert_eq!(code, 200);
    let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
        "spec":{"nodeName":"n1","containers":[{"name":"c","image":"nginx"}]}});
    assert_eq!(
        s.curl("POST", "/api/v1/namespaces/t2/pods", Some(&pod)).0,
        201
    );
    let cm = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}});
    assert_eq!(
        s.curl("POST", "/api/v1/namespaces/t2/configmaps", Some(&cm))
            .0,
        201
    );

    let (code, deleted) = s.curl("DELETE", "/api/v1/namespaces/t2", None);
    assert_eq!(code, 200);
    assert_eq!(deleted["status"]["phase"], "Terminating", "{deleted}");
    // The bound pod keeps the namespace until its agent is done; the rest is gone.
    let (code, _) = s.curl("GET", "/api/v1/namespaces/t2/configmaps/c", None);
    assert_eq!(code, 404);
    let (code, ns) = s.curl("GET", "/api/v1/namespaces/t2", None);
    assert_eq!(code, 200);
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    let (code, status) = s.curl("POST", "/api/v1/namespaces/t2/configmaps", Some(&cm));
    assert_eq!((code, status["reason"].as_str()), (403, Some("Forbidden")));
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("because it is being terminated"));
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "NamespaceTerminating"
    );

    let (code, _) = s.curl(
        "DELETE",
        "/api/v1/namespaces/t2/pods/p",
        Some(&json!({"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0})),
    );
    assert_eq!(code, 200);
    let (code, _) = s.curl("GET", "/api/v1/namespaces/t2", None);
    assert_eq!(code, 404, "the emptied namespace goes");
    assert_eq!(s.curl("POST", "/api/v1/namespaces", Some(&ns)).0, 201);
}
