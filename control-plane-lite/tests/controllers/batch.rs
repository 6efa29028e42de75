//! Jobs and DaemonSets.

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use netlet_control_plane::controllers::ControllersConfig;
use serde_json::json;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::harness::*;

/// Finishes every running pod of job `job` with `phase` (the containers exiting); returns how
/// many active pods the job had.
async fn finish_job_pods(c: &Client, job: &str, phase: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let active = active_pods(c, &format!("batch.kubernetes.io/job-name={job}"))
        .await
        .into_iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect::<Vec<_>>();
    for p in &active {
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            let status = json!({"status": {"phase": phase, "conditions": [{"type": "Ready", "status": "False"}]}});
            let _ = pods
                .patch_status(
                    p.metadata.name.as_deref().unwrap(),
                    &PatchParams::default(),
                    &Patch::Merge(status),
                )
                .await;
        }
    }
    active.len()
}

async fn job_condition(
    c: &Client,
    job: &str,
    type_: &str,
) -> Option<k8s_openapi::api::batch::v1::JobStatus> {
    let status = Api::<Job>::namespaced(c.clone(), "default")
        .get(job)
        .await
        .ok()?
        .status?;
    let done = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True");
    done.then_some(status)
}

fn job(name: &str, completions: i32, parallelism: i32, backoff: i32) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"completions": completions, "parallelism": parallelism, "backoffLimit": backoff,
                 "template": {"spec": {"restartPolicy": "Never",
                              "containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_to_completion_within_parallelism_and_fails_past_backoff_limit() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    jobs.create(&PostParams::default(), &job("ok", 3, 2, 6))
        .await
        .unwrap();
    let status = h
        .wait("job ok Complete", || async {
            let active = finish_job_pods(&c, "ok", "Succeeded").await;
            assert!(active <= 2, "{active} active pods > parallelism 2");
            job_condition(&c, "ok", "Complete").await
        })
        .await;
    assert_eq!(
        (status.succeeded, status.failed, status.active),
        (Some(3), Some(0), Some(0))
    );
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    let all = Api::<Pod>::namespaced(c.clone(), "default")
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=ok"))
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 3, "exactly completions pods were run");

    jobs.create(&PostParams::default(), &job("bad", 1, 1, 1))
        .await
        .unwrap();
    let status = h
        .wait("job bad Failed", || async {
            finish_job_pods(&c, "bad", "Failed").await;
            job_condition(&c, "bad", "Failed").await
        })
        .await;
    assert_eq!(
        (status.succeeded, status.failed),
        (Some(0), Some(2)),
        "one try plus backoffLimit 1 retry"
    );
    let cond = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(cond.reason.as_deref(), Some("BackoffLimitExceeded"));
}

/// An Indexed Job runs one pod per index (hostname and JOB_COMPLETION_INDEX from the index),
/// retries only the index whose pod failed, and reports its completed indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_completes_every_index_once() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    let mut j = job("idx", 4, 2, 6);
    j.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
    Api::<Job>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &j)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let index = |p: &Pod| -> String {
        p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"].clone()
    };
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let status = h
        .wait("indexed job Complete", || async {
            let list = pods
                .list(&ListParams::default().labels("batch.kubernetes.io/job-name=idx"))
                .await
                .unwrap()
                .items;
            for p in &list {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                    continue;
                }
                // Index 1's first pod fails; everything else succeeds.
                let phase = if index(p) == "1" && !failed_once.swap(true, Ordering::SeqCst) {
                    "Failed"
                } else {
                    "Succeeded"
                };
                let _ = pods
                    .patch_status(
                        p.metadata.name.as_deref().unwrap(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"phase": phase}})),
                    )
                    .await;
            }
            job_condition(&c, "idx", "Complete").await
        })
        .await;
    assert_eq!(status.completed_indexes.as_deref(), Some("0-3"));
    assert_eq!((status.succeeded, status.failed), (Some(4), Some(1)));
    let all = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=idx"))
        .await
        .unwrap()
        .items;
    let mut runs: Vec<String> = all.iter().map(index).collect();
    runs.sort();
    assert_eq!(
        runs,
        ["0", "1", "1", "2", "3"],
        "index 1 ran twice, the rest once"
    );
    for p in &all {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            spec.hostname.as_deref(),
            Some(format!("idx-{}", index(p)).as_str())
        );
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(
            env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"),
            "{env:?}"
        );
    }
}

/// Node names the active daemon pods (label app=ds) are pinned to by their required node
/// affinity `matchFields metadata.name In [node]`, sorted.
async fn daemon_targets(c: &Client) -> Vec<String> {
    let mut nodes: Vec<String> = active_pods(c, "app=ds")
        .await
        .iter()
        .map(daemon_node)
        .collect();
    nodes.sort();
    nodes
}

