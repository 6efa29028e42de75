//! Conformance tests with many concurrent writers: optimistic concurrency, revision order,
//! per-write results inside shared commits, and gap-free watches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{events_through, kv, next_event};
use crate::storage::{Event, EventKind, KeyValue, Storage, StorageError, WatchStream};

pub(crate) async fn concurrent_counter_has_no_lost_update(store: Arc<dyn Storage>) {
    const TASKS: usize = 20;
    const INCREMENTS: usize = 5;
    let key = "/counter";
    store.create(key, b"0".to_vec()).await.unwrap();
    let conflicts = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, conflicts) = (Arc::clone(&store), Arc::clone(&conflicts));
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                while revisions.len() < INCREMENTS {
                    let current = store.get(key).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    let next = (n + 1).to_string().into_bytes();
                    match store.update(key, next, Some(current.mod_revision)).await {
                        Ok(revision) => revisions.push(revision),
                        Err(StorageError::Conflict { .. }) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => panic!("unexpected error: {err}"),
                    }
                }
                revisions
            })
        })
        .collect();
    let mut successes = Vec::new();
    for task in tasks {
        successes.extend(task.await.unwrap());
    }
    let value = store.get(key).await.unwrap().unwrap();
    let n: usize = std::str::from_utf8(&value.value).unwrap().parse().unwrap();
    assert_eq!(n, successes.len());
    assert_eq!(n, TASKS * INCREMENTS);
    successes.sort_unstable();
    successes.dedup();
    assert_eq!(successes.len(), n, "two updates got the same revision");
    assert_eq!(value.mod_revision, *successes.last().unwrap());
    eprintln!(
        "counter: {n} increments, {} conflicts retried",
        conflicts.load(Ordering::Relaxed)
    );
}

pub(crate) async fn concurrent_revisions_are_gap_free(store: Arc<dyn Storage>) {
    const WRITERS: usize = 8;
    const WRITES: usize = 25;
    store.create("/seed", vec![]).await.unwrap();
    let start = store.current_revision().await.unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..WRITES {
                    let key = format!("/g/{w}/{i}");
                    acked.push((store.create(&key, vec![w as u8]).await.unwrap(), key));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0].0 < w[1].0),
            "one writer's revisions must increase"
        );
        acked.extend(mine);
    }
    acked.sort();
    let revisions: Vec<u64> = acked.iter().map(|(r, _)| *r).collect();
    let expected: Vec<u64> = (start + 1..=start + (WRITERS * WRITES) as u64).collect();
    assert_eq!(revisions, expected);
    assert_eq!(
        store.current_revision().await.unwrap(),
        start + (WRITERS * WRITES) as u64
    );
    let listed = store.list("/g/", None, 0, None).await.unwrap();
    let mut stored: Vec<_> = listed
        .kvs
        .into_iter()
        .map(|kv| (kv.mod_revision, kv.key))
        .collect();
    stored.sort();
    assert_eq!(stored, acked);
}

pub(crate) async fn batched_failures_are_isolated(store: Arc<dyn Storage>) {
    let mut existing = Vec::new();
    for i in 0..10 {
        let key = format!("/b/old/{i}");
        existing.push((store.create(&key, vec![]).await.unwrap(), key));
    }
    let start = store.current_revision().await.unwrap();
    // Issued together so that a group-committing backend puts them in shared batches.
    let writes = (0..10).flat_map(|i| {
        let store = Arc::clone(&store);
        let (old_rev, old_key) = existing[i].clone();
        let new_key = format!("/b/new/{i}");
        [
            tokio::spawn({
                let (store, key) = (Arc::clone(&store), old_key.clone());
                async move { ("dup", store.create(&key, vec![1]).await.map(|_| ())) }
            }),
            tokio::spawn({
                let (store, key) = (Arc::clone(&store), old_key.clone());
                async move {
                    (
                        "stale",
                        store
                            .update(&key, vec![2], Some(old_rev + 1000))
                            .await
                            .map(|_| ()),
                    )
                }
            }),
            tokio::spawn({
                let (store, key) = (Arc::clone(&store), old_key);
                async move {
                    (
                        "ok",
                        store.update(&key, vec![3], Some(old_rev)).await.map(|_| ()),
                    )
                }
            }),
            tokio::spawn(async move { ("ok", store.create(&new_key, vec![4]).await.map(|_| ())) }),
        ]
    });
    let writes: Vec<_> = writes.collect();
    for write in writes {
        match write.await.unwrap() {
            ("dup", Err(StorageError::AlreadyExists { .. })) => {}
            ("stale", Err(StorageError::Conflict { .. })) => {}
            ("ok", Ok(())) => {}
            other => panic!("unexpected result {other:?}"),
        }
    }
    assert_eq!(store.current_revision().await.unwrap(), start + 20);
    let listed = store.list("/b/", None, 0, None).await.unwrap();
    assert_eq!(listed.kvs.len(), 20);
    assert!(listed
        .kvs
        .iter()
        .all(|kv| kv.value == [3] || kv.value == [4]));
}

