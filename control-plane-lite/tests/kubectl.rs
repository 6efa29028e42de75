//! End-to-end tests with the stock `kubectl` against `netlet-control-plane serve`.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{wait_for, ChildGuard, Server};

#[test]
fn kubectl_version_and_api_resources() {
    let s = Server::start();
    let version = s.kubectl_ok(&["version"]);
    assert!(
        version.contains("Server Version: v1.33.0-netlet"),
        "{version}"
    );
    // Who the admin kubeconfig is, and what it may do (everything: no authorization yet).
    let who: Value =
        serde_json::from_str(&s.kubectl_ok(&["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "admin");
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        json!(["system:masters", "system:authenticated"])
    );
    assert_eq!(
        s.kubectl_ok(&["auth", "can-i", "create", "pods"]).trim(),
        "yes"
    );
    let rules = s.kubectl_ok(&["auth", "can-i", "--list"]);
    assert!(rules.contains("*.*"), "{rules}");
    // A service account token from `kubectl create token` is another user.
    // (Its own kubeconfig: with the admin one's client certificate also sent, the certificate
    // decides, as in Kubernetes.)
    let token = s.kubectl_ok(&["create", "token", "default", "--duration", "10m"]);
    let admin = std::fs::read_to_string(s.dir.path().join("admin.kubeconfig")).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap();
    let kubeconfig = s.dir.path().join("token.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: x\n  context: {{cluster: c, user: sa}}\ncurrent-context: x\n",
            s.pki("ca.crt"),
            token.trim()
        ),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .env("HOME", s.dir.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "system:serviceaccount:default:default",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resources = s.kubectl_ok(&["api-resources"]);
    for needle in [
        "configmaps",
        "deployments",
        "endpointslices",
        "leases",
        "ns ",
    ] {
        assert!(
            resources.contains(needle),
            "{needle} missing in {resources}"
        );
    }
}

#[test]
fn kubectl_configmap_lifecycle() {
    let s = Server::start();
    s.kubectl_ok(&["create", "namespace", "t1"]);
    let ns = s.kubectl_ok(&["get", "ns"]);
    assert!(ns.contains("t1") && ns.contains("Active"), "{ns}");
    for system in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(system), "{system} missing in {ns}");
    }
    // Without -n kubectl uses the default namespace, which exists from the start.
    s.kubectl_ok(&["create", "configmap", "in-default"]);
    // Every namespace also holds the cluster CA for in-cluster clients.
    assert_eq!(
        s.kubectl_ok(&["get", "cm", "-o", "name"]).trim(),
        "configmap/in-default\nconfigmap/kube-root-ca.crt"
    );

    s.kubectl_ok(&[
        "create",
        "configmap",
        "cm1",
        "--from-literal=a=b",
        "-n",
        "t1",
    ]);
    let list: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "cm", "-n", "t1", "-o", "json"])).unwrap();
    assert_eq!(list["items"][0]["data"], json!({"a": "b"}));
    assert_eq!(list["items"][0]["metadata"]["name"], "cm1");
    let yaml = s.kubectl_ok(&["get", "cm", "cm1", "-n", "t1", "-o", "yaml"]);
    assert!(
        yaml.contains("name: cm1") && yaml.contains("a: b"),
        "{yaml}"
    );

    s.kubectl_ok(&["label", "cm", "cm1", "x=y", "-n", "t1"]);
    let names = s.kubectl_ok(&["get", "cm", "-l", "x=y", "-n", "t1", "-o", "name"]);
    assert_eq!(names.trim(), "configmap/cm1");
    let none = s.kubectl_ok(&["get", "cm", "-l", "x=z", "-n", "t1", "-o", "name"]);
    assert_eq!(none.trim(), "");
    let table = s.kubectl_ok(&["get", "cm", "-n", "t1"]);
    assert!(table.contains("DATA") && table.contains("cm1"), "{table}");

    s.kubectl_ok(&["delete", "cm", "cm1", "-n", "t1"]);
    let gone = s.kubectl(&["get", "cm", "cm1", "-n", "t1"]);
    assert!(!gone.status.success());
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        stderr.contains("(NotFound)") && stderr.contains("configmaps \"cm1\" not found"),
        "{stderr}"
    );

    let missing_ns = s.kubectl(&["create", "configmap", "x", "-n", "nope"]);
    assert!(String::from_utf8_lossy(&missing_ns.stderr).contains("namespaces \"nope\" not found"));
}

