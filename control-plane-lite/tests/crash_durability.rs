//! kill -9 of the apiserver during 1,000 concurrent ConfigMap creates from 16 clients: after a
//! restart on the same data directory every create that got a 2xx is there with the same
//! content and resourceVersion, nothing that was never sent appeared, and the store still
//! accepts writes and lists consistently (embedded storage acknowledges only after fsync).

use integration::TestApiserver;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

const NS: &str = "crash";
const CLIENTS: usize = 16;
const CREATES: usize = 1_000;
/// The server is killed once this many creates were acknowledged.
const KILL_AFTER_ACKS: usize = 300;

/// What one create got back: acknowledged with this resourceVersion, or failed.
struct Outcome {
    name: String,
    acked_rv: Option<u64>,
}

fn name(i: usize) -> String {
    format!("cm-{i:04}")
}

/// The content create `i` writes (a few hundred bytes, distinct per object).
fn data(i: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("index".to_string(), i.to_string()),
        ("payload".to_string(), format!("{i:04}-").repeat(50)),
    ])
}

fn config_map(i: usize) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name(i)),
            labels: Some(BTreeMap::from([("set".to_string(), "crash".to_string())])),
            ..Default::default()
        },
        data: Some(data(i)),
        ..Default::default()
    }
}

fn rv(cm: &ConfigMap) -> u64 {
    cm.metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_else(|| panic!("{:?} has no numeric resourceVersion", cm.metadata.name))
}

