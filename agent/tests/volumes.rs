//! Pod volumes against a real containerd and our apiserver: what containers see in their
//! emptyDir, configMap, secret, downwardAPI, hostPath and service account token volumes, that ConfigMap updates reach
//! a running container, that volumes outlive container restarts and go with the pod, and the
//! waiting reasons and events of volumes that cannot be set up.
//!
//! Uses the node fixture of `support/pod_node.rs` (own containerd in an `nlt-` namespace, own
//! apiserver, `pods::run` in the test process); the fixture puts the pods dir under the
//! containerd temp dir.

#[path = "support/pod_node.rs"]
mod pod_node;
#[allow(dead_code)] // this test uses only part of the containerd fixture
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use pod_node::*;
use serde_json::json;
use support::containerd::TESTAPP_IMAGE;

/// A container that runs until SIGTERM (exits 0 then), with `mounts`.
fn sleeper(name: &str, mounts: serde_json::Value) -> serde_json::Value {
    json!({
        "name": name,
        "image": TESTAPP_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
        "volumeMounts": mounts,
    })
}

/// A pod on the test node with `containers` and `volumes`.
fn pod(name: &str, containers: serde_json::Value, volumes: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "labels": { "app": name, "tier": "test" } },
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 5,
            "containers": containers,
            "volumes": volumes,
        },
    })
}

/// The runtime id of container `c` of pod `name` once it runs with `restarts` restarts.
async fn running_id(node: &Node, name: &str, c: &str, restarts: i32) -> String {
    node.wait_pod(
        name,
        &format!("{c} running"),
        Duration::from_secs(60),
        |p| {
            let cs = status(p, c)?;
            cs.state.as_ref()?.running.as_ref()?;
            (cs.restart_count == restarts).then_some(())?;
            Some(
                cs.container_id
                    .as_deref()?
                    .strip_prefix("containerd://")?
                    .to_string(),
            )
        },
    )
    .await
}

/// Polls until container `c` of pod `name` waits with `reason`; returns the message.
async fn waits_with(node: &Node, name: &str, c: &str, reason: &str) -> String {
    node.wait_pod(name, reason, Duration::from_secs(60), |p| {
        let cs = status(p, c)?;
        let w = cs.state.as_ref()?.waiting.as_ref()?;
        (w.reason.as_deref() == Some(reason)).then(|| w.message.clone().unwrap_or_default())
    })
    .await
}