/// The node a daemon pod is pinned to by its required node affinity
/// `matchFields metadata.name In [node]`.
fn daemon_node(p: &Pod) -> String {
    let affinity = p
        .spec
        .as_ref()
        .unwrap()
        .affinity
        .as_ref()
        .expect("daemon pod has an affinity");
    let terms = &affinity
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms;
    let field = &terms[0].match_fields.as_ref().unwrap()[0];
    assert_eq!(
        (field.key.as_str(), field.operator.as_str()),
        ("metadata.name", "In")
    );
    field.values.as_ref().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_places_one_pod_per_eligible_node() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    let nodes: Api<Node> = Api::all(c.clone());
    for (name, node) in [
        (
            "n1",
            json!({"metadata": {"name": "n1", "labels": {"disk": "ssd"}}}),
        ),
        (
            "n2",
            json!({"metadata": {"name": "n2", "labels": {"disk": "ssd"}},
                      "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}}),
        ),
        ("n3", json!({"metadata": {"name": "n3"}})),
    ] {
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(node).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    }
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "ds"},
        "spec": {"selector": {"matchLabels": {"app": "ds"}},
                 "template": {"metadata": {"labels": {"app": "ds"}},
                              "spec": {"nodeSelector": {"disk": "ssd"},
                                       "containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let targets = |want: &'static [&'static str]| {
        let c = c.clone();
        move || {
            let c = c.clone();
            async move { (daemon_targets(&c).await == want).then_some(()) }
        }
    };
    h.wait(
        "a pod for n1 only (n2 tainted, n3 unlabelled)",
        targets(&["n1"]),
    )
    .await;

    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"disk": "ssd"}}})),
        )
        .await
        .unwrap();
    h.wait("n3 gets a pod once labelled", targets(&["n1", "n3"]))
        .await;
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .unwrap();
    h.wait("n2 gets a pod once untainted", targets(&["n1", "n2", "n3"]))
        .await;
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    h.wait("n1's pod goes with the node", targets(&["n2", "n3"]))
        .await;

    // The test plays the kubelets: the daemon pods turn ready; the status follows.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    for (i, p) in active_pods(&c, "app=ds").await.iter().enumerate() {
        set_status(
            &pods,
            p.metadata.name.as_deref().unwrap(),
            &format!("10.244.9.{}", i + 1),
            true,
        )
        .await;
    }
    let status = h
        .wait("daemonset status with 2 ready", || async {
            let s = Api::<DaemonSet>::namespaced(c.clone(), "default")
                .get("ds")
                .await
                .ok()?
                .status?;
            (s.number_ready == 2).then_some(s)
        })
        .await;
    assert_eq!(
        (
            status.desired_number_scheduled,
            status.current_number_scheduled,
            status.number_available
        ),
        (2, 2, Some(2))
    );
}

/// One step of the test's kubelets for daemon pods (label app=roll): finishes graceful
/// deletions and reports new pods Running and Ready; returns, per node, how many live pods it
/// has and whether one of them is ready.
async fn daemon_kubelets(c: &Client, next_ip: &AtomicU32) -> Vec<(String, usize, bool)> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut per_node: std::collections::BTreeMap<String, (usize, bool)> = Default::default();
    for pod in pods
        .list(&ListParams::default().labels("app=roll"))
        .await
        .unwrap()
        .items
    {
        if finish_deletion(&pods, &pod).await {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap();
        let node = daemon_node(&pod);
        let entry = per_node.entry(node).or_default();
        entry.0 += 1;
        if is_ready(&pod) {
            entry.1 = true;
        } else {
            let ip = next_ip.fetch_add(1, Ordering::SeqCst) + 1;
            set_status(&pods, &name, &format!("10.244.8.{ip}"), true).await;
        }
    }
    per_node
        .into_iter()
        .map(|(n, (count, ready))| (n, count, ready))
        .collect()
}

/// Three nodes and the DaemonSet `roll` (label `app=roll`, image `testapp:v1`) with
/// `strategy` as its `updateStrategy` (`null`: the default).
async fn roll_daemonset(c: &Client, strategy: serde_json::Value) -> Api<DaemonSet> {
    for n in ["n1", "n2", "n3"] {
        create_node(c, n).await;
    }
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "roll"},
        "spec": {"selector": {"matchLabels": {"app": "roll"}},
                 "updateStrategy": strategy,
                 "template": {"metadata": {"labels": {"app": "roll"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp:v1"}]}}}
    }))
    .unwrap();
    dss.create(&PostParams::default(), &ds).await.unwrap();
    dss
}

/// Moves the `roll` DaemonSet's template to `image`.
async fn set_roll_image(dss: &Api<DaemonSet>, image: &str) {
    dss.patch(
        "roll",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})),
    )
    .await
    .unwrap();
}