#[test]
fn kubectl_pod_from_manifest() {
    let s = Server::start();
    s.kubectl_ok(&["create", "namespace", "t1"]);
    let manifest = s.dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: nginx\n",
    )
    .unwrap();
    // Default validation: kubectl reads /openapi/v3 and leaves it to the server (Strict).
    let file = manifest.display().to_string();
    s.kubectl_ok(&["create", "-f", &file, "-n", "t1"]);
    let typo = s.dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p2\nspec:\n  containers:\n  - name: c\n    imagee: nginx\n",
    )
    .unwrap();
    let rejected = s.kubectl(&["create", "-f", &typo.display().to_string(), "-n", "t1"]);
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        stderr.contains("unknown field \"spec.containers[0].imagee\""),
        "{stderr}"
    );
    let wide = s.kubectl_ok(&["get", "pods", "-n", "t1", "-o", "wide"]);
    for needle in [
        "READY", "STATUS", "RESTARTS", "NODE", "p1", "0/1", "Pending",
    ] {
        assert!(wide.contains(needle), "{needle} missing in {wide}");
    }
    let pod: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "pod", "p1", "-n", "t1", "-o", "json"]))
            .unwrap();
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(pod["metadata"]["generation"], 1);
    assert!(pod["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| u.len() == 36));
    let pods = s.kubectl_ok(&["get", "pods", "-n", "t1", "-o", "name"]);
    assert_eq!(pods.trim(), "pod/p1", "the rejected pod must not be stored");
}

#[test]
fn kubectl_apply_and_scale_deployment() {
    let s = Server::start();
    s.kubectl_ok(&["create", "namespace", "t1"]);
    let manifest = s.dir.path().join("deploy.yaml");
    let write = |replicas: u32| {
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: c\n        image: nginx\n"
            ),
        )
        .unwrap();
    };
    let file = manifest.display().to_string();
    write(2);
    assert!(s
        .kubectl_ok(&["apply", "-f", &file, "-n", "t1"])
        .contains("created"));
    let table = s.kubectl_ok(&["get", "deploy", "-n", "t1"]);
    for needle in ["READY", "UP-TO-DATE", "AVAILABLE", "web", "0/2"] {
        assert!(table.contains(needle), "{needle} missing in {table}");
    }
    write(3);
    let dry = s.kubectl_ok(&["apply", "-f", &file, "-n", "t1", "--dry-run=server"]);
    assert!(dry.contains("server dry run"), "{dry}");
    assert_eq!(
        s.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "t1",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "2",
        "a dry run stores nothing"
    );
    assert!(s
        .kubectl_ok(&["apply", "-f", &file, "-n", "t1"])
        .contains("configured"));
    let replicas = |s: &Server| {
        s.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "t1",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
    };
    assert_eq!(replicas(&s), "3");
    s.kubectl_ok(&["scale", "deploy", "web", "--replicas=5", "-n", "t1"]);
    assert_eq!(replicas(&s), "5");
    let generation = s.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "t1",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    assert_eq!(generation, "3");
}

