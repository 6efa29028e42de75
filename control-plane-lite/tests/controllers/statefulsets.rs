//! StatefulSets: ordered creation, scale-down from the highest ordinal, healing under the same
//! name, and rolling updates with a partition. A watcher follows every pod event of the set and
//! checks the ordering rules on each intermediate state, not only on the end result.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use netlet_control_plane::controllers::statefulset::{
    POD_INDEX_LABEL, POD_NAME_LABEL, REVISION_LABEL,
};
use netlet_control_plane::controllers::ControllersConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::harness::*;

/// What the watcher saw of one set's pods.
#[derive(Debug, Default)]
struct Seen {
    /// Pod names in the order they started terminating (deletionTimestamp set).
    terminations: Vec<String>,
    /// Broken ordering rules, as messages.
    violations: Vec<String>,
}

fn ordinal(name: &str) -> usize {
    name.rsplit('-').next().unwrap().parse().unwrap()
}

/// Follows the pods labelled `app=<set>` and records, as violations: a pod created while a
/// lower ordinal is missing or not Ready (OrderedReady creation), and a pod starting to
/// terminate while another one is terminating or not Ready (one at a time, healthy first).
/// Returns once the watch has listed the current pods, so no later event is missed.
async fn watch_set(client: Client, set: &str, cancel: CancellationToken) -> Arc<Mutex<Seen>> {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let seen: Arc<Mutex<Seen>> = Default::default();
    let out = seen.clone();
    let label = format!("app={set}");
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let mut listed_tx = Some(listed_tx);
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, "default");
        let mut pods: BTreeMap<usize, Pod> = BTreeMap::new();
        let mut stream = watcher::watcher(api, watcher::Config::default().labels(&label)).boxed();
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            let p = match ev {
                Some(Ok(Event::Apply(p))) => p,
                Some(Ok(Event::InitApply(p))) => {
                    pods.insert(ordinal(p.metadata.name.as_deref().unwrap()), p);
                    continue;
                }
                Some(Ok(Event::Delete(p))) => {
                    pods.remove(&ordinal(p.metadata.name.as_deref().unwrap()));
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    pods.clear();
                    continue;
                }
                Some(Ok(Event::InitDone)) => {
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Some(Err(_)) => continue,
                None => return,
            };
            let name = p.metadata.name.clone().unwrap();
            let ord = ordinal(&name);
            let mut seen = out.lock().unwrap();
            let healthy = |q: &Pod| q.metadata.deletion_timestamp.is_none() && is_ready(q);
            match pods.get(&ord) {
                None => {
                    if let Some(bad) = (0..ord).find(|j| !pods.get(j).is_some_and(healthy)) {
                        seen.violations.push(format!(
                            "{name} created while ordinal {bad} was missing or not Ready"
                        ));
                    }
                }
                Some(prev)
                    if prev.metadata.deletion_timestamp.is_none()
                        && p.metadata.deletion_timestamp.is_some() =>
                {
                    seen.terminations.push(name.clone());
                    for (j, q) in pods.iter().filter(|(j, _)| **j != ord) {
                        if !healthy(q) {
                            seen.violations.push(format!(
                                "{name} deleted while ordinal {j} was terminating or not Ready"
                            ));
                        }
                    }
                }
                Some(_) => {}
            }
            pods.insert(ord, p);
        }
    });
    listed.await.expect("pod watch of the set listed");
    seen
}

async fn sts_status(c: &Client, name: &str) -> Option<StatefulSetStatus> {
    Api::<StatefulSet>::namespaced(c.clone(), "default")
        .get(name)
        .await
        .ok()?
        .status
}

async fn get_pod(c: &Client, name: &str) -> Option<Pod> {
    Api::<Pod>::namespaced(c.clone(), "default")
        .get(name)
        .await
        .ok()
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

fn image(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

fn label<'a>(p: &'a Pod, key: &str) -> &'a str {
    p.metadata.labels.as_ref().unwrap()[key].as_str()
}

fn statefulset(name: &str, replicas: i32, partition: i32, image: &str) -> StatefulSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "serviceName": name,
                 "selector": {"matchLabels": {"app": name}},
                 "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": image}]}}}
    }))
    .unwrap()
}

