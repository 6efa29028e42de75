//! Container lifecycle hooks (`postStart`, `preStop`) run by the pod manager on a real
//! containerd against our apiserver (fixture: `support/pod_node.rs`).
//!
//! The hooks are exec hooks: httpGet hooks connect from the test process's namespace, which
//! does not reach the pods' bridge in the node namespace (see `pods::probe`). What a hook did
//! is observed inside the container (a file) or in the container's CRI log file: a preStop
//! hook writes to the container's stdout (`/proc/<its pid>/fd/1`; pid 1 is the pod's pause
//! process, the sandbox shares one pid namespace) and the container prints when it gets
//! SIGTERM, so the order of the two lines in the log is the order of the two events. (`$$$$` in
//! args is `$$` after the API's `$(VAR)` expansion.)

#[path = "support/pod_node.rs"]
mod pod_node;
#[allow(dead_code)] // this binary does not inspect mounts or shim sockets
mod support;

use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use pod_node::*;
use serde_json::json;
use support::containerd::TESTAPP_IMAGE;

/// The CRI log of attempt `attempt` of container `app` of pod `name`.
fn log_of(node: &Node, name: &str, uid: &str, attempt: u32) -> String {
    let path = node
        .ctrd
        .dir()
        .join(format!("pod-logs/default_{name}_{uid}/app/{attempt}.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls the log of attempt `attempt` until it contains `needle`.
async fn wait_log(node: &Node, name: &str, uid: &str, attempt: u32, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = log_of(node, name, uid, attempt);
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log of {name} attempt {attempt}: {log:?}\n{}",
            node.ctrd.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The container id of a status, without the runtime prefix.
fn bare_id(id: &str) -> String {
    id.trim_start_matches("containerd://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_start_hook_finishes_before_running_and_the_container_sees_its_file() {
    let node = Node::start("hkps").await;
    let created = node
        .create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "ps", "namespace": "default" },
            "spec": {
                "nodeName": NODE,
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "app", "image": TESTAPP_IMAGE,
                    "command": ["/bin/sh", "-c"],
                    "args": ["trap 'exit 0' TERM; while [ ! -f /tmp/ps ]; do sleep 1; done; echo saw $(cat /tmp/ps); while true; do sleep 1; done"],
                    "lifecycle": { "postStart": { "exec": { "command": [
                        "/bin/sh", "-c", "echo hook-wrote > /tmp/ps; sleep 2; touch /tmp/ps-done",
                    ] } } },
                }],
            },
        }))
        .await;
    let uid = created.metadata.uid.unwrap();
    // The first status that shows the container running must come after the hook returned:
    // its last step's file is there by then (the hook sleeps 2 s before it, so a status
    // written during the hook would be caught here).
    let id = node.running("ps").await;
    exec(&node.cri, &bare_id(&id), "test -f /tmp/ps-done").await;
    let log = wait_log(&node, "ps", &uid, 0, "saw hook-wrote").await;
    assert!(log.contains("saw hook-wrote"), "{log}");
    let pod = node.pods().get("ps").await.unwrap();
    assert_eq!(status(&pod, "app").unwrap().restart_count, 0);
    let reasons = node.reasons("ps").await;
    assert!(
        !reasons.iter().any(|r| r == "FailedPostStartHook"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_post_start_hook_posts_the_event_and_restarts_the_container() {
    let node = Node::start("hkfail").await;
    node.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "psfail", "namespace": "default" },
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "app", "image": TESTAPP_IMAGE,
                "command": ["/bin/sh", "-c"],
                "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"],
                "lifecycle": { "postStart": { "exec": { "command": [
                    "/bin/sh", "-c", "echo broken hook >&2; exit 3",
                ] } } },
            }],
        },
    }))
    .await;
    let restarts = node
        .wait_pod(
            "psfail",
            "a restart after the failed postStart hook",
            Duration::from_secs(60),
            |p| {
                let cs = status(p, "app")?;
                (cs.restart_count >= 1).then_some(cs.restart_count)
            },
        )
        .await;
    assert!(restarts >= 1);
    // Events are posted in the background, after the status that shows the restart.
    node.reasons_including("psfail", &["FailedPostStartHook"])
        .await;
    let events = node.events("psfail").await;
    let failed = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("FailedPostStartHook"))
        .unwrap_or_else(|| panic!("no FailedPostStartHook event: {events:?}"));
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    let msg = failed.message.clone().unwrap_or_default();
    assert!(
        msg.contains("exited with 3") && msg.contains("broken hook"),
        "{msg}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Killing")),
        "no Killing event"
    );
    // The killed first attempt is what the restarted container's lastState shows.
    let pod = node.pods().get("psfail").await.unwrap();
    let cs = status(&pod, "app").unwrap();
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref();
    assert!(last.is_some(), "{cs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_hook_runs_before_sigterm_on_liveness_kill_and_on_delete() {
    let node = Node::start("hkstop").await;
    let created = node
        .create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "stop", "namespace": "default" },
            "spec": {
                "nodeName": NODE,
                "terminationGracePeriodSeconds": 10,
                "containers": [{
                    "name": "app", "image": TESTAPP_IMAGE,
                    "command": ["/bin/sh", "-c"],
                    "args": ["trap 'echo got-term; exit 0' TERM; echo $$$$ > /tmp/pid; touch /tmp/alive; echo started; while true; do sleep 1; done"],
                    "livenessProbe": {
                        "exec": { "command": ["test", "-f", "/tmp/alive"] },
                        "periodSeconds": 1, "failureThreshold": 1,
                    },
                    "lifecycle": { "preStop": { "exec": { "command": [
                        "/bin/sh", "-c", "echo prestop-ran > /proc/$(cat /tmp/pid)/fd/1",
                    ] } } },
                }],
            },
        }))
        .await;
    let uid = created.metadata.uid.unwrap();
    let id = node.running("stop").await;

    // A failed liveness probe kills the container: preStop first, then SIGTERM.
    exec(&node.cri, &bare_id(&id), "rm /tmp/alive").await;
    let log = wait_log(&node, "stop", &uid, 0, "got-term").await;
    let hook = log.find("prestop-ran");
    assert!(
        hook.is_some_and(|h| h < log.find("got-term").unwrap()),
        "preStop did not run before SIGTERM on the liveness kill: {log}\nevents: {:?}",
        node.events("stop")
            .await
            .iter()
            .map(|e| (&e.reason, &e.message))
            .collect::<Vec<_>>()
    );
    node.wait_pod("stop", "the restart", Duration::from_secs(60), |p| {
        let cs = status(p, "app")?;
        cs.state.as_ref()?.running.as_ref()?;
        (cs.restart_count == 1).then_some(())
    })
    .await;

    // Graceful delete: preStop first, then SIGTERM, then the pod is gone.
    wait_log(&node, "stop", &uid, 1, "started").await;
    node.pods()
        .delete("stop", &DeleteParams::default())
        .await
        .unwrap();
    let log = wait_log(&node, "stop", &uid, 1, "got-term").await;
    let hook = log.find("prestop-ran");
    assert!(
        hook.is_some_and(|h| h < log.find("got-term").unwrap()),
        "preStop did not run before SIGTERM on delete: {log}"
    );
    assert_eq!(
        log.matches("prestop-ran").count(),
        1,
        "preStop ran more than once: {log}"
    );
    node.wait_no_sandbox(&uid, "after delete").await;
    let reasons = node.reasons_including("stop", &["Killing"]).await;
    assert!(
        !reasons.iter().any(|r| r == "FailedPreStopHook"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pre_stop_hook_posts_the_event_and_termination_goes_on() {
    let node = Node::start("hkpsf").await;
    let created = node
        .create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "stopfail", "namespace": "default" },
            "spec": {
                "nodeName": NODE,
                "terminationGracePeriodSeconds": 10,
                "containers": [{
                    "name": "app", "image": TESTAPP_IMAGE,
                    "command": ["/bin/sh", "-c"],
                    "args": ["trap 'echo got-term; exit 0' TERM; echo started; while true; do sleep 1; done"],
                    "lifecycle": { "preStop": { "exec": { "command": [
                        "/bin/sh", "-c", "exit 7",
                    ] } } },
                }],
            },
        }))
        .await;
    let uid = created.metadata.uid.unwrap();
    node.running("stopfail").await;
    node.pods()
        .delete("stopfail", &DeleteParams::default())
        .await
        .unwrap();
    // Termination went on: SIGTERM reached the container and the pod is gone.
    wait_log(&node, "stopfail", &uid, 0, "got-term").await;
    node.wait_no_sandbox(&uid, "after delete").await;
    node.reasons_including("stopfail", &["FailedPreStopHook"])
        .await;
    let events = node.events("stopfail").await;
    let failed = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("FailedPreStopHook"))
        .unwrap_or_else(|| panic!("no FailedPreStopHook event: {events:?}"));
    assert!(
        failed
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("exited with 7"),
        "{failed:?}"
    );
}