#[test]
fn kubectl_watch_sees_added_and_deleted() {
    let s = Server::start();
    s.kubectl_ok(&["create", "namespace", "t1"]);
    s.kubectl_ok(&["create", "configmap", "sentinel", "-n", "t1"]);
    let out_path = s.dir.path().join("watch.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let watcher = ChildGuard::new(
        Command::new("kubectl")
            .env("HOME", s.dir.path())
            .arg("--kubeconfig")
            .arg(s.dir.path().join("admin.kubeconfig"))
            .args(["get", "cm", "-n", "t1", "-w", "--output-watch-events"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl watch"),
    );
    // The watch is established once its initial list (the sentinel) has been printed.
    let listed = wait_for(&out_path, "sentinel", Duration::from_secs(15));
    assert!(
        listed.contains("sentinel"),
        "kubectl watch never listed: {listed}"
    );
    s.kubectl_ok(&["create", "configmap", "w1", "-n", "t1"]);
    s.kubectl_ok(&["delete", "configmap", "w1", "-n", "t1"]);
    let seen = wait_for(&out_path, "DELETED", Duration::from_secs(15));
    drop(watcher);
    assert!(seen.contains("ADDED") && seen.contains("w1"), "{seen}");
    assert!(seen.contains("DELETED"), "{seen}");
}

#[test]
fn kubectl_typed_creates_patches_and_namespace_delete() {
    let s = Server::start();
    s.kubectl_ok(&["create", "namespace", "t1"]);
    // kubectl 1.32+ sends these bodies as protobuf.
    s.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=k=v",
        "-n",
        "t1",
    ]);
    s.kubectl_ok(&["create", "serviceaccount", "sa1", "-n", "t1"]);
    s.kubectl_ok(&[
        "create",
        "deployment",
        "d1",
        "--image=nginx",
        "--port=80",
        "--replicas=2",
        "-n",
        "t1",
    ]);
    s.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "s1",
        "--tcp=80:8080",
        "-n",
        "t1",
    ]);
    let secret = s.kubectl_ok(&[
        "get",
        "secret",
        "s1",
        "-n",
        "t1",
        "-o",
        "jsonpath={.data.k}",
    ]);
    assert_eq!(secret, "dg==");
    let all = s.kubectl_ok(&["get", "all", "-n", "t1"]);
    assert!(
        all.contains("deployment.apps/d1") && all.contains("0/2"),
        "{all}"
    );
    assert!(
        all.contains("service/s1") && all.contains("80/TCP"),
        "{all}"
    );

    s.kubectl_ok(&["create", "configmap", "c", "-n", "t1", "--from-literal=a=b"]);
    s.kubectl_ok(&[
        "patch",
        "cm",
        "c",
        "-n",
        "t1",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/z","value":"1"}]"#,
    ]);
    s.kubectl_ok(&[
        "patch",
        "cm",
        "c",
        "-n",
        "t1",
        "--type=merge",
        "-p",
        r#"{"data":{"a":null,"q":"2"}}"#,
    ]);
    s.kubectl_ok(&[
        "patch",
        "cm",
        "c",
        "-n",
        "t1",
        "-p",
        r#"{"metadata":{"labels":{"s":"m"}}}"#,
    ]);
    let cm: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "cm", "c", "-n", "t1", "-o", "json"])).unwrap();
    assert_eq!(cm["data"], json!({"q": "2", "z": "1"}));
    assert_eq!(cm["metadata"]["labels"]["s"], "m");
    let bad = s.kubectl(&[
        "patch",
        "cm",
        "c",
        "-n",
        "t1",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/nope"}]"#,
    ]);
    assert!(!bad.status.success());

    let described = s.kubectl_ok(&["describe", "deployment", "d1", "-n", "t1"]);
    assert!(described.contains("Replicas:"), "{described}");

    s.kubectl_ok(&["delete", "namespace", "t1"]);
    s.kubectl_ok(&["create", "namespace", "t1"]);
    let left = s.kubectl_ok(&["get", "cm,secret,deploy,svc", "-n", "t1", "-o", "name"]);
    // Only what every new namespace gets.
    assert_eq!(
        left.trim(),
        "configmap/kube-root-ca.crt",
        "namespace delete must remove its objects"
    );
}