/// Client `c` creates every `CLIENTS`-th object from index `c`, one after another. Once
/// `KILL_AFTER_ACKS` creates are acknowledged it starts no new request until the server is
/// dead, so exactly the requests already in flight (at most one per client) race the kill
/// and every later one fails: the test does not depend on how fast anything runs.
async fn creator(
    client: Client,
    c: usize,
    acks: Arc<AtomicUsize>,
    reached: watch::Sender<bool>,
    mut killed: watch::Receiver<bool>,
) -> Vec<Outcome> {
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let mut outcomes = Vec::new();
    for i in (c..CREATES).step_by(CLIENTS) {
        if acks.load(Ordering::SeqCst) >= KILL_AFTER_ACKS {
            killed.wait_for(|k| *k).await.expect("kill signal");
        }
        let acked_rv = match api.create(&PostParams::default(), &config_map(i)).await {
            Ok(created) => {
                if acks.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACKS {
                    reached.send_replace(true);
                }
                assert_eq!(created.data, Some(data(i)), "create {} echoed", name(i));
                Some(rv(&created))
            }
            Err(_) => None,
        };
        outcomes.push(Outcome {
            name: name(i),
            acked_rv,
        });
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_creates_survive_kill_9() {
    let mut server = TestApiserver::start();
    let admin = server.client().await;
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(admin)
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace crash");

    let acks = Arc::new(AtomicUsize::new(0));
    let (reached_tx, mut reached_rx) = watch::channel(false);
    let (killed_tx, killed_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        // Each its own kube Client, so each has its own connections.
        let client = server.client().await;
        tasks.push(tokio::spawn(creator(
            client,
            c,
            acks.clone(),
            reached_tx.clone(),
            killed_rx.clone(),
        )));
    }
    reached_rx
        .wait_for(|r| *r)
        .await
        .expect("300 acknowledged creates");
    let pid = server.pid();
    server.kill();
    killed_tx.send_replace(true);

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("creator task"));
    }
    let acked: BTreeMap<&str, u64> = outcomes
        .iter()
        .flatten()
        .filter_map(|o| o.acked_rv.map(|rv| (o.name.as_str(), rv)))
        .collect();
    let failed = outcomes
        .iter()
        .flatten()
        .filter(|o| o.acked_rv.is_none())
        .count();
    assert!(
        acked.len() >= KILL_AFTER_ACKS && acked.len() < KILL_AFTER_ACKS + CLIENTS,
        "{} acks: the server (pid {pid}) should die with at most one create per client in flight",
        acked.len()
    );
    assert_eq!(acked.len() + failed, CREATES, "every create has an outcome");
    // Each client's creates are sequential, so its acknowledged resourceVersions increase.
    for (c, client_outcomes) in outcomes.iter().enumerate() {
        let rvs: Vec<u64> = client_outcomes.iter().filter_map(|o| o.acked_rv).collect();
        assert!(
            rvs.windows(2).all(|w| w[0] < w[1]),
            "client {c}'s acknowledged resourceVersions are not increasing: {rvs:?}"
        );
    }
    let distinct: HashSet<u64> = acked.values().copied().collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "two creates got one resourceVersion"
    );
    let max_acked_rv = acked.values().copied().max().expect("some acks");

    server.restart();
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let lp = ListParams::default().labels("set=crash");
    let list = api.list(&lp).await.expect("list after restart");
    let list_rv: u64 = list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .expect("list resourceVersion");
    assert!(
        list_rv >= max_acked_rv,
        "list at resourceVersion {list_rv} is older than an acknowledged create ({max_acked_rv})"
    );
    let present: BTreeMap<String, ConfigMap> = list
        .items
        .into_iter()
        .map(|cm| (cm.metadata.name.clone().expect("name"), cm))
        .collect();
    for (name, acked_rv) in &acked {
        let cm = present.get(*name).unwrap_or_else(|| {
            panic!(
                "{name} was acknowledged (resourceVersion {acked_rv}) but is gone after kill -9; \
                 log:\n{}",
                server.log()
            )
        });
        assert_eq!(rv(cm), *acked_rv, "{name}'s resourceVersion changed");
        let index: usize = name[3..].parse().expect("index in name");
        assert_eq!(cm.data, Some(data(index)), "{name}'s content changed");
        let got = api.get(name).await.expect("get acknowledged object");
        assert_eq!(rv(&got), *acked_rv, "GET {name} disagrees with LIST");
    }
    // Objects present without an ack can only be the creates in flight at the kill, whole.
    let unacked: Vec<&String> = present
        .keys()
        .filter(|n| !acked.contains_key(n.as_str()))
        .collect();
    assert!(
        unacked.len() < CLIENTS,
        "{} objects without an ack survived, more than were in flight: {unacked:?}",
        unacked.len()
    );
    println!(
        "killed pid {pid} after {} acknowledged creates ({failed} failed); all acknowledged \
         present after restart, {} unacknowledged in-flight creates also stored",
        acked.len(),
        unacked.len()
    );
    for name in unacked {
        let index: usize = name[3..].parse().expect("index in name");
        assert_eq!(present[name].data, Some(data(index)), "{name} is torn");
    }

    // The store still takes writes, with revisions after everything before the crash.
    let after = api
        .create(&PostParams::default(), &config_map(CREATES))
        .await
        .expect("create after restart");
    assert!(
        rv(&after) > list_rv,
        "new write's resourceVersion went back"
    );
    let (first, first_rv) = acked.iter().next().expect("an acked object");
    let mut replaced = present[*first].clone();
    replaced.data = Some(BTreeMap::from([("after".into(), "restart".into())]));
    let updated = api
        .replace(first, &PostParams::default(), &replaced)
        .await
        .expect("replace with the pre-crash resourceVersion");
    assert!(
        rv(&updated) > rv(&after),
        "update's resourceVersion went back"
    );
    match api.replace(first, &PostParams::default(), &replaced).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        other => panic!("replace of {first} at stale {first_rv} gave {other:?}, want 409"),
    }

    // Two full LISTs and a paginated one agree.
    let full: Vec<(String, u64)> = names_and_rvs(&api.list(&lp).await.expect("list").items);
    let again = names_and_rvs(&api.list(&lp).await.expect("second list").items);
    assert_eq!(full, again, "two lists of an idle store differ");
    assert_eq!(full.len(), present.len() + 1, "list after the new create");
    let mut paged = Vec::new();
    let mut page_params = lp.clone().limit(100);
    loop {
        let page = api.list(&page_params).await.expect("list page");
        paged.extend(names_and_rvs(&page.items));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => page_params = page_params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(paged, full, "paginated list differs from the full list");
}

fn names_and_rvs(items: &[ConfigMap]) -> Vec<(String, u64)> {
    items
        .iter()
        .map(|cm| (cm.metadata.name.clone().expect("name"), rv(cm)))
        .collect()
}
