//! Lease leader election between two candidates against the real apiserver
//! (`integration::TestApiserver`, `--disable-scheduler` so no other Lease writer runs).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::TestApiserver;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use netlet_control_plane::leader::{LeaderConfig, LeaderElector, Outcome};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "test-lease";
/// Short timings so takeovers happen within seconds.
const LEASE_DURATION: Duration = Duration::from_secs(3);
/// Limit for every wait below.
const WAIT: Duration = Duration::from_secs(30);

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        identity: identity.into(),
        lease_duration: LEASE_DURATION,
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
        ..LeaderConfig::new("kube-system", LEASE)
    }
}

/// Who is running their task right now, and every task start in order.
#[derive(Default)]
struct Record {
    running: Vec<String>,
    started: Vec<String>,
}

/// Starts a candidate whose task records itself while it runs.
fn candidate(
    client: &Client,
    identity: &str,
    record: &Arc<Mutex<Record>>,
    shutdown: CancellationToken,
) -> JoinHandle<Outcome> {
    let mut elector = LeaderElector::new(client.clone(), config(identity));
    let record = Arc::clone(record);
    let id = identity.to_string();
    tokio::spawn(async move {
        elector
            .run(shutdown, |token| async move {
                {
                    let mut r = record.lock().unwrap();
                    assert!(
                        r.running.is_empty(),
                        "{id} leads while {:?} does",
                        r.running
                    );
                    r.running.push(id.clone());
                    r.started.push(id.clone());
                }
                token.cancelled().await;
                record.lock().unwrap().running.retain(|x| *x != id);
            })
            .await
    })
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lease(client: &Client) -> Lease {
    Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get(LEASE)
        .await
        .expect("get lease")
}

fn holder(l: &Lease) -> Option<String> {
    l.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

fn started(record: &Arc<Mutex<Record>>) -> Vec<String> {
    record.lock().unwrap().started.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leads_and_the_other_takes_over_when_it_stops_renewing() {
    let server = TestApiserver::start_with(&["--disable-scheduler"]);
    let client = server.client().await;
    let record = Arc::new(Mutex::new(Record::default()));
    let a = candidate(&client, "a", &record, CancellationToken::new());
    let b = candidate(&client, "b", &record, CancellationToken::new());
    wait_for("a leader", || !started(&record).is_empty()).await;
    let first = started(&record)[0].clone();
    assert_eq!(
        holder(&lease(&client).await).as_deref(),
        Some(first.as_str())
    );
    // Fixed wait: two lease durations in which the leader keeps renewing and the other must
    // not take over (absence can only be shown by waiting).
    tokio::time::sleep(LEASE_DURATION * 2).await;
    assert_eq!(started(&record), vec![first.clone()]);

    // Drop the leader's elector without releasing: it simply stops renewing.
    let (leader, follower, next) = if first == "a" {
        (a, b, "b")
    } else {
        (b, a, "a")
    };
    leader.abort();
    let _ = leader.await;
    let stopped = Instant::now();
    record.lock().unwrap().running.clear();
    wait_for("the follower to take over", || started(&record).len() == 2).await;
    eprintln!(
        "takeover {:?} after the leader stopped (lease duration {LEASE_DURATION:?})",
        stopped.elapsed()
    );
    assert_eq!(started(&record), vec![first, next.to_string()]);
    let l = lease(&client).await;
    assert_eq!(holder(&l).as_deref(), Some(next));
    assert_eq!(l.spec.unwrap().lease_transitions, Some(1));
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_and_a_taken_lease_cancels_the_task() {
    let server = TestApiserver::start_with(&["--disable-scheduler"]);
    let client = server.client().await;
    let record = Arc::new(Mutex::new(Record::default()));
    let stop_a = CancellationToken::new();
    let a = candidate(&client, "a", &record, stop_a.clone());
    wait_for("a to lead", || started(&record) == ["a"]).await;

    // Shutdown: the task is cancelled and the lease released (empty holder) for a successor.
    stop_a.cancel();
    assert_eq!(a.await.unwrap(), Outcome::Shutdown);
    assert!(record.lock().unwrap().running.is_empty());
    assert_eq!(holder(&lease(&client).await), None);

    let b = candidate(&client, "b", &record, CancellationToken::new());
    wait_for("b to lead", || started(&record) == ["a", "b"]).await;

    // Another writer takes the lease: b's next renewal sees it and stops its task.
    Api::<Lease>::namespaced(client.clone(), "kube-system")
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "intruder",
                "leaseDurationSeconds": 3600}})),
        )
        .await
        .expect("patch lease");
    let outcome = tokio::time::timeout(WAIT, b)
        .await
        .expect("b gives up")
        .unwrap();
    assert_eq!(outcome, Outcome::LostLeadership);
    assert!(record.lock().unwrap().running.is_empty());
    assert_eq!(holder(&lease(&client).await).as_deref(), Some("intruder"));
}