#[test]
fn kubectl_apply_and_set_image_merge_containers_by_name() {
    let s = Server::start();
    s.kubectl_ok(&["create", "namespace", "t1"]);
    let manifest = s.dir.path().join("two.yaml");
    let write = |tag: &str| {
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: a\n        image: nginx:{tag}\n        ports: [{{containerPort: 80}}]\n      - name: b\n        image: busybox:1\n        env: [{{name: X, value: \"1\"}}]\n"
            ),
        )
        .unwrap();
    };
    let file = manifest.display().to_string();
    write("1");
    s.kubectl_ok(&["apply", "-f", &file, "-n", "t1"]);
    write("2");
    s.kubectl_ok(&["apply", "-f", &file, "-n", "t1"]);
    s.kubectl_ok(&["set", "image", "deploy/web", "b=busybox:2", "-n", "t1"]);
    s.kubectl_ok(&["set", "env", "deploy/web", "Y=2", "-c", "b", "-n", "t1"]);
    let d: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "deploy", "web", "-n", "t1", "-o", "json"]))
            .unwrap();
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "nginx:2");
    assert_eq!(
        containers[0]["ports"],
        json!([{"containerPort": 80, "protocol": "TCP"}])
    );
    assert_eq!(containers[1]["image"], "busybox:2");
    assert_eq!(
        containers[1]["env"],
        json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
    );
    assert_eq!(d["metadata"]["generation"], 4);
}

