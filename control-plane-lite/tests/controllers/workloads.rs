//! ReplicaSets and Deployments.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use netlet_control_plane::controllers::ControllersConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_scales_adopts_and_heals() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut orphan = web_pod("orphan", 8080);
    orphan.metadata.labels = Some([("app".to_string(), "rs".to_string())].into());
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "rs1"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "rs"}},
                 "template": {"metadata": {"labels": {"app": "rs", "tier": "x"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp"}]}}}
    }))
    .unwrap();
    let uid = rss
        .create(&PostParams::default(), &rs)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();

    // `cap`: most active pods allowed while converging (no extra pods from an event burst).
    let expect = |want: usize, cap: usize| {
        let (c, uid) = (c.clone(), uid.clone());
        move || {
            let (c, uid) = (c.clone(), uid.clone());
            async move {
                let active = active_pods(&c, "app=rs").await;
                assert!(
                    active.len() <= cap,
                    "{} active pods, cap {cap}",
                    active.len()
                );
                let owned = active.iter().all(|p| {
                    p.metadata.owner_references.iter().flatten().any(|r| {
                        r.uid == uid
                            && r.controller == Some(true)
                            && r.block_owner_deletion == Some(true)
                    })
                });
                let status = rss_status(&c).await?;
                (active.len() == want
                    && owned
                    && status.replicas == want as i32
                    && status.ready_replicas == Some(want as i32)
                    && status.available_replicas == Some(want as i32))
                .then_some(active)
            }
        }
    };
    let active = h
        .wait("3 ready pods incl. the adopted orphan", expect(3, 3))
        .await;
    assert!(active
        .iter()
        .any(|p| p.metadata.name.as_deref() == Some("orphan")));
    for p in active
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some("orphan"))
    {
        let name = p.metadata.name.as_deref().unwrap();
        assert!(
            name.starts_with("rs1-") && name.len() == "rs1-".len() + 5,
            "pod name {name}"
        );
        assert_eq!(p.metadata.labels.as_ref().unwrap()["tier"], "x");
    }
    let status = rss.get("rs1").await.unwrap().status.unwrap();
    assert_eq!(
        (status.fully_labeled_replicas, status.observed_generation),
        (Some(2), Some(1)),
        "the orphan lacks tier=x"
    );

    set_replicas(&rss, "rs1", 5).await;
    h.wait("scaled up to 5", expect(5, 5)).await;
    set_replicas(&rss, "rs1", 2).await;
    let two = h.wait("scaled down to 2", expect(2, 5)).await;

    // Self-healing: a deleted pod is replaced.
    let victim = two[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let healed = h
        .wait("a replacement for the deleted pod", || async {
            let active = expect(2, 2)().await?;
            (!active
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(victim.as_str())))
            .then_some(active)
        })
        .await;
    assert_eq!(healed.len(), 2);
    assert_eq!(
        rss.get("rs1")
            .await
            .unwrap()
            .status
            .unwrap()
            .observed_generation,
        Some(3)
    );
}

async fn rss_status(c: &Client) -> Option<k8s_openapi::api::apps::v1::ReplicaSetStatus> {
    Api::<ReplicaSet>::namespaced(c.clone(), "default")
        .get("rs1")
        .await
        .ok()?
        .status
}

/// Pod counts the rollout test's watcher saw break the bounds, as messages.
type Violations = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Follows every pod event with label app=dep and records states with more than `max_pods`
/// active pods or (once `armed`) fewer than `min_ready` ready active pods.
fn watch_bounds(
    client: Client,
    max_pods: usize,
    min_ready: usize,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cancel: CancellationToken,
) -> Violations {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let violations: Violations = Default::default();
    let out = violations.clone();
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, "default");
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut stream =
            watcher::watcher(api, watcher::Config::default().labels("app=dep")).boxed();
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                Some(Ok(Event::Apply(p) | Event::InitApply(p))) => {
                    pods.insert(p.metadata.name.clone().unwrap(), p);
                }
                Some(Ok(Event::Delete(p))) => {
                    pods.remove(p.metadata.name.as_deref().unwrap());
                }
                Some(Ok(Event::Init)) => pods.clear(),
                Some(Ok(Event::InitDone)) | Some(Err(_)) => {}
                None => return,
            }
            let active: Vec<&Pod> = pods
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let ready = active.iter().filter(|p| is_ready(p)).count();
            if active.len() > max_pods {
                out.lock()
                    .unwrap()
                    .push(format!("{} active pods > {max_pods}", active.len()));
            }
            if armed.load(std::sync::atomic::Ordering::SeqCst) && ready < min_ready {
                out.lock()
                    .unwrap()
                    .push(format!("{ready} ready pods < {min_ready}"));
            }
        }
    });
    violations
}

