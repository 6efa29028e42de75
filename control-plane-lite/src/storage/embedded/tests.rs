//! Tests of the embedded store: the conformance suite, plus what only a disk-backed store has
//! (reopening, crash safety, the directory lock, group commit).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{EmbeddedOptions, EmbeddedStorage};
use crate::storage::{KeyValue, Storage, StorageError};

fn open(dir: &Path) -> Arc<EmbeddedStorage> {
    Arc::new(EmbeddedStorage::open(dir).expect("open store"))
}

macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            // A tiny watch buffer sends lagging watchers through catch-up often.
            let options = EmbeddedOptions { watch_buffer: 4, ..EmbeddedOptions::default() };
            let store = EmbeddedStorage::open_with(dir.path(), options).unwrap();
            crate::storage::conformance::$name(Arc::new(store)).await;
        }
    )*};
}

crate::storage::conformance::all_tests!(backend_tests);

/// Every event in the store's history, in order, replayed through a watch from revision 0.
async fn history(store: &dyn Storage) -> Vec<crate::storage::Event> {
    let current = store.current_revision().await.unwrap();
    let mut stream = store.watch("", 0).await.unwrap();
    let mut events = Vec::new();
    while events.len() < current as usize {
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next()).await;
        events.push(item.unwrap().unwrap().unwrap());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_every_write_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..12 {
                    let key = format!("/registry/pods/ns{w}/p{i}");
                    let revision = store.create(&key, vec![w, i]).await.unwrap();
                    if i % 4 == 1 {
                        store
                            .update(&key, vec![w, i, 1], Some(revision))
                            .await
                            .unwrap();
                    }
                    if i % 4 == 2 {
                        store.delete(&key, Some(revision)).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let events = history(&*store).await;
    store.compact(20).await.unwrap();
    let revision = store.current_revision().await.unwrap();
    let listed = store.list("/registry/", None, 0, None).await.unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.current_revision().await.unwrap(), revision);
    assert_eq!(
        store.list("/registry/", None, 0, None).await.unwrap(),
        listed
    );
    let err = store
        .list("/registry/", Some(19), 0, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Compacted {
                requested: 19,
                compacted: 20
            }
        ),
        "{err}"
    );
    let err = store
        .watch("", 0)
        .await
        .err()
        .expect("history below 20 is gone");
    assert!(matches!(err, StorageError::Compacted { .. }), "{err}");
    let mut stream = store.watch("", 20).await.unwrap();
    for expected in events.iter().filter(|e| e.revision() > 20) {
        assert_eq!(&stream.next().await.unwrap().unwrap(), expected);
    }
    assert_eq!(store.create("/after", vec![]).await.unwrap(), revision + 1);
}

#[tokio::test]
async fn values_are_opaque_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let values: Vec<Vec<u8>> = vec![vec![], vec![0, 0xff, 0xfe, 0], vec![7; 1 << 20]];
    for (i, value) in values.iter().enumerate() {
        store
            .create(&format!("/v/{i}"), value.clone())
            .await
            .unwrap();
    }
    drop(store);
    let store = open(dir.path());
    for (i, value) in values.iter().enumerate() {
        assert_eq!(
            &store.get(&format!("/v/{i}")).await.unwrap().unwrap().value,
            value
        );
    }
}

#[tokio::test]
async fn a_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create("/k", b"v".to_vec()).await.unwrap();
    let err = EmbeddedStorage::open(dir.path())
        .err()
        .expect("second open must fail");
    assert!(
        matches!(
            err,
            StorageError::Backend {
                op: "lock data directory",
                ..
            }
        ),
        "{err}"
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.get("/k").await.unwrap().unwrap().value, b"v");
}

/// Set in the child process of [`crash_keeps_every_acknowledged_write`] to its data directory.
const CRASH_CHILD_DIR: &str = "NETLET_STORAGE_CRASH_CHILD_DIR";