/// Deletes pod `name` and polls until the API no longer has it.
async fn delete_and_wait(node: &Node, name: &str) {
    node.pods()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.pods().get_opt(name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "pod {name} not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_volumes_see_configmap_updates_and_volumes_go_with_the_pod() {
    let mut node = Node::start("vols").await;
    node.settings().await;
    let host_dir = node.ctrd.dir().join("host-data/app");
    let containers = json!([
        sleeper(
            "app",
            json!([
                { "name": "cache", "mountPath": "/cache" },
                { "name": "mem", "mountPath": "/mem" },
                { "name": "cfg", "mountPath": "/etc/cfg" },
                { "name": "cfg-items", "mountPath": "/etc/cfg-items" },
                { "name": "cfg", "mountPath": "/etc/color", "subPath": "color" },
                { "name": "creds", "mountPath": "/etc/creds" },
                { "name": "info", "mountPath": "/etc/info" },
            { "name": "all-in-one", "mountPath": "/etc/all" },
                { "name": "host", "mountPath": "/host" },
                { "name": "host", "mountPath": "/host-ro", "readOnly": true },
            ])
        ),
        sleeper(
            "side",
            json!([
                { "name": "cache", "mountPath": "/shared" },
                { "name": "cache", "mountPath": "/sub", "subPath": "sub/dir" },
            ])
        ),
    ]);
    let volumes = json!([
        { "name": "cache", "emptyDir": {} },
        { "name": "mem", "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } },
        { "name": "cfg", "configMap": { "name": "settings" } },
        { "name": "cfg-items", "configMap": {
            "name": "settings", "defaultMode": 0o640,
            "items": [{ "key": "color", "path": "nested/colour", "mode": 0o600 }],
        } },
        { "name": "creds", "secret": { "secretName": "creds", "defaultMode": 0o400 } },
        { "name": "info", "downwardAPI": { "items": [
            { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
            { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
        ] } },
        { "name": "host", "hostPath": { "path": host_dir, "type": "DirectoryOrCreate" } },
        { "name": "all-in-one", "projected": { "defaultMode": 0o440, "sources": [
            { "configMap": { "name": "settings", "items": [{ "key": "color", "path": "cfg/color" }] } },
            { "secret": { "name": "creds" } },
            { "downwardAPI": { "items": [{ "path": "ns", "fieldRef": { "fieldPath": "metadata.namespace" } }] } },
        ] } },
    ]);
    let mut spec = pod("vols", containers, volumes);
    // The init container writes into the emptyDir before the app containers start.
    spec["spec"]["initContainers"] = json!([{
        "name": "init",
        "image": TESTAPP_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", "echo from-init > /cache/init.txt"],
        "volumeMounts": [{ "name": "cache", "mountPath": "/cache" }],
    }]);
    let created = node.create(spec).await;
    let uid = created.metadata.uid.clone().unwrap();
    let app = running_id(&node, "vols", "app", 0).await;
    let side = running_id(&node, "vols", "side", 0).await;

    // emptyDir: written by init and by one container, read by the other.
    assert_eq!(
        exec(&node.cri, &side, "cat /shared/init.txt").await,
        "from-init"
    );
    exec(&node.cri, &app, "echo from-app > /cache/app.txt").await;
    assert_eq!(
        exec(&node.cri, &side, "cat /shared/app.txt").await,
        "from-app"
    );
    exec(&node.cri, &side, "echo deep > /sub/f").await;
    assert_eq!(exec(&node.cri, &app, "cat /cache/sub/dir/f").await, "deep");
    let pod_volumes = node.ctrd.dir().join("pods").join(&uid).join("volumes");
    let cache = pod_volumes.join("kubernetes.io~empty-dir/cache");
    assert_eq!(
        std::fs::read_to_string(cache.join("app.txt")).unwrap(),
        "from-app\n"
    );

    // medium: Memory is a tmpfs inside the container, capped by sizeLimit.
    let mem = exec(&node.cri, &app, "grep ' /mem ' /proc/mounts").await;
    assert!(mem.starts_with("tmpfs /mem tmpfs"), "{mem}");
    assert!(mem.contains("size=16384k"), "{mem}");

    // configMap: every key as a file, items at their path with their mode, subPath.
    assert_eq!(exec(&node.cri, &app, "cat /etc/cfg/color").await, "blue");
    assert_eq!(
        exec(
            &node.cri,
            &app,
            "cat /etc/cfg-items/nested/colour; echo; ls /etc/cfg-items"
        )
        .await,
        "blue\nnested"
    );
    assert_eq!(
        exec(
            &node.cri,
            &app,
            "stat -L -c %a /etc/cfg-items/nested/colour"
        )
        .await,
        "600"
    );
    assert_eq!(exec(&node.cri, &app, "cat /etc/color").await, "blue");
    // Projected volumes are read-only.
    let r = node
        .cri
        .exec_sync(
            &app,
            &["/bin/sh", "-c", "echo x > /etc/cfg/new"],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0, "configMap volume writable");

    // secret: defaultMode applies.
    assert_eq!(
        exec(&node.cri, &app, "cat /etc/creds/password").await,
        "s3cret"
    );
    assert_eq!(
        exec(&node.cri, &app, "stat -L -c %a /etc/creds/password").await,
        "400"
    );
    let secret_dir = pod_volumes.join("kubernetes.io~secret/creds");
    assert_eq!(mode_of(&secret_dir.join("password")), 0o400);
    // Secret and projected volumes are memory-backed, as with the kubelet.
    for dir in ["/etc/creds", "/etc/all"] {
        let m = exec(&node.cri, &app, &format!("grep ' {dir} ' /proc/mounts")).await;
        assert!(m.starts_with(&format!("tmpfs {dir} tmpfs")), "{m}");
    }

    // downwardAPI.
    assert_eq!(exec(&node.cri, &app, "cat /etc/info/name").await, "vols");
    assert_eq!(
        exec(&node.cri, &app, "cat /etc/info/labels").await,
        "app=\"vols\"\ntier=\"test\""
    );

    // projected: the three sources in one directory, with the volume's defaultMode.
    assert_eq!(
        exec(
            &node.cri,
            &app,
            "cat /etc/all/cfg/color; echo; cat /etc/all/password; echo; cat /etc/all/ns"
        )
        .await,
        "blue\ns3cret\ndefault"
    );
    assert_eq!(
        exec(&node.cri, &app, "stat -L -c %a /etc/all/password").await,
        "440"
    );

    // The service account volume the apiserver added: a token bound to this pod that the
    // apiserver accepts, the cluster CA and the namespace, where in-cluster clients look; and
    // the `kubernetes` Service's variables.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(
        exec(&node.cri, &app, &format!("cat {sa}/namespace")).await,
        "default"
    );
    let ca = exec(&node.cri, &app, &format!("cat {sa}/ca.crt")).await;
    let pki_ca = std::fs::read_to_string(node.server.dir().join("pki/ca.crt")).unwrap();
    assert_eq!(ca, pki_ca.trim_end());
    let token = exec(&node.cri, &app, &format!("cat {sa}/token")).await;
    assert_eq!(token.split('.').count(), 3, "{token}");
    let m = exec(&node.cri, &app, &format!("grep ' {sa} ' /proc/mounts")).await;
    assert!(m.contains(" ro,"), "token volume not read-only: {m}");
    let kc = kube::config::Kubeconfig::read_from(node.server.kubeconfig()).unwrap();
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.clone().into()),
        ..Default::default()
    };
    let as_pod = kube::Client::try_from(config).unwrap();
    let me = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(as_pod, "default")
        .get("vols")
        .await
        .expect("the pod's token authenticates");
    assert_eq!(me.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(
        exec(
            &node.cri,
            &app,
            "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
        )
        .await,
        "10.96.0.1:443"
    );

    // hostPath DirectoryOrCreate: created on the node, shared with it; readOnly holds.
    exec(&node.cri, &app, "echo on-host > /host/h.txt").await;
    assert_eq!(
        std::fs::read_to_string(host_dir.join("h.txt")).unwrap(),
        "on-host\n"
    );
    assert_eq!(exec(&node.cri, &app, "cat /host-ro/h.txt").await, "on-host");
    let r = node
        .cri
        .exec_sync(
            &app,
            &["/bin/sh", "-c", "echo x > /host-ro/y"],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0, "readOnly hostPath mount writable");

    // A ConfigMap update reaches the running container (refresh every 10 s by default; the
    // subPath mount keeps the old file, as with the kubelet).
    let cms: Api<ConfigMap> = Api::namespaced(node.client.clone(), "default");
    let patch = json!({ "data": { "color": "red" } });
    cms.patch("settings", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = exec(
            &node.cri,
            &app,
            "cat /etc/cfg/color; echo; cat /etc/cfg-items/nested/colour",
        )
        .await;
        if now == "red\nred" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ConfigMap update not seen: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(exec(&node.cri, &app, "cat /etc/color").await, "blue");
    // One version directory remains after the swap.
    let versions = std::fs::read_dir(pod_volumes.join("kubernetes.io~configmap/cfg"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("..") && n != "..data"
        })
        .count();
    assert_eq!(versions, 1);

    // The emptyDir outlives a container restart.
    node.cri
        .stop_container(&app, Duration::from_secs(5))
        .await
        .unwrap();
    let app2 = running_id(&node, "vols", "app", 1).await;
    assert_ne!(app, app2);
    assert_eq!(
        exec(&node.cri, &app2, "cat /cache/app.txt").await,
        "from-app"
    );
    let mem = exec(&node.cri, &app2, "grep ' /mem ' /proc/mounts").await;
    assert!(mem.starts_with("tmpfs /mem tmpfs"), "{mem}");

    // Deleting the pod removes its volumes (and unmounts the tmpfs), not the hostPath.
    delete_and_wait(&node, "vols").await;
    let pod_dir = node.ctrd.dir().join("pods").join(&uid);
    assert!(!pod_dir.exists(), "{} left behind", pod_dir.display());
    assert!(host_dir.join("h.txt").exists());
    assert_eq!(node.ctrd.leftover_mounts(), Vec::<String>::new());
    node.stop_manager().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_that_cannot_be_set_up_keep_containers_waiting_with_events() {
    let mut node = Node::start("volf").await;
    let one = |name: &str, mount: serde_json::Value, volume: serde_json::Value| {
        pod(
            name,
            json!([sleeper("app", json!([mount]))]),
            json!([volume]),
        )
    };
    node.create(one(
        "nocm",
        json!({ "name": "cfg", "mountPath": "/cfg" }),
        json!({ "name": "cfg", "configMap": { "name": "later" } }),
    ))
    .await;
    node.create(one(
        "optcm",
        json!({ "name": "cfg", "mountPath": "/cfg" }),
        json!({ "name": "cfg", "configMap": { "name": "never", "optional": true } }),
    ))
    .await;
    let missing = node.ctrd.dir().join("no-such-dir");
    node.create(one(
        "badhost",
        json!({ "name": "h", "mountPath": "/h" }),
        json!({ "name": "h", "hostPath": { "path": missing, "type": "Directory" } }),
    ))
    .await;
    let file = node.ctrd.dir().join("a-file");
    std::fs::write(&file, "x").unwrap();
    node.create(one(
        "notsock",
        json!({ "name": "h", "mountPath": "/h" }),
        json!({ "name": "h", "hostPath": { "path": file, "type": "Socket" } }),
    ))
    .await;
    node.create(one(
        "unknown",
        json!({ "name": "nope", "mountPath": "/x" }),
        json!({ "name": "cache", "emptyDir": {} }),
    ))
    .await;
    let escape = pod(
        "escape",
        json!([sleeper(
            "app",
            json!([{ "name": "cache", "mountPath": "/x", "subPath": "../../etc" }])
        )]),
        json!([{ "name": "cache", "emptyDir": {} }]),
    );
    // A real apiserver rejects such a subPath at validation; ours stores it, so the node must
    // refuse it itself.
    node.create(escape).await;

    let msg = waits_with(&node, "nocm", "app", "CreateContainerConfigError").await;
    assert!(msg.contains("ConfigMap default/later"), "{msg}");
    let msg = waits_with(&node, "badhost", "app", "ContainerCreating").await;
    assert!(msg.contains("hostPath type check failed"), "{msg}");
    assert!(msg.contains("no-such-dir"), "{msg}");
    let msg = waits_with(&node, "notsock", "app", "ContainerCreating").await;
    assert!(msg.contains("is not a socket"), "{msg}");
    let msg = waits_with(&node, "unknown", "app", "CreateContainerConfigError").await;
    assert!(msg.contains("\"nope\" names no volume"), "{msg}");
    let msg = waits_with(&node, "escape", "app", "CreateContainerConfigError").await;
    assert!(msg.contains("must not contain '..'"), "{msg}");
    for name in ["nocm", "badhost", "unknown"] {
        // Events are posted in the background: poll for it.
        node.reasons_including(name, &["FailedMount"]).await;
    }
    assert!(!missing.exists(), "type Directory must not create the path");

    // An optional ConfigMap that does not exist gives an empty volume (only the writer's
    // hidden `..data` entries).
    let optcm = running_id(&node, "optcm", "app", 0).await;
    assert_eq!(exec(&node.cri, &optcm, "ls /cfg | wc -l").await, "0");

    // Creating the missing ConfigMap lets the waiting container start.
    let cms: Api<ConfigMap> = Api::namespaced(node.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "later" }, "data": { "k": "v" },
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let nocm = running_id(&node, "nocm", "app", 0).await;
    assert_eq!(exec(&node.cri, &nocm, "cat /cfg/k").await, "v");
    node.stop_manager().await;
}