#[test]
fn kubectl_services_get_cluster_ips_and_node_ports() {
    let s = Server::start();
    s.kubectl_ok(&["create", "service", "nodeport", "web", "--tcp=80:8080"]);
    s.kubectl_ok(&["create", "service", "clusterip", "db", "--tcp=5432"]);
    s.kubectl_ok(&["create", "service", "clusterip", "hl", "--clusterip=None"]);
    let table = s.kubectl_ok(&["get", "svc"]);
    for needle in [
        "kubernetes",
        "10.96.0.1",
        "443/TCP",
        "NodePort",
        "80:3",
        "hl",
        "None",
    ] {
        assert!(table.contains(needle), "{needle} missing in {table}");
    }
    let ip = s.kubectl_ok(&["get", "svc", "db", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip.starts_with("10.") && ip != "10.96.0.1", "{ip}");
    // Type changes keep the IP and release the node port.
    s.kubectl_ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    let web = s.kubectl_ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    assert_eq!(web, "");
    let taken = s.kubectl(&[
        "create",
        "service",
        "clusterip",
        "x",
        "--tcp=80",
        "--clusterip",
        &ip,
    ]);
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(
        stderr.contains("provided IP is already allocated"),
        "{stderr}"
    );
}

#[test]
fn kubectl_graceful_pod_deletion_and_finalizers() {
    let s = Server::start();
    let manifest = s.dir.path().join("objects.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bound\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 20\n  containers:\n  - name: c\n    image: nginx\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: unbound\nspec:\n  containers:\n  - name: c\n    image: nginx\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n",
    )
    .unwrap();
    s.kubectl_ok(&["create", "-f", &manifest.display().to_string()]);
    let out_path = s.dir.path().join("watch.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let watcher = ChildGuard::new(
        Command::new("kubectl")
            .env("HOME", s.dir.path())
            .arg("--kubeconfig")
            .arg(s.dir.path().join("admin.kubeconfig"))
            .args(["get", "pods", "-w", "--output-watch-events"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl watch"),
    );
    // The watch is established once its initial list has been printed.
    let listed = wait_for(&out_path, "unbound", Duration::from_secs(15));
    assert!(
        listed.contains("unbound"),
        "kubectl watch never listed: {listed}"
    );

    // Not on a node: gone at once.
    s.kubectl_ok(&["delete", "pod", "unbound"]);
    assert!(!s.kubectl(&["get", "pod", "unbound"]).status.success());

    // On a node: marked, shown Terminating, removed by the agent's grace-0 delete.
    s.kubectl_ok(&["delete", "pod", "bound", "--wait=false"]);
    let pod: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "pod", "bound", "-o", "json"])).unwrap();
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 20);
    let table = s.kubectl_ok(&["get", "pods"]);
    assert!(table.contains("Terminating"), "{table}");
    let (code, _) = s.curl(
        "DELETE",
        "/api/v1/namespaces/default/pods/bound?gracePeriodSeconds=0",
        None,
    );
    assert_eq!(code, 200);
    assert!(!s.kubectl(&["get", "pod", "bound"]).status.success());
    let event = |seen: &str, kind: &str| {
        seen.lines()
            .any(|l| l.starts_with(kind) && l.contains("bound") && !l.contains("unbound"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    while !event(&seen, "DELETED") && std::time::Instant::now() < deadline {
        seen = wait_for(&out_path, "DELETED", Duration::from_millis(500));
    }
    drop(watcher);
    assert!(
        event(&seen, "MODIFIED") && seen.contains("Terminating"),
        "{seen}"
    );
    assert!(event(&seen, "DELETED"), "{seen}");

    // Finalizers hold any object until an update empties them.
    s.kubectl_ok(&["delete", "cm", "held", "--wait=false"]);
    let stamp = s.kubectl_ok(&[
        "get",
        "cm",
        "held",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!stamp.is_empty());
    let more = s.kubectl(&[
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}"#,
    ]);
    assert!(!more.status.success(), "no new finalizers while deleting");
    s.kubectl_ok(&[
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert!(!s.kubectl(&["get", "cm", "held"]).status.success());
}

#[test]
fn kubectl_workloads_and_networking_kinds() {
    let s = Server::start();
    let manifest = s.dir.path().join("kinds.yaml");
    let template = "  selector:\n    matchLabels: {app: w}\n  template:\n    metadata:\n      labels: {app: w}\n    spec:\n      containers:\n      - name: c\n        image: nginx:1.27\n";
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: rs1\nspec:\n  replicas: 2\n{template}---\n\
             apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: sts1\nspec:\n  serviceName: sts1\n{template}---\n\
             apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: ds1\nspec:\n{template}---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np1\nspec:\n  podSelector:\n    matchLabels: {{app: w}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: ing1\nspec:\n  rules:\n  - host: a.example\n"
        ),
    )
    .unwrap();
    s.kubectl_ok(&["apply", "-f", &manifest.display().to_string()]);
    s.kubectl_ok(&["create", "job", "j1", "--image=busybox"]);

    let table = s.kubectl_ok(&["get", "rs,sts,ds,jobs,netpol,ing"]);
    for needle in [
        "replicaset.apps/rs1",
        "DESIRED",
        "statefulset.apps/sts1",
        "0/1",
        "daemonset.apps/ds1",
        "NODE SELECTOR",
        "job.batch/j1",
        "COMPLETIONS",
        "Running",
        "networkpolicy.networking.k8s.io/np1",
        "app=w",
        "ingress.networking.k8s.io/ing1",
        "a.example",
    ] {
        assert!(table.contains(needle), "{needle} missing in {table}");
    }
    let all = s.kubectl_ok(&["get", "all", "-o", "name"]);
    for needle in [
        "replicaset.apps/rs1",
        "statefulset.apps/sts1",
        "daemonset.apps/ds1",
        "job.batch/j1",
    ] {
        assert!(all.contains(needle), "{needle} missing in {all}");
    }
    // The Job selects its pods by uid, as the Job registry sets it up.
    let selector = s.kubectl_ok(&[
        "get",
        "job",
        "j1",
        "-o",
        "jsonpath={.spec.selector.matchLabels}",
    ]);
    assert!(
        selector.contains("batch.kubernetes.io/controller-uid"),
        "{selector}"
    );

    s.kubectl_ok(&["scale", "rs", "rs1", "--replicas=4"]);
    s.kubectl_ok(&["scale", "sts", "sts1", "--replicas=3"]);
    let replicas = s.kubectl_ok(&["get", "rs,sts", "-o", "jsonpath={.items[*].spec.replicas}"]);
    assert_eq!(replicas, "4 3");
    // The status subresource only changes status.
    s.kubectl_ok(&[
        "patch",
        "rs",
        "rs1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":4,"readyReplicas":4},"spec":{"replicas":9}}"#,
    ]);
    let rs = s.kubectl_ok(&["get", "rs", "rs1"]);
    assert!(rs.contains("4         4         4"), "{rs}");
}

#[test]
fn kubectl_events_in_both_api_groups() {
    let s = Server::start();
    let (code, created) = s.curl(
        "POST",
        "/api/v1/namespaces/default/events",
        Some(
            &json!({"apiVersion":"v1","kind":"Event","metadata":{"name":"e1"},
            "involvedObject":{"kind":"Pod","name":"p1","namespace":"default"},
            "reason":"Pulled","message":"image pulled","type":"Normal","count":1}),
        ),
    );
    assert_eq!(code, 201, "{created}");
    let (code, created) = s.curl(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        Some(
            &json!({"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"e2"},
            "eventTime":"2024-01-01T00:00:00.000000Z","reportingController":"netlet",
            "reportingInstance":"n1","action":"Pulling",
            "regarding":{"kind":"Pod","name":"p2","namespace":"default"},
            "reason":"Failed","note":"pull failed","type":"Warning"}),
        ),
    );
    assert_eq!(code, 201, "{created}");
    let table = s.kubectl_ok(&["get", "events"]);
    for needle in [
        "LAST SEEN",
        "pod/p1",
        "image pulled",
        "Warning",
        "pod/p2",
        "pull failed",
    ] {
        assert!(table.contains(needle), "{needle} missing in {table}");
    }
    let core: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "events", "e2", "-o", "json"])).unwrap();
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["message"], "pull failed");
    assert_eq!(core["reportingComponent"], "netlet");
    let new: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "events.events.k8s.io", "e1", "-o", "json"]))
            .unwrap();
    assert_eq!(new["apiVersion"], "events.k8s.io/v1");
    assert_eq!(new["regarding"]["name"], "p1");
    assert_eq!(new["note"], "image pulled");
    assert_eq!(new["deprecatedCount"], 1);
}

