//! The pod manager against a real containerd (which runs netlet-cni) and our apiserver.
//!
//! Each test starts its own containerd in an `nlt-` node namespace (`support/containerd.rs`)
//! and its own apiserver, then runs `pods::run` in the test process (`support/pod_node.rs`):
//! containerd's CRI socket is a unix socket in the test's temp dir, reachable from the host
//! namespace. Pods are created through the API with `spec.nodeName` set to the test's node and
//! the images of `cargo xtask images`; the assertions are on what the API and containerd then say.

#[path = "support/pod_node.rs"]
mod pod_node;
mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use pod_node::*;
use serde_json::json;
use support::containerd::TESTAPP_IMAGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_with_ip_env_and_status_then_graceful_delete_removes_it() {
    let mut node = Node::start("pods").await;
    node.settings().await;
    let t_create = Instant::now();
    let created = node.create(sleeper_pod("web")).await;
    let uid = created.metadata.uid.clone().unwrap();

    let pod = node
        .wait_pod("web", "Running and Ready", Duration::from_secs(60), |p| {
            let phase = p.status.as_ref()?.phase.as_deref()?;
            (phase == "Running" && condition(p, "Ready")?.as_str() == "True").then(|| p.clone())
        })
        .await;
    // Reported, not asserted: how long create → Ready took (200 ms polling included).
    eprintln!("pod created → Ready in {:?}", t_create.elapsed());
    let st = pod.status.clone().unwrap();
    let ip: Ipv4Addr = st.pod_ip.as_deref().unwrap().parse().unwrap();
    assert_eq!(
        ip.octets()[..3],
        SUBNET_PREFIX,
        "pod IP {ip} outside the subnet"
    );
    assert_eq!(st.pod_ips.as_ref().unwrap()[0].ip, ip.to_string());
    assert_eq!(st.host_ip.as_deref(), Some(NODE_IP));
    assert!(st.start_time.is_some());
    for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&pod, c).as_deref(), Some("True"), "{c}");
    }
    let cs = status(&pod, "app").unwrap();
    assert!(cs.ready && cs.started == Some(true), "{cs:?}");
    assert_eq!(cs.restart_count, 0);
    assert_eq!(cs.image, TESTAPP_IMAGE);
    assert!(cs.image_id.starts_with("sha256:"), "{}", cs.image_id);
    assert!(cs
        .state
        .as_ref()
        .unwrap()
        .running
        .as_ref()
        .unwrap()
        .started_at
        .is_some());
    let id = cs
        .container_id
        .as_deref()
        .unwrap()
        .strip_prefix("containerd://")
        .unwrap()
        .to_string();

    // The container sees its pod IP and the environment the spec asked for.
    let env = exec(
        &node.cri,
        &id,
        "echo $POD_NAME $POD_IP $NODE $COLOR $GREETING $PASSWORD",
    )
    .await;
    assert_eq!(env, format!("web {ip} {NODE} blue hello-blue s3cret"));
    let eth0 = exec(&node.cri, &id, "ip -4 addr show eth0").await;
    assert!(eth0.contains(&ip.to_string()), "{eth0}");
    // containerd labels and log path follow the kubelet's layout.
    let sandboxes = node.cri.list_pod_sandbox(None).await.unwrap();
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let shim_socket = node.ctrd.shim_socket(&sandboxes[0].id);
    assert_eq!(sandboxes[0].labels["io.kubernetes.pod.uid"], uid);
    assert_eq!(sandboxes[0].labels["app"], "web");
    let log = node
        .ctrd
        .dir()
        .join(format!("pod-logs/default_web_{uid}/app/0.log"));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("started web"),
        "{}: {log_text:?}",
        log.display()
    );
    let reasons = node.reasons_including("web", &["Created", "Started"]).await;
    for r in ["Created", "Started"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event: {reasons:?}");
    }
    // One create per container: no failed (e.g. duplicate) create along the way.
    assert_eq!(
        reasons.iter().filter(|r| *r == "Created").count(),
        1,
        "{reasons:?}"
    );
    assert!(!reasons.iter().any(|r| r == "Failed"), "{reasons:?}");
    let event = node
        .events("web")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("Started"))
        .unwrap();
    assert_eq!(event.source.unwrap().component.as_deref(), Some("kubelet"));
    assert_eq!(event.reporting_component.as_deref(), Some("kubelet"));

    // A status write happens only on change: with nothing changing, the resourceVersion stays.
    let rv = node
        .pods()
        .get("web")
        .await
        .unwrap()
        .metadata
        .resource_version;
    // Three resync intervals (1 s each) pass; a rewrite of an unchanged status would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rv_after = node
        .pods()
        .get("web")
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert_eq!(rv, rv_after, "status rewritten without a change");

    // kubectl delete: graceful, the manager stops the container, removes the sandbox and
    // confirms the deletion.
    let t_delete = Instant::now();
    node.pods()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.pods().get_opt("web").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "pod not deleted\n{}",
            node.ctrd.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reported, not asserted: graceful delete → gone from the API (the container exits on
    // SIGTERM within a second).
    eprintln!("pod delete → gone in {:?}", t_delete.elapsed());
    assert!(node.cri.list_pod_sandbox(None).await.unwrap().is_empty());
    assert!(node.cri.list_containers(None).await.unwrap().is_empty());
    let allocation = node.ctrd.dir().join("ipam/nlt-pods").join(ip.to_string());
    assert!(!allocation.exists(), "CNI DEL did not free {ip}");
    let reasons = node.reasons_including("web", &["Killing"]).await;
    assert!(
        reasons.iter().any(|x| x == "Killing"),
        "no Killing event: {reasons:?}"
    );

    assert_eq!(node.ctrd.leftover_mounts(), Vec::<String>::new());

    node.stop_manager().await;
    let cgroup_parent = node.ctrd.cgroup_parent.clone();
    let forced = node.ctrd.shutdown();
    assert!(forced.is_empty(), "left behind: {forced:?}");
    assert!(!shim_socket.exists(), "{} left", shim_socket.display());
    assert!(support::containerd::leftover_cgroups(&cgroup_parent).is_empty());
    drop(node.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_config_make_containers_wait_with_their_reasons() {
    let mut node = Node::start("pimg").await;
    node.create(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "noimg", "namespace": "default" },
        "spec": {
            "nodeName": NODE,
            "containers": [
                { "name": "never", "image": "docker.io/netlet/absent:v1", "imagePullPolicy": "Never" },
                { "name": "always", "image": "docker.io/netlet/absent:v2", "imagePullPolicy": "Always" },
                {
                    "name": "config", "image": TESTAPP_IMAGE, "command": ["sleep", "3600"],
                    "env": [{ "name": "X", "valueFrom": { "configMapKeyRef": { "name": "nowhere", "key": "x" } } }],
                },
            ],
        },
    }))
    .await;
    let pod = node
        .wait_pod(
            "noimg",
            "all three containers waiting",
            Duration::from_secs(60),
            |p| {
                let never = waiting_reason(status(p, "never")?)?;
                let always = waiting_reason(status(p, "always")?)?;
                let config = waiting_reason(status(p, "config")?)?;
                (never == "ErrImageNeverPull"
                    && always == "ErrImagePull"
                    && config == "CreateContainerConfigError")
                    .then(|| p.clone())
            },
        )
        .await;
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    let msg = status(&pod, "never")
        .unwrap()
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap()
        .message
        .unwrap();
    assert!(msg.contains("docker.io/netlet/absent:v1"), "{msg}");
    let config = status(&pod, "config")
        .unwrap()
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    let msg = config.message.unwrap_or_default();
    assert!(msg.contains("ConfigMap default/nowhere"), "{msg}");
    // The sandbox runs (it has an IP) even though no container could be created.
    assert!(pod.status.as_ref().unwrap().pod_ip.is_some());
    let reasons = node
        .reasons_including("noimg", &["ErrImageNeverPull", "Failed"])
        .await;
    assert!(
        reasons.iter().any(|r| r == "ErrImageNeverPull"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "Failed"), "{reasons:?}");
    assert!(node.cri.list_containers(None).await.unwrap().is_empty());
    node.stop_manager().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_container_restarts_with_crash_loop_back_off() {
    let mut node = Node::start("pcrash").await;
    node.create(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "crash", "namespace": "default" },
        "spec": {
            "nodeName": NODE,
            "restartPolicy": "Always",
            "containers": [{
                "name": "app",
                "image": TESTAPP_IMAGE,
                "command": ["/bin/sh", "-c", "echo failing; exit 1"],
            }],
        },
    }))
    .await;
    // The first restart is immediate, the second waits out the 10 s back-off; meanwhile the
    // container waits in CrashLoopBackOff.
    let mut saw_backoff = false;
    let pod = node
        .wait_pod(
            "crash",
            "restartCount 2 after a CrashLoopBackOff",
            Duration::from_secs(90),
            |p| {
                let cs = status(p, "app")?;
                saw_backoff |= waiting_reason(cs).as_deref() == Some("CrashLoopBackOff");
                (saw_backoff && cs.restart_count >= 2).then(|| p.clone())
            },
        )
        .await;
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    let cs = status(&pod, "app").unwrap();
    let last = cs.last_state.clone().unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    let reasons = node.reasons_including("crash", &["BackOff"]).await;
    assert!(reasons.iter().any(|r| r == "BackOff"), "{reasons:?}");
    // Only the newest exited instance is kept besides the current one.
    let containers = node.cri.list_containers(None).await.unwrap();
    assert!(containers.len() <= 2, "{containers:?}");
    let attempts: Vec<u32> = containers
        .iter()
        .map(|c| c.metadata.as_ref().unwrap().attempt)
        .collect();
    assert!(attempts.iter().any(|&a| a >= 1), "{attempts:?}");
    node.stop_manager().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_manager_readopts_pods_and_tears_down_vanished_ones() {
    let mut node = Node::start("padopt").await;
    node.settings().await;
    let keep = node.create(sleeper_pod("keep")).await;
    let keep_uid = keep.metadata.uid.clone().unwrap();
    let container = node.running("keep").await;
    let sandboxes = node.sandboxes_of(&keep_uid).await;
    assert_eq!(sandboxes.len(), 1);

    // The agent stops: its pods keep running.
    node.stop_manager().await;
    let id = container.strip_prefix("containerd://").unwrap();
    let st = node.cri.container_status(id).await.unwrap();
    assert_eq!(
        st.state(),
        netlet_agent::cri::api::ContainerState::ContainerRunning
    );

    // A new manager takes the sandbox and container over instead of creating new ones. Once a
    // pod created after the restart runs, the old pod has been synced too (its worker starts
    // from the initial list, before the new pod's).
    node.start_manager();
    let other = node.create(sleeper_pod("other")).await;
    let other_uid = other.metadata.uid.clone().unwrap();
    node.running("other").await;
    assert_eq!(node.sandboxes_of(&keep_uid).await, sandboxes);
    let pod = node.pods().get("keep").await.unwrap();
    let cs = status(&pod, "app").unwrap();
    assert_eq!(cs.container_id.as_deref(), Some(container.as_str()));
    assert_eq!(cs.restart_count, 0);
    assert_eq!(node.cri.list_containers(None).await.unwrap().len(), 2);

    // Force-deleted (gone from the API at once): the manager still tears the pod down.
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    node.pods().delete("keep", &now).await.unwrap();
    node.wait_no_sandbox(&keep_uid, "after a force delete")
        .await;

    // Deleted while the agent is down: the sweep after the first listing removes its sandbox.
    node.stop_manager().await;
    node.pods().delete("other", &now).await.unwrap();
    node.start_manager();
    node.wait_no_sandbox(&other_uid, "after a delete while the agent was down")
        .await;
    assert!(node.cri.list_containers(None).await.unwrap().is_empty());
    node.stop_manager().await;
    let forced = node.ctrd.shutdown();
    assert!(forced.is_empty(), "left behind: {forced:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_gate_readiness_and_restart_a_dead_container() {
    let mut node = Node::start("pprobe").await;
    let exec_probe = |file: &str, failures: i32| json!({ "exec": { "command": ["cat", file] }, "periodSeconds": 1, "failureThreshold": failures });
    node.create(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "probed", "namespace": "default" },
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app",
                "image": TESTAPP_IMAGE,
                "command": ["/bin/sh", "-c", "touch /tmp/alive; trap 'exit 0' TERM; while true; do sleep 1; done"],
                "readinessProbe": exec_probe("/tmp/ready", 1),
                "livenessProbe": exec_probe("/tmp/alive", 2),
            }],
        },
    }))
    .await;
    let first = node.running("probed").await;
    let id = first.strip_prefix("containerd://").unwrap().to_string();
    let is_ready = |want: bool| {
        move |p: &Pod| {
            let cs = status(p, "app")?;
            let cond = condition(p, "Ready")? == "True";
            (cs.ready == want && cond == want && cs.restart_count == 0).then_some(())
        }
    };
    // Running, but /tmp/ready does not exist: not ready.
    let pod = node.pods().get("probed").await.unwrap();
    assert!(
        !status(&pod, "app").unwrap().ready,
        "ready before the readiness probe passed"
    );
    exec(&node.cri, &id, "touch /tmp/ready").await;
    node.wait_pod("probed", "ready", Duration::from_secs(30), is_ready(true))
        .await;
    exec(&node.cri, &id, "rm /tmp/ready").await;
    node.wait_pod(
        "probed",
        "unready again",
        Duration::from_secs(30),
        is_ready(false),
    )
    .await;

    // Liveness fails twice: the container is killed and started again.
    exec(&node.cri, &id, "rm /tmp/alive").await;
    let restarted = node
        .wait_pod(
            "probed",
            "a restart after liveness failed",
            Duration::from_secs(60),
            |p| {
                let cs = status(p, "app")?;
                cs.state.as_ref()?.running.as_ref()?;
                (cs.restart_count == 1)
                    .then(|| cs.container_id.clone())
                    .flatten()
            },
        )
        .await;
    assert_ne!(restarted, first);
    let reasons = node
        .reasons_including("probed", &["Unhealthy", "Killing"])
        .await;
    assert!(reasons.iter().any(|r| r == "Unhealthy"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Killing"), "{reasons:?}");
    node.stop_manager().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_and_finished_pods_complete_or_fail() {
    let mut node = Node::start("pinit").await;
    let step = |name: &str, script: &str| json!({ "name": name, "image": TESTAPP_IMAGE, "command": ["/bin/sh", "-c", script] });
    let pod = |name: &str, init: Vec<serde_json::Value>, app: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": "default" },
            "spec": {
                "nodeName": NODE,
                "restartPolicy": "Never",
                "initContainers": init,
                "containers": [step("app", app)],
            },
        })
    };
    // Two init steps (the first takes a second), then an app that exits 0: Succeeded.
    node.create(pod(
        "job",
        vec![step("first", "sleep 1"), step("second", "true")],
        "echo done",
    ))
    .await;
    // An init step that fails under restartPolicy Never: Failed, the app never starts.
    node.create(pod("broken", vec![step("setup", "exit 3")], "echo never"))
        .await;
    let phase_is = |want: &'static str| {
        move |p: &Pod| (p.status.as_ref()?.phase.as_deref()? == want).then(|| p.clone())
    };
    let job = node
        .wait_pod(
            "job",
            "Succeeded",
            Duration::from_secs(60),
            phase_is("Succeeded"),
        )
        .await;
    let st = job.status.clone().unwrap();
    let init = st.init_container_statuses.clone().unwrap();
    let finished = |i: usize| {
        let t = init[i].state.clone().unwrap().terminated.unwrap();
        assert_eq!(
            (t.exit_code, t.reason.as_deref()),
            (0, Some("Completed")),
            "{}",
            init[i].name
        );
        (t.started_at.unwrap().0, t.finished_at.unwrap().0)
    };
    let (_, first_done) = finished(0);
    let (second_start, second_done) = finished(1);
    assert!(
        first_done <= second_start,
        "second init step started before the first ended"
    );
    let app = status(&job, "app")
        .unwrap()
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(app.exit_code, 0);
    assert!(second_done <= app.started_at.unwrap().0);
    assert_eq!(condition(&job, "Initialized").as_deref(), Some("True"));
    assert_eq!(condition(&job, "Ready").as_deref(), Some("False"));

    let broken = node
        .wait_pod(
            "broken",
            "Failed",
            Duration::from_secs(60),
            phase_is("Failed"),
        )
        .await;
    let setup = &broken
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    let t = setup.state.clone().unwrap().terminated.unwrap();
    assert_eq!(t.exit_code, 3);
    assert_eq!(condition(&broken, "Initialized").as_deref(), Some("False"));
    let app = status(&broken, "app").unwrap();
    assert_eq!(
        app.container_id, None,
        "the app of a failed init ran: {app:?}"
    );

    // Finished pods release their network: their sandboxes are stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sandboxes = node.cri.list_pod_sandbox(None).await.unwrap();
        let ready = sandboxes
            .iter()
            .filter(|s| s.state() == netlet_agent::cri::api::PodSandboxState::SandboxReady)
            .count();
        if ready == 0 {
            assert_eq!(sandboxes.len(), 2, "{sandboxes:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sandboxes of finished pods still ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.stop_manager().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_shares_the_node_namespace_and_reports_the_node_ip() {
    let mut node = Node::start("phost").await;
    node.create(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "hostnet", "namespace": "default" },
        "spec": {
            "nodeName": NODE,
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "app",
                "image": TESTAPP_IMAGE,
                "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
            }],
        },
    }))
    .await;
    let id = node.running("hostnet").await;
    let id = id.strip_prefix("containerd://").unwrap();
    let pod = node.pods().get("hostnet").await.unwrap();
    assert_eq!(pod.status.unwrap().pod_ip.as_deref(), Some(NODE_IP));
    // Its network namespace is the node's (the one containerd runs in), not a pod's own:
    // the same namespace inode as seen from the node namespace.
    let inside = exec(&node.cri, id, "readlink /proc/self/ns/net").await;
    let node_ns = node.ctrd.node.run_ok("readlink", &["/proc/self/ns/net"]);
    assert_eq!(inside, node_ns.trim());
    // No CNI ran for it: no address was allocated.
    let allocated = std::fs::read_dir(node.ctrd.dir().join("ipam/nlt-pods"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        allocated, 0,
        "CNI allocated an address for a host-network pod"
    );
    node.stop_manager().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_pods_run_side_by_side_with_distinct_ips_and_all_delete_cleanly() {
    const N: usize = 10;
    let mut node = Node::start("pmany").await;
    node.settings().await;
    let started = Instant::now();
    for i in 0..N {
        node.create(sleeper_pod(&format!("web-{i}"))).await;
    }
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..N {
        let name = format!("web-{i}");
        node.running(&name).await;
        let pod = node.pods().get(&name).await.unwrap();
        ips.insert(pod.status.unwrap().pod_ip.unwrap());
    }
    // Reported, not asserted: N pods created → all running.
    eprintln!("{N} pods created → all running in {:?}", started.elapsed());
    assert_eq!(ips.len(), N, "pod IPs not distinct: {ips:?}");
    assert_eq!(node.cri.list_pod_sandbox(None).await.unwrap().len(), N);

    let started = Instant::now();
    for i in 0..N {
        node.pods()
            .delete(&format!("web-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = node
            .pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        let sandboxes = node.cri.list_pod_sandbox(None).await.unwrap().len();
        if left == 0 && sandboxes == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} pods and {sandboxes} sandboxes left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{N} pods deleted → all gone in {:?}", started.elapsed());
    node.stop_manager().await;
    let forced = node.ctrd.shutdown();
    assert!(forced.is_empty(), "left behind: {forced:?}");
}