/// `maxSurge: 1, maxUnavailable: 0`: the new pod starts beside the old one on one node at a
/// time and the old one goes once the new one is ready, so every node always has a ready
/// daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_surge_update_keeps_every_node_served() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    let dss = roll_daemonset(
        &c,
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
    )
    .await;
    let next_ip = AtomicU32::new(0);
    let all_at = |image: &'static str| {
        let c = c.clone();
        move || {
            let c = c.clone();
            async move {
                let pods = active_pods(&c, "app=roll").await;
                (pods.len() == 3
                    && pods.iter().all(|p| {
                        is_ready(p)
                            && p.spec.as_ref().unwrap().containers[0].image.as_deref()
                                == Some(image)
                    }))
                .then_some(())
            }
        }
    };
    let v1 = all_at("testapp:v1");
    h.wait("three ready v1 daemon pods", || async {
        daemon_kubelets(&c, &next_ip).await;
        v1().await
    })
    .await;
    set_roll_image(&dss, "testapp:v2").await;
    let v2 = all_at("testapp:v2");
    let most_doubled = AtomicUsize::new(0);
    h.wait("all daemon pods at v2", || async {
        let seen = daemon_kubelets(&c, &next_ip).await;
        assert!(
            seen.len() == 3 && seen.iter().all(|(_, live, ready)| *ready && *live <= 2),
            "a node without a ready daemon, or with more than two: {seen:?}"
        );
        let doubled = seen.iter().filter(|(_, live, _)| *live == 2).count();
        most_doubled.fetch_max(doubled, Ordering::SeqCst);
        v2().await
    })
    .await;
    // A new pod is only made ready by a poll that also sees the old one beside it.
    assert_eq!(
        most_doubled.load(Ordering::SeqCst),
        1,
        "maxSurge 1: exactly one node at a time runs its old and new daemon pods"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_rolling_update_replaces_one_node_at_a_time() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    let dss = roll_daemonset(&c, serde_json::Value::Null).await;
    let next_ip = AtomicU32::new(0);
    let rolled_out = |image: &'static str| {
        let (c, dss) = (c.clone(), dss.clone());
        move |seen: Vec<(String, usize, bool)>| {
            let (c, dss) = (c.clone(), dss.clone());
            async move {
                let ds = dss.get("roll").await.ok()?;
                let status = ds.status?;
                let pods = active_pods(&c, "app=roll").await;
                let all_new = pods.len() == 3
                    && pods.iter().all(|p| {
                        p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image)
                    });
                let done = all_new
                    && seen.iter().all(|(_, _, ready)| *ready)
                    && status.observed_generation == ds.metadata.generation
                    && status.updated_number_scheduled == Some(3)
                    && status.number_available == Some(3);
                done.then_some(())
            }
        }
    };
    let done = rolled_out("testapp:v1");
    h.wait("three ready v1 daemon pods", || async {
        let seen = daemon_kubelets(&c, &next_ip).await;
        done(seen).await
    })
    .await;

    set_roll_image(&dss, "testapp:v2").await;
    let done = rolled_out("testapp:v2");
    let worst = AtomicUsize::new(3);
    h.wait("all daemon pods at v2", || async {
        let seen = daemon_kubelets(&c, &next_ip).await;
        let ready_nodes = seen.iter().filter(|(_, _, ready)| *ready).count();
        worst.fetch_min(ready_nodes, Ordering::SeqCst);
        assert!(
            seen.iter().all(|(_, live, _)| *live <= 1),
            "a node ran two daemon pods: {seen:?}"
        );
        done(seen).await
    })
    .await;
    // maxUnavailable 1 (the default): never fewer than 2 of 3 nodes with a ready pod.
    let worst = worst.load(Ordering::SeqCst);
    assert!(
        worst >= 2,
        "only {worst} of 3 nodes had a ready pod during the update"
    );
    let out = kubectl(
        &h,
        &["rollout", "status", "daemonset/roll", "--timeout=20s"],
    );
    assert!(
        out.status.success(),
        "kubectl rollout status: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Each template is a ControllerRevision, so kubectl can list and undo the rollout.
    let history = kubectl(&h, &["rollout", "history", "daemonset/roll"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(
        history.status.success() && text.contains("1 ") && text.contains("2 "),
        "kubectl rollout history: {text}{}",
        String::from_utf8_lossy(&history.stderr)
    );
    let undo = kubectl(&h, &["rollout", "undo", "daemonset/roll"]);
    assert!(
        undo.status.success(),
        "kubectl rollout undo: {}",
        String::from_utf8_lossy(&undo.stderr)
    );
    let done = rolled_out("testapp:v1");
    h.wait("all daemon pods back at v1", || async {
        let seen = daemon_kubelets(&c, &next_ip).await;
        done(seen).await
    })
    .await;
    // The v1 revision is the newest again: renumbered to 3, not copied.
    let revisions = Api::<ControllerRevision>::namespaced(c.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut numbers: Vec<(i64, String)> = revisions
        .iter()
        .map(|r| {
            let image = r.data.0["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (r.revision.unwrap_or(0), image)
        })
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        [(2, "testapp:v2".to_string()), (3, "testapp:v1".to_string())],
        "{revisions:?}"
    );
}