#[test]
fn kubectl_drain_evicts_the_pods_of_a_node() {
    let s = Server::start();
    let manifest = s.dir.path().join("drain.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: on-n1\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: nginx\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: on-n2\nspec:\n  nodeName: n2\n  containers:\n  - name: c\n    image: nginx\n",
    )
    .unwrap();
    s.kubectl_ok(&["create", "-f", &manifest.display().to_string()]);
    // --force: the pods have no controller; --grace-period=0: no agent is there to finish a
    // graceful deletion, so drain's wait for the pod to go would time out.
    // -v=6 logs each request, showing that drain used the eviction subresource.
    let drain = s.kubectl(&[
        "drain",
        "n1",
        "--force",
        "--grace-period=0",
        "--timeout=30s",
        "-v=6",
    ]);
    let (out, log) = (
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr),
    );
    assert!(drain.status.success(), "{out}\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("POST") && l.contains("/pods/on-n1/eviction") && l.contains("201")),
        "{log}"
    );
    assert!(out.contains("pod/on-n1 evicted"), "{out}");
    assert!(out.contains("node/n1 drained"), "{out}");
    assert!(!s.kubectl(&["get", "pod", "on-n1"]).status.success());
    s.kubectl_ok(&["get", "pod", "on-n2"]);
    let unschedulable =
        s.kubectl_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(unschedulable, "true");
}