/// Marks at most one active, bound, not-ready pod with label app=dep Ready (one kubelet step).
async fn ready_one(c: &Client) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pending = active_pods(c, "app=dep")
        .await
        .into_iter()
        .find(|p| !is_ready(p) && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some());
    if let Some(p) = pending {
        let ip = p.status.unwrap().pod_ip.unwrap();
        let name = p.metadata.name.unwrap();
        let status =
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "podIP": ip}});
        let _ = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await;
    }
}

/// Whether the deployment's status says its rollout finished (what `kubectl rollout status` checks).
async fn rolled_out(c: &Client, name: &str, replicas: i32) -> Option<Deployment> {
    let d = Api::<Deployment>::namespaced(c.clone(), "default")
        .get(name)
        .await
        .ok()?;
    let s = d.status.clone()?;
    let progressing = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Progressing"))?;
    (s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(replicas)
        && s.replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && progressing.reason.as_deref() == Some("NewReplicaSetAvailable"))
    .then_some(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolling_update_stays_within_surge_and_unavailable() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    // Pods get bound and an IP but turn Ready only when the test says so.
    spawn_kubelet(c.clone(), false, h.cancel.clone());
    let (replicas, surge, unavailable) = (4usize, 1usize, 1usize);
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let violations = watch_bounds(
        c.clone(),
        replicas + surge,
        replicas - unavailable,
        armed.clone(),
        h.cancel.clone(),
    );
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "annotations": {"kubernetes.io/change-cause": "v1"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "dep"}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                 "template": {"metadata": {"labels": {"app": "dep"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp:v1"}]}}}
    }))
    .unwrap();
    deps.create(&PostParams::default(), &d).await.unwrap();
    h.wait("first rollout", || async {
        ready_one(&c).await;
        rolled_out(&c, "web", replicas as i32).await
    })
    .await;
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let first = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(first.len(), 1);
    let rs1 = &first[0];
    let hash1 = rs1.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        rs1.metadata.name.as_deref(),
        Some(format!("web-{hash1}").as_str())
    );
    assert_eq!(
        rs1.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );

    // Roll to v2 one readiness at a time; the watcher checks every intermediate state.
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    deps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "v2"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "testapp:v2"}]}}}})),
    )
    .await
    .unwrap();
    let done = h
        .wait("rollout to v2", || async {
            ready_one(&c).await;
            let v = violations.lock().unwrap().clone();
            assert!(v.is_empty(), "rollout left its bounds: {v:?}");
            rolled_out(&c, "web", replicas as i32).await
        })
        .await;
    assert_eq!(
        done.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let all = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 2, "the old ReplicaSet is kept for rollback");
    for rs in &all {
        let hash = &rs.metadata.labels.as_ref().unwrap()["pod-template-hash"];
        let rev = &rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"];
        if *hash == hash1 {
            assert_eq!((rev.as_str(), rs.spec.replicas), ("1", Some(0)));
        } else {
            assert_eq!((rev.as_str(), rs.spec.replicas), ("2", Some(4)));
        }
    }
    let pods = active_pods(&c, "app=dep").await;
    assert_eq!(pods.len(), replicas);
    assert!(pods
        .iter()
        .all(|p| p.metadata.labels.as_ref().unwrap()["pod-template-hash"] != hash1));

    // The stock kubectl agrees the rollout finished and lists both revisions.
    let out = kubectl(
        &h,
        &["rollout", "status", "deployment/web", "--timeout=20s"],
    );
    assert!(
        out.status.success(),
        "kubectl rollout status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(&h, &["rollout", "history", "deployment/web"]);
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && history.contains("v1") && history.contains("v2"),
        "history: {history}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_recreate_history_limit_and_undo() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "rc"},
        "spec": {"replicas": 2, "revisionHistoryLimit": 1, "selector": {"matchLabels": {"app": "rc"}},
                 "strategy": {"type": "Recreate"},
                 "template": {"metadata": {"labels": {"app": "rc"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp:v1"}]}}}
    }))
    .unwrap();
    deps.create(&PostParams::default(), &d).await.unwrap();
    h.wait("v1 rolled out", || rolled_out(&c, "rc", 2)).await;
    let set_image = |image: &'static str| {
        let deps = deps.clone();
        async move {
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
            deps.patch("rc", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap();
        }
    };
    // (revision, spec.replicas, image) of every ReplicaSet, by revision.
    let sets = || async {
        let mut v: Vec<(i64, i32, String)> = rss
            .list(&ListParams::default().labels("app=rc"))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|rs| {
                let rev = rs.metadata.annotations.as_ref().unwrap()
                    ["deployment.kubernetes.io/revision"]
                    .parse()
                    .unwrap();
                let image = rs.spec.template.unwrap().spec.unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap();
                (rev, rs.spec.replicas.unwrap(), image)
            })
            .collect();
        v.sort();
        v
    };
    set_image("testapp:v2").await;
    h.wait("v2 rolled out", || rolled_out(&c, "rc", 2)).await;
    assert_eq!(
        sets().await,
        [(1, 0, "testapp:v1".into()), (2, 2, "testapp:v2".into())]
    );
    set_image("testapp:v3").await;
    h.wait(
        "v3 rolled out and v1 cleaned up (revisionHistoryLimit 1)",
        || async {
            rolled_out(&c, "rc", 2).await?;
            let v = sets().await;
            (v == [(2, 0, "testapp:v2".into()), (3, 2, "testapp:v3".into())]).then_some(())
        },
    )
    .await;
    let images: HashSet<String> = active_pods(&c, "app=rc")
        .await
        .into_iter()
        .map(|p| p.spec.unwrap().containers[0].image.clone().unwrap())
        .collect();
    assert_eq!(images, HashSet::from(["testapp:v3".to_string()]));

    // kubectl rollout undo brings v2's ReplicaSet back as revision 4.
    let out = kubectl(&h, &["rollout", "undo", "deployment/rc"]);
    assert!(
        out.status.success(),
        "rollout undo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.wait("undo to v2 as revision 4", || async {
        rolled_out(&c, "rc", 2).await?;
        let v = sets().await;
        (v == [(3, 0, "testapp:v3".into()), (4, 2, "testapp:v2".into())]).then_some(())
    })
    .await;
    let v2 = rss
        .list(&ListParams::default().labels("app=rc"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|rs| rs.spec.replicas == Some(2))
        .unwrap();
    assert_eq!(
        v2.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("2"),
        "v2's ReplicaSet reused: {v2:?}\ndeployment: {:?}",
        deps.get("rc").await.unwrap()
    );
}