/// The child side of [`crash_keeps_every_acknowledged_write`]: writes forever from 4 tasks,
/// printing `ack <revision> <key> <value>` after each acknowledged write, until killed.
async fn crash_child_writer(dir: &Path) {
    let store = open(dir);
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0u64.. {
                    let key = format!("/crash/{w}/{i}");
                    let value = format!("{w}-{i}");
                    let revision = store
                        .create(&key, value.clone().into_bytes())
                        .await
                        .unwrap();
                    println!("ack {revision} {key} {value}");
                    if i > 0 && i % 3 == 0 {
                        let (key, value) = (format!("/crash/{w}/{}", i - 1), format!("{w}-{i}-u"));
                        let revision = store
                            .update(&key, value.clone().into_bytes(), None)
                            .await
                            .unwrap();
                        println!("ack {revision} {key} {value}");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// A writer process is SIGKILLed mid-stream; every write it acknowledged must be there after
/// reopening, at the revision it was acknowledged with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_keeps_every_acknowledged_write() {
    // The same test re-executed by the parent below plays the writer that gets killed.
    if let Some(child_dir) = std::env::var_os(CRASH_CHILD_DIR) {
        crash_child_writer(Path::new(&child_dir)).await;
        return;
    }
    const KILL_AFTER: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "storage::embedded::tests::crash_keeps_every_acknowledged_write",
            "--exact",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let read_all = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let mut parts = line.split(' ');
            if parts.next() != Some("ack") {
                continue;
            }
            let revision: u64 = parts.next().unwrap().parse().unwrap();
            let (key, value) = (parts.next().unwrap(), parts.next().unwrap());
            acked.insert(revision, (key.to_owned(), value.to_owned()));
            if acked.len() == KILL_AFTER {
                // SIGKILL, by PID, while its writers are mid-stream.
                child.start_kill().unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("child hung");
    let status = child.wait().await.unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(
        acked.len() >= KILL_AFTER,
        "child {pid} stopped early: {status}\n{stderr}"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );

    let store = open(dir.path());
    let events = history(&*store).await;
    let committed: BTreeMap<u64, KeyValue> =
        events.into_iter().map(|e| (e.revision(), e.kv)).collect();
    for (revision, (key, value)) in &acked {
        let kv = committed
            .get(revision)
            .unwrap_or_else(|| panic!("acknowledged revision {revision} lost"));
        assert_eq!((&kv.key, kv.value.as_slice()), (key, value.as_bytes()));
    }
    eprintln!(
        "crash: {} writes acknowledged before SIGKILL, {} committed (revisions 1..={} gap-free)",
        acked.len(),
        committed.len(),
        store.current_revision().await.unwrap()
    );
}

/// Durable writes per second with one writer and with 16 concurrent writers; printed, not
/// asserted (timing depends on the disk). Correctness of the revisions is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs_between_concurrent_writers() {
    async fn run(writers: u64, per_writer: u64) -> (f64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut revisions = Vec::new();
                    for i in 0..per_writer {
                        revisions.push(
                            store
                                .create(&format!("/b/{w}/{i}"), vec![0; 256])
                                .await
                                .unwrap(),
                        );
                    }
                    revisions
                })
            })
            .collect();
        let mut revisions = Vec::new();
        for task in tasks {
            revisions.extend(task.await.unwrap());
        }
        let rate = revisions.len() as f64 / started.elapsed().as_secs_f64();
        revisions.sort_unstable();
        assert_eq!(revisions, (1..=writers * per_writer).collect::<Vec<_>>());
        let stats = store.stats();
        assert_eq!(stats.writes, writers * per_writer);
        (rate, stats.commits)
    }
    let (one, one_commits) = run(1, 150).await;
    let (many, many_commits) = run(16, 40).await;
    eprintln!("durable writes/s:  1 writer: {one:.0} ({one_commits} commits for 150 writes)");
    eprintln!("durable writes/s: 16 writers: {many:.0} ({many_commits} commits for 640 writes)");
}