#[test]
fn kubectl_explain_and_apply_validation_use_openapi_v3() {
    let s = Server::start();
    let explained = s.kubectl_ok(&["explain", "pod.spec.containers"]);
    for needle in [
        "KIND:       Pod",
        "VERSION:    v1",
        "FIELD: containers <[]Container>",
        "image\t<string>",
        "imagePullPolicy\t<string>",
        "ports\t<[]ContainerPort>",
    ] {
        assert!(
            explained.contains(needle),
            "{needle:?} missing in {explained}"
        );
    }
    let deployment = s.kubectl_ok(&["explain", "deployments.spec.replicas"]);
    assert!(
        deployment.contains("GROUP:      apps") && deployment.contains("<integer>"),
        "{deployment}"
    );

    // Default validation: a clean manifest applies, then re-applies as a patch.
    let manifest = s.dir.path().join("pod.yaml");
    let pod = |extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\nspec:\n  containers:\n  - name: c\n    image: nginx\n{extra}")
    };
    let file = manifest.display().to_string();
    std::fs::write(&manifest, pod("")).unwrap();
    s.kubectl_ok(&["apply", "-f", &file]);
    std::fs::write(&manifest, pod("    workingDir: /srv\n")).unwrap();
    let reapply = s.kubectl(&["apply", "-f", &file]);
    let stderr = String::from_utf8_lossy(&reapply.stderr);
    assert!(reapply.status.success(), "{stderr}");
    // kubectl computed the patch without complaint (from its compiled-in types).
    assert!(!stderr.contains("warning"), "{stderr}");
    let dir = s.kubectl_ok(&[
        "get",
        "pod",
        "p1",
        "-o",
        "jsonpath={.spec.containers[0].workingDir}",
    ]);
    assert_eq!(dir, "/srv");

    // An unknown field fails kubectl's strict validation, on create and on patch alike.
    for (name, extra) in [("p1", "    imagee: x\n"), ("p2", "    imagee: x\n")] {
        let text = pod(extra).replace("name: p1", &format!("name: {name}"));
        std::fs::write(&manifest, text).unwrap();
        let out = s.kubectl(&["apply", "-f", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("strict decoding error: unknown field \"spec.containers[0].imagee\""),
            "{name}: {stderr}"
        );
    }
    assert!(!s.kubectl(&["get", "pod", "p2"]).status.success());
}

/// kubectl 1.27 and 1.28 load `/openapi/v2` (gnostic protobuf) before `apply`; with it they
/// apply, drop removed containers, fields and list entries through the patch-merge keys the
/// schemas publish, and leave unknown fields to the server's strict validation.
#[test]
fn older_kubectl_applies_with_openapi_v2() {
    let s = Server::start();
    let manifest = s.dir.path().join("deploy.yaml");
    let file = manifest.display().to_string();
    let deployment = |containers: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: old\nspec:\n  selector:\n    \
             matchLabels: {{app: old}}\n  template:\n    metadata:\n      labels: {{app: old}}\n    \
             spec:\n      containers:\n{containers}"
        )
    };
    let first =
        "      - name: a\n        image: img:1\n        args: [x]\n        env: [{name: A, \
                 value: '1'}, {name: B, value: '2'}]\n      - name: b\n        image: img:2\n";
    let second = "      - name: a\n        image: img:3\n        env: [{name: A, value: '1'}]\n";
    for version in ["1.27", "1.28"] {
        let kubectl = format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}");
        assert!(
            std::path::Path::new(&kubectl).exists(),
            "{kubectl} missing: the machine image ships the Cloud SDK's versioned kubectl"
        );
        let run = |args: &[&str]| {
            let out = Command::new(&kubectl)
                .env("HOME", s.dir.path())
                .arg("--kubeconfig")
                .arg(s.dir.path().join("admin.kubeconfig"))
                .args(args)
                .output()
                .expect("run kubectl");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        s.kubectl(&["delete", "deployment", "old", "--ignore-not-found"]);
        std::fs::write(&manifest, deployment(first)).unwrap();
        let (ok, _, err) = run(&["apply", "-f", &file]);
        assert!(ok, "kubectl {version} apply: {err}");
        std::fs::write(&manifest, deployment(second)).unwrap();
        let (ok, _, err) = run(&["apply", "-f", &file]);
        assert!(ok, "kubectl {version} re-apply: {err}");
        let (_, out, _) = run(&[
            "get",
            "deployment",
            "old",
            "-o",
            "jsonpath={.spec.template.spec.containers}",
        ]);
        let containers: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(containers.as_array().unwrap().len(), 1, "{version}: {out}");
        assert_eq!(containers[0]["image"], "img:3", "{version}: {out}");
        assert!(containers[0].get("args").is_none(), "{version}: {out}");
        assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}]));
        std::fs::write(&manifest, deployment(&second.replace("env:", "envv:"))).unwrap();
        let (ok, _, err) = run(&["apply", "-f", &file]);
        assert!(
            !ok && err.contains("unknown field"),
            "kubectl {version}: {err}"
        );
    }
}