/// The deployment's `Progressing` condition as `(status, reason)`.
async fn progressing(c: &Client, name: &str) -> Option<(String, String)> {
    let d = Api::<Deployment>::namespaced(c.clone(), "default")
        .get(name)
        .await
        .ok()?;
    let cond = d
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_.as_deref() == Some("Progressing"))?;
    Some((cond.status?, cond.reason?))
}

/// A rollout whose pods never turn ready times out after `progressDeadlineSeconds`: the
/// condition says so and `kubectl rollout status` fails instead of waiting forever; once the
/// pods are ready the rollout completes after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_stalled_rollout_exceeds_its_progress_deadline() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), false, h.cancel.clone());
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "stuck"},
        "spec": {"replicas": 2, "progressDeadlineSeconds": 2,
                 "selector": {"matchLabels": {"app": "dep"}},
                 "template": {"metadata": {"labels": {"app": "dep"}},
                              "spec": {"containers": [{"name": "c", "image": "testapp:v1"}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    h.wait("the rollout to time out", || async {
        let (status, reason) = progressing(&c, "stuck").await?;
        (status == "False" && reason == "ProgressDeadlineExceeded").then_some(())
    })
    .await;
    let out = kubectl(
        &h,
        &["rollout", "status", "deployment/stuck", "--timeout=20s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("exceeded its progress deadline"),
        "kubectl rollout status: {stderr}"
    );
    h.wait("the rollout to finish once pods are ready", || async {
        ready_one(&c).await;
        rolled_out(&c, "stuck", 2).await
    })
    .await;
}