/// Eight writers work on their own keys while watchers start before, during and (from the
/// past) in the middle of the writes; each must see exactly the acknowledged writes after its
/// start revision, in order, with the right previous values.
pub(crate) async fn watch_is_gap_free_under_concurrent_writers(store: Arc<dyn Storage>) {
    const WRITERS: usize = 8;
    const OPS: usize = 40;
    let start = store.current_revision().await.unwrap();
    let total = (WRITERS * OPS) as u64;
    let last = start + total;
    // Collects a stream's events up to the last write in a task, as a live consumer would.
    let collect = |mut stream: WatchStream, from: u64| {
        tokio::spawn(async move {
            if from >= last {
                return Vec::new();
            }
            events_through(&mut stream, last).await
        })
    };
    let from_start = collect(store.watch("/w/", start).await.unwrap(), start);
    // Writer 3 makes OPS events under its prefix; the last write may be someone else's.
    let mut one_writer = store.watch("/w/3/", start).await.unwrap();
    let one_writer = tokio::spawn(async move {
        let mut events = Vec::new();
        while events.len() < OPS {
            events.push(next_event(&mut one_writer).await);
        }
        events
    });
    let lazy = store.watch("/w/", start).await.unwrap(); // not polled until the end

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut acked = Vec::new(); // (revision, key, Some(value) or None for delete)
                let mut live: BTreeMap<String, u64> = BTreeMap::new();
                for step in 0..OPS {
                    let key = format!("/w/{w}/{}", step % 4);
                    let value = format!("{w}-{step}").into_bytes();
                    let (revision, value) = match live.get(&key) {
                        None => (
                            store.create(&key, value.clone()).await.unwrap(),
                            Some(value),
                        ),
                        Some(&rev) if step % 3 == 0 => {
                            (store.delete(&key, Some(rev)).await.unwrap().0, None)
                        }
                        Some(&rev) => (
                            store.update(&key, value.clone(), Some(rev)).await.unwrap(),
                            Some(value),
                        ),
                    };
                    match value {
                        Some(_) => live.insert(key.clone(), revision),
                        None => live.remove(&key),
                    };
                    acked.push((revision, key, value));
                }
                acked
            })
        })
        .collect();

    // Watchers started mid-way, from now and from the past, while the writers run.
    while store.current_revision().await.unwrap() < start + total / 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let now = store.current_revision().await.unwrap();
    let mid_now = (now, collect(store.watch("/w/", now).await.unwrap(), now));
    let past = now - total / 6;
    let mid_past = (past, collect(store.watch("/w/", past).await.unwrap(), past));

    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    acked.sort();
    let revisions: Vec<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(
        revisions,
        (start + 1..=last).collect::<Vec<_>>(),
        "revisions must be gap-free"
    );

    // The expected events, derived from the acknowledgements alone.
    let mut state: BTreeMap<String, KeyValue> = BTreeMap::new();
    let mut expected = Vec::new();
    for (revision, key, value) in acked {
        let prev_kv = state.get(&key).cloned();
        let event = match value {
            Some(value) => {
                let create_revision = prev_kv.as_ref().map_or(revision, |p| p.create_revision);
                let kv = KeyValue {
                    key: key.clone(),
                    value,
                    create_revision,
                    mod_revision: revision,
                };
                state.insert(key, kv.clone());
                Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv,
                }
            }
            None => {
                state.remove(&key);
                Event {
                    kind: EventKind::Delete,
                    kv: kv(&key, "", 0, revision),
                    prev_kv,
                }
            }
        };
        expected.push(event);
    }
    let after = |from: u64| {
        expected
            .iter()
            .filter(|e| e.revision() > from)
            .cloned()
            .collect::<Vec<_>>()
    };

    assert_eq!(
        from_start.await.unwrap(),
        after(start),
        "watcher from the start"
    );
    let writer_3: Vec<_> = after(start)
        .into_iter()
        .filter(|e| e.kv.key.starts_with("/w/3/"))
        .collect();
    assert_eq!(
        one_writer.await.unwrap(),
        writer_3,
        "watcher of one writer's keys"
    );
    assert_eq!(
        mid_now.1.await.unwrap(),
        after(mid_now.0),
        "watcher started during the writes"
    );
    assert_eq!(
        mid_past.1.await.unwrap(),
        after(mid_past.0),
        "watcher started in the past during the writes"
    );
    assert_eq!(
        collect(lazy, start).await.unwrap(),
        after(start),
        "watcher polled only at the end"
    );
    let replay = collect(store.watch("/w/", start).await.unwrap(), start)
        .await
        .unwrap();
    assert_eq!(replay, after(start), "replay from the log after the writes");
}