/// `kubectl apply --server-side`: creates, re-applies (a dropped label goes, a field set by
/// someone else stays), refuses another manager's change to an owned field with a conflict
/// naming it, and `--force-conflicts` takes the field over.
#[test]
fn kubectl_server_side_apply_owns_fields_and_reports_conflicts() {
    let s = Server::start();
    s.kubectl_ok(&["create", "namespace", "ssa"]);
    let manifest = s.dir.path().join("cm.yaml");
    let write = |data: &str, labels: &str| {
        std::fs::write(
            &manifest,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  labels: {labels}\ndata: {data}\n"),
        )
        .unwrap();
    };
    let file = manifest.display().to_string();
    let apply = |extra: &[&str]| {
        let mut args = vec!["apply", "--server-side", "-f", &file, "-n", "ssa"];
        args.extend_from_slice(extra);
        s.kubectl(&args)
    };
    write("{a: '1', b: '2'}", "{app: web, tier: x}");
    let out = apply(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("serverside-applied"));
    let get = |path: &str| {
        s.kubectl_ok(&[
            "get",
            "cm",
            "cfg",
            "-n",
            "ssa",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    assert_eq!(get("{.metadata.managedFields[0].manager}"), "kubectl");
    assert_eq!(get("{.metadata.managedFields[0].operation}"), "Apply");
    // Someone else adds a label with a plain patch; kubectl's next apply drops `tier` and
    // changes `a`.
    s.kubectl_ok(&["label", "cm", "cfg", "-n", "ssa", "extra=yes"]);
    write("{a: '10', b: '2'}", "{app: web}");
    let out = apply(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get("{.data.a}"), "10");
    assert_eq!(
        get("{.metadata.labels.tier}"),
        "",
        "dropped from the applied config"
    );
    assert_eq!(
        get("{.metadata.labels.extra}"),
        "yes",
        "not kubectl's to remove"
    );

    // A second manager changing `a` conflicts and names the field and its owner.
    let other = s.dir.path().join("other.yaml");
    std::fs::write(
        &other,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a: '99'\n",
    )
    .unwrap();
    let other = other.display().to_string();
    let out = s.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=robot",
        "-f",
        &other,
        "-n",
        "ssa",
    ]);
    assert!(!out.status.success(), "a conflict must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict") && err.contains("kubectl") && err.contains(".data.a"),
        "{err}"
    );
    assert_eq!(get("{.data.a}"), "10", "nothing stored");
    s.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=robot",
        "--force-conflicts",
        "-f",
        &other,
        "-n",
        "ssa",
    ]);
    assert_eq!(get("{.data.a}"), "99");
    assert_eq!(get("{.data.b}"), "2", "kubectl still owns b");
    // A request without a field manager is a 400 Status naming it.
    let body = s.dir.path().join("apply.json");
    std::fs::write(
        &body,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg"}}"#,
    )
    .unwrap();
    let (ca, cert, key) = (s.pki("ca.crt"), s.pki("admin.crt"), s.pki("admin.key"));
    let (code, status) = s.curl_raw(
        &["--cacert", &ca, "--cert", &cert, "--key", &key],
        "PATCH",
        "/api/v1/namespaces/ssa/configmaps/cfg",
        Some("application/apply-patch+yaml"),
        Some(&body),
    );
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("fieldManager"),
        "{status}"
    );
}