/// Waits for `name` to exist with a pod IP (bound and Running, per the simulated kubelet) and
/// a uid other than `not_uid`; returns it.
async fn wait_running(h: &Harness, name: &str, not_uid: Option<&str>) -> Pod {
    h.wait(&format!("pod {name} running"), || async {
        let p = get_pod(&h.client, name).await?;
        (pod_ip(&p).is_some()
            && p.metadata.deletion_timestamp.is_none()
            && p.metadata.uid.as_deref() != not_uid)
            .then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_ordered_scale_up_down_and_heal() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    // Pods get bound and an IP but turn Ready only when the test says so.
    spawn_kubelet(c.clone(), false, h.cancel.clone());
    let seen = watch_set(c.clone(), "db", h.cancel.clone()).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let created = sets
        .create(
            &PostParams::default(),
            &statefulset("db", 3, 0, "testapp:v1"),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.unwrap();

    for i in 0..3 {
        let name = format!("db-{i}");
        let p = wait_running(&h, &name, None).await;
        // db-i is Running but not Ready: OrderedReady must not have created db-(i+1).
        assert!(
            get_pod(&c, &format!("db-{}", i + 1)).await.is_none(),
            "db-{} exists before {name} is Ready",
            i + 1
        );
        set_status(&pods, &name, &pod_ip(&p).unwrap(), true).await;
    }
    let status = h
        .wait("3 ready replicas", || async {
            let s = sts_status(&c, "db").await?;
            (s.ready_replicas == Some(3) && s.replicas == 3).then_some(s)
        })
        .await;
    let rev = status.update_revision.clone().unwrap();
    assert!(rev.starts_with("db-"), "revision {rev}");
    assert_eq!(status.current_revision.as_deref(), Some(rev.as_str()));
    assert_eq!(
        (
            status.current_replicas,
            status.updated_replicas,
            status.available_replicas
        ),
        (Some(3), Some(3), Some(3))
    );
    assert_eq!(
        (status.observed_generation, status.collision_count),
        (Some(1), Some(0))
    );
    for i in 0..3 {
        let name = format!("db-{i}");
        let p = get_pod(&c, &name).await.unwrap();
        assert_eq!(label(&p, POD_NAME_LABEL), name);
        assert_eq!(label(&p, POD_INDEX_LABEL), i.to_string());
        assert_eq!(label(&p, REVISION_LABEL), rev);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(name.as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
        let r = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((&r.uid, r.controller), (&uid, Some(true)));
    }

    // Scale down: db-2 goes first, then db-1, each only once the previous one is gone.
    set_replicas(&sets, "db", 1).await;
    h.wait("scaled down to db-0", || async {
        let s = sts_status(&c, "db").await?;
        let left = active_pods(&c, "app=db").await.len();
        (s.replicas == 1 && s.ready_replicas == Some(1) && left == 1).then_some(())
    })
    .await;
    assert!(get_pod(&c, "db-0").await.is_some());
    assert_eq!(seen.lock().unwrap().terminations, ["db-2", "db-1"]);

    // A deleted pod comes back under the same name.
    let old = get_pod(&c, "db-0").await.unwrap().metadata.uid.unwrap();
    pods.delete("db-0", &DeleteParams::default()).await.unwrap();
    let p = wait_running(&h, "db-0", Some(&old)).await;
    set_status(&pods, "db-0", &pod_ip(&p).unwrap(), true).await;

    // So does a failed one.
    let old = p.metadata.uid.unwrap();
    pods.patch_status(
        "db-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    let p = wait_running(&h, "db-0", Some(&old)).await;
    set_status(&pods, "db-0", &pod_ip(&p).unwrap(), true).await;
    h.wait("db-0 ready again", || async {
        let s = sts_status(&c, "db").await?;
        (s.ready_replicas == Some(1) && s.replicas == 1).then_some(())
    })
    .await;
    let seen = seen.lock().unwrap();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    // The Failed db-0 has no terminating phase: the apiserver removes a pod in a terminal
    // phase at once (nothing left to stop), so only the new uid above shows it was replaced.
    assert_eq!(seen.terminations, ["db-2", "db-1", "db-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_rolling_update_honours_partition() {
    let h = Harness::start(ControllersConfig::default()).await;
    let c = h.client.clone();
    spawn_kubelet(c.clone(), true, h.cancel.clone());
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    sets.create(
        &PostParams::default(),
        &statefulset("web", 3, 1, "testapp:v1"),
    )
    .await
    .unwrap();
    let status = h
        .wait("3 ready replicas at v1", || async {
            let s = sts_status(&c, "web").await?;
            (s.ready_replicas == Some(3) && s.updated_replicas == Some(3)).then_some(s)
        })
        .await;
    let rev1 = status.update_revision.unwrap();
    let web0 = get_pod(&c, "web-0").await.unwrap().metadata.uid.unwrap();
    // Watched from here on: only the update deletes pods.
    let seen = watch_set(c.clone(), "web", h.cancel.clone()).await;

    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "testapp:v2"}]}}}})),
    )
    .await
    .unwrap();
    let status = h
        .wait(
            "web-2 and web-1 updated, web-0 kept by the partition",
            || async {
                let s = sts_status(&c, "web").await?;
                (s.updated_replicas == Some(2)
                    && s.current_replicas == Some(1)
                    && s.ready_replicas == Some(3)
                    && s.observed_generation == Some(2))
                .then_some(s)
            },
        )
        .await;
    let rev2 = status.update_revision.clone().unwrap();
    assert_ne!(rev1, rev2);
    assert_eq!(status.current_revision.as_deref(), Some(rev1.as_str()));
    for (name, rev, img) in [
        ("web-0", &rev1, "testapp:v1"),
        ("web-1", &rev2, "testapp:v2"),
        ("web-2", &rev2, "testapp:v2"),
    ] {
        let p = get_pod(&c, name).await.unwrap();
        assert_eq!(
            (label(&p, REVISION_LABEL), image(&p).as_str()),
            (rev.as_str(), img)
        );
    }
    assert_eq!(
        get_pod(&c, "web-0").await.unwrap().metadata.uid.unwrap(),
        web0,
        "web-0 is below the partition and must not be replaced by the update"
    );
    assert_eq!(seen.lock().unwrap().terminations, ["web-2", "web-1"]);

    // Below the partition a deleted pod comes back at the current revision, from its
    // ControllerRevision's template.
    Api::<Pod>::namespaced(c.clone(), "default")
        .delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    let back = wait_running(&h, "web-0", Some(&web0)).await;
    assert_eq!(
        (label(&back, REVISION_LABEL), image(&back).as_str()),
        (rev1.as_str(), "testapp:v1"),
        "web-0 recreated at the current revision"
    );
    h.wait("web-0 ready again", || async {
        let s = sts_status(&c, "web").await?;
        (s.ready_replicas == Some(3) && s.current_replicas == Some(1)).then_some(())
    })
    .await;

    // Partition 0: web-0 follows, and the update revision becomes the current one.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    h.wait("rollout complete", || async {
        let s = sts_status(&c, "web").await?;
        (s.current_revision.as_deref() == Some(rev2.as_str())
            && s.current_replicas == Some(3)
            && s.ready_replicas == Some(3))
        .then_some(())
    })
    .await;
    assert_eq!(image(&get_pod(&c, "web-0").await.unwrap()), "testapp:v2");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.terminations, ["web-2", "web-1", "web-0", "web-0"]);
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    }

    // Both templates are ControllerRevisions named like the revisions: kubectl undoes the
    // rollout to v1, which becomes the update revision again.
    let names: Vec<String> = Api::<ControllerRevision>::namespaced(c.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    assert!(names.contains(&rev1) && names.contains(&rev2), "{names:?}");
    let undo = kubectl(&h, &["rollout", "undo", "statefulset/web"]);
    assert!(
        undo.status.success(),
        "kubectl rollout undo: {}",
        String::from_utf8_lossy(&undo.stderr)
    );
    h.wait("the update revision back at v1", || async {
        let s = sts_status(&c, "web").await?;
        (s.update_revision.as_deref() == Some(rev1.as_str())).then_some(())
    })
    .await;
}
