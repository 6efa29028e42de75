//! The contract of [`Storage`], as tests every backend runs.
//!
//! Each function takes a fresh, empty store. A backend's test module instantiates all of them
//! with [`all_tests!`], passing a macro that turns a name into a `#[tokio::test]` building its
//! store; the etcd backend will reuse them unchanged.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::{Event, EventKind, KeyValue, Storage, StorageError, WatchStream};

mod concurrent;

pub(crate) use concurrent::{
    batched_failures_are_isolated, concurrent_counter_has_no_lost_update,
    concurrent_revisions_are_gap_free, watch_is_gap_free_under_concurrent_writers,
};

/// Calls `$each!(name, ...)` with the name of every conformance test.
macro_rules! all_tests {
    ($each:ident) => {
        $each!(
            crud_and_errors,
            list_pagination_and_prefix,
            list_at_revision_and_compaction,
            watch_events_and_prev_kv,
            watch_from_compacted_revision,
            watch_compacted_while_catching_up,
            watch_slow_consumer_catches_up,
            watch_ends_when_store_dropped,
            concurrent_counter_has_no_lost_update,
            concurrent_revisions_are_gap_free,
            batched_failures_are_isolated,
            watch_is_gap_free_under_concurrent_writers,
        );
    };
}
pub(crate) use all_tests;

/// How long a test waits for one watch event before failing instead of hanging.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(other) => panic!("expected an event, got {other:?}"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// Reads events until one at revision `last` (inclusive).
async fn events_through(stream: &mut WatchStream, last: u64) -> Vec<Event> {
    let mut events = Vec::new();
    while events.last().is_none_or(|e: &Event| e.revision() < last) {
        events.push(next_event(stream).await);
    }
    events
}

fn kv(key: &str, value: &str, create_revision: u64, mod_revision: u64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision,
        mod_revision,
    }
}

pub(crate) async fn crud_and_errors(store: Arc<dyn Storage>) {
    let key = "/registry/pods/default/nginx";
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.get(key).await.unwrap(), None);

    assert_eq!(store.create(key, b"v1".to_vec()).await.unwrap(), 1);
    assert_eq!(store.get(key).await.unwrap(), Some(kv(key, "v1", 1, 1)));
    let err = store.create(key, b"again".to_vec()).await.unwrap_err();
    assert!(
        matches!(&err, StorageError::AlreadyExists { key: k } if k == key),
        "{err}"
    );
    assert!(err.to_string().contains(key), "{err}");

    assert_eq!(store.update(key, b"v2".to_vec(), Some(1)).await.unwrap(), 2);
    assert_eq!(store.get(key).await.unwrap(), Some(kv(key, "v2", 1, 2)));
    let err = store
        .update(key, b"stale".to_vec(), Some(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::Conflict { key: k, expected: 1, actual: 2 } if k == key),
        "{err}"
    );
    assert!(err.to_string().contains(key), "{err}");
    assert_eq!(store.update(key, b"v3".to_vec(), None).await.unwrap(), 3);

    let missing = "/registry/pods/default/missing";
    let err = store
        .update(missing, b"x".to_vec(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::NotFound { key: k } if k == missing),
        "{err}"
    );
    assert!(err.to_string().contains(missing), "{err}");
    let err = store
        .update(missing, b"x".to_vec(), Some(3))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    let err = store.delete(missing, None).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");

    let err = store.delete(key, Some(2)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Conflict {
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "{err}"
    );
    let (revision, prev) = store.delete(key, Some(3)).await.unwrap();
    assert_eq!((revision, prev), (4, kv(key, "v3", 1, 3)));
    assert_eq!(store.get(key).await.unwrap(), None);
    let err = store.delete(key, None).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    let err = store.update(key, b"x".to_vec(), Some(3)).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");

    // Recreating starts a new life: a new create_revision.
    assert_eq!(store.create(key, b"v5".to_vec()).await.unwrap(), 5);
    assert_eq!(store.get(key).await.unwrap(), Some(kv(key, "v5", 5, 5)));
    let (revision, _) = store.delete(key, None).await.unwrap();
    assert_eq!(revision, 6);
    // Failed writes used no revision.
    assert_eq!(store.current_revision().await.unwrap(), 6);
}

pub(crate) async fn list_pagination_and_prefix(store: Arc<dyn Storage>) {
    let mut keys = Vec::new();
    for ns in ["default", "kube-system"] {
        for name in ["a", "b", "c", "d", "e"] {
            let key = format!("/registry/pods/{ns}/{name}");
            store.create(&key, key.clone().into_bytes()).await.unwrap();
            keys.push(key);
        }
    }
    // Neighbours that share a textual prefix but are outside the prefix "/registry/pods/".
    store.create("/registry/pods", b"x".to_vec()).await.unwrap();
    store
        .create("/registry/pods0", b"x".to_vec())
        .await
        .unwrap();
    store
        .create("/registry/podsecurity/x", b"x".to_vec())
        .await
        .unwrap();
    store
        .create("/registry/services/default/s", b"x".to_vec())
        .await
        .unwrap();
    store
        .delete("/registry/pods/default/c", None)
        .await
        .unwrap();
    keys.retain(|k| k != "/registry/pods/default/c");

    let all = store.list("/registry/pods/", None, 0, None).await.unwrap();
    let listed: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(listed, keys);
    assert!(!all.more);
    assert_eq!(all.revision, store.current_revision().await.unwrap());
    let ns = store
        .list("/registry/pods/kube-system/", None, 0, None)
        .await
        .unwrap();
    assert_eq!(ns.kvs.len(), 5);
    assert_eq!(store.list("", None, 0, None).await.unwrap().kvs.len(), 13);
    assert!(store
        .list("/nothing/", None, 0, None)
        .await
        .unwrap()
        .kvs
        .is_empty());

    // Pages of 4, every page at the first page's revision, while writes go on between pages.
    let mut paged = Vec::new();
    let mut page = store.list("/registry/pods/", None, 4, None).await.unwrap();
    let revision = page.revision;
    loop {
        paged.extend(page.kvs.iter().cloned());
        store
            .create(
                &format!("/registry/pods/default/new-{}", paged.len()),
                vec![],
            )
            .await
            .unwrap();
        store.delete(&keys[keys.len() - 1], None).await.ok();
        if !page.more {
            break;
        }
        assert_eq!(page.kvs.len(), 4);
        let last = page.kvs.last().unwrap().key.clone();
        page = store
            .list("/registry/pods/", Some(revision), 4, Some(&last))
            .await
            .unwrap();
        assert_eq!(page.revision, revision);
    }
    assert_eq!(paged, all.kvs);
    // A limit equal to the number of keys: everything, and no more.
    let exact = store
        .list("/registry/pods/", Some(revision), 9, None)
        .await
        .unwrap();
    assert_eq!((exact.kvs.len(), exact.more), (9, false));
}

pub(crate) async fn list_at_revision_and_compaction(store: Arc<dyn Storage>) {
    let r1 = store.create("/k/a", b"a1".to_vec()).await.unwrap();
    store.create("/k/b", b"b1".to_vec()).await.unwrap();
    let r2 = store.update("/k/a", b"a2".to_vec(), None).await.unwrap();
    let (r3, _) = store.delete("/k/b", None).await.unwrap();
    store.create("/k/c", b"c1".to_vec()).await.unwrap();
    let (r5, _) = store.delete("/k/c", None).await.unwrap();
    let r6 = store.update("/k/a", b"a3".to_vec(), None).await.unwrap();

    let at = |revision| {
        let store = Arc::clone(&store);
        async move {
            let page = store.list("/k/", Some(revision), 0, None).await?;
            let kvs: Vec<_> = page
                .kvs
                .into_iter()
                .map(|kv| (kv.key, kv.value, kv.mod_revision))
                .collect();
            Ok::<_, StorageError>(kvs)
        }
    };
    let a = |v: &str, rev| ("/k/a".to_string(), v.as_bytes().to_vec(), rev);
    let b1 = ("/k/b".to_string(), b"b1".to_vec(), r1 + 1);
    assert_eq!(at(r1).await.unwrap(), vec![a("a1", r1)]);
    assert_eq!(at(r2).await.unwrap(), vec![a("a2", r2), b1.clone()]);
    assert_eq!(at(r3).await.unwrap(), vec![a("a2", r2)]);
    assert_eq!(at(r6).await.unwrap(), vec![a("a3", r6)]);
    let err = at(r6 + 1).await.unwrap_err();
    assert!(
        matches!(err, StorageError::FutureRevision { requested, current } if requested == r6 + 1 && current == r6),
        "{err}"
    );

    store.compact(r3).await.unwrap();
    let err = at(r2).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Compacted { requested, compacted } if requested == r2 && compacted == r3),
        "{err}"
    );
    assert_eq!(at(r3).await.unwrap(), vec![a("a2", r2)]);
    assert_eq!(at(r5).await.unwrap(), vec![a("a2", r2)]);
    assert_eq!(at(r6).await.unwrap(), vec![a("a3", r6)]);
    assert_eq!(
        store.get("/k/a").await.unwrap().unwrap().create_revision,
        r1
    );

    let err = store.compact(r3).await.unwrap_err();
    assert!(matches!(err, StorageError::Compacted { .. }), "{err}");
    let err = store.compact(r6 + 1).await.unwrap_err();
    assert!(matches!(err, StorageError::FutureRevision { .. }), "{err}");
    // Compacting everything, the newest write included (a tombstone), keeps the revision.
    let (r7, _) = store.delete("/k/a", None).await.unwrap();
    store.compact(r7).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), r7);
    assert_eq!(at(r7).await.unwrap(), vec![]);
    assert_eq!(
        store.create("/k/a", b"again".to_vec()).await.unwrap(),
        r7 + 1
    );
}

pub(crate) async fn watch_events_and_prev_kv(store: Arc<dyn Storage>) {
    store.create("/w/old", b"o1".to_vec()).await.unwrap();
    let start = store.current_revision().await.unwrap();
    let mut live = store.watch("/w/", start).await.unwrap();
    let mut only_a = store.watch("/w/a", start).await.unwrap();

    let r1 = store.create("/w/a", b"1".to_vec()).await.unwrap();
    store.create("/other/x", b"x".to_vec()).await.unwrap();
    let r2 = store.update("/w/a", b"2".to_vec(), Some(r1)).await.unwrap();
    let r3 = store.update("/w/old", b"o2".to_vec(), None).await.unwrap();
    let (r4, _) = store.delete("/w/a", None).await.unwrap();

    let expected = vec![
        Event {
            kind: EventKind::Put,
            kv: kv("/w/a", "1", r1, r1),
            prev_kv: None,
        },
        Event {
            kind: EventKind::Put,
            kv: kv("/w/a", "2", r1, r2),
            prev_kv: Some(kv("/w/a", "1", r1, r1)),
        },
        Event {
            kind: EventKind::Put,
            kv: kv("/w/old", "o2", 1, r3),
            prev_kv: Some(kv("/w/old", "o1", 1, 1)),
        },
        Event {
            kind: EventKind::Delete,
            kv: kv("/w/a", "", 0, r4),
            prev_kv: Some(kv("/w/a", "2", r1, r2)),
        },
    ];
    assert_eq!(events_through(&mut live, r4).await, expected);
    let a_only: Vec<_> = expected
        .iter()
        .filter(|e| e.kv.key == "/w/a")
        .cloned()
        .collect();
    assert_eq!(events_through(&mut only_a, r4).await, a_only);

    // From the past: the same history, from the log. From 0: everything.
    let mut past = store.watch("/w/", r1).await.unwrap();
    assert_eq!(events_through(&mut past, r4).await, expected[1..]);
    let mut all = store.watch("", 0).await.unwrap();
    assert_eq!(events_through(&mut all, r4).await.len(), r4 as usize);

    // From the future: nothing until that revision passes.
    let mut future = store.watch("/w/", r4 + 1).await.unwrap();
    store.create("/w/b", b"b".to_vec()).await.unwrap();
    let r6 = store.create("/w/c", b"c".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut future).await.revision(), r6);
}

pub(crate) async fn watch_from_compacted_revision(store: Arc<dyn Storage>) {
    for i in 0..5 {
        store.create(&format!("/c/{i}"), vec![i]).await.unwrap();
    }
    store.compact(3).await.unwrap();
    let err = store
        .watch("/c/", 2)
        .await
        .err()
        .expect("watch below compaction must fail");
    assert!(
        matches!(
            err,
            StorageError::Compacted {
                requested: 2,
                compacted: 3
            }
        ),
        "{err}"
    );
    let mut from_compacted = store.watch("/c/", 3).await.unwrap();
    assert_eq!(
        next_event(&mut from_compacted).await.kv,
        kv("/c/3", "\u{3}", 4, 4)
    );
    assert_eq!(next_event(&mut from_compacted).await.kv.key, "/c/4");
}

pub(crate) async fn watch_compacted_while_catching_up(store: Arc<dyn Storage>) {
    for i in 0..10 {
        store.create(&format!("/c/{i}"), vec![i]).await.unwrap();
    }
    // The watch was accepted at revision 2, but history up to 8 goes before it reads any.
    let mut stream = store.watch("/c/", 2).await.unwrap();
    store.compact(8).await.unwrap();
    let item = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .unwrap();
    assert!(
        matches!(
            item,
            Some(Err(StorageError::Compacted {
                requested: 2,
                compacted: 8
            }))
        ),
        "{item:?}"
    );
    assert!(
        stream.next().await.is_none(),
        "the stream ends after Compacted"
    );
}

pub(crate) async fn watch_slow_consumer_catches_up(store: Arc<dyn Storage>) {
    // The test stores use tiny watch buffers, so this watcher falls far behind the broadcast
    // and must resync from the log without losing or repeating anything.
    let mut stream = store.watch("/s/", 0).await.unwrap();
    let _ = futures::poll!(stream.next());
    let mut expected = Vec::new();
    for i in 0..60u32 {
        let key = format!("/s/{}", i % 7);
        let revision = match store.get(&key).await.unwrap() {
            Some(old) => store
                .update(&key, i.to_string().into_bytes(), Some(old.mod_revision))
                .await
                .unwrap(),
            None => store
                .create(&key, i.to_string().into_bytes())
                .await
                .unwrap(),
        };
        expected.push((revision, key, i.to_string().into_bytes()));
    }
    let events = events_through(&mut stream, expected.last().unwrap().0).await;
    let got: Vec<_> = events
        .into_iter()
        .map(|e| (e.revision(), e.kv.key, e.kv.value))
        .collect();
    assert_eq!(got, expected);
}

pub(crate) async fn watch_ends_when_store_dropped(store: Arc<dyn Storage>) {
    let revision = store.create("/d/a", b"a".to_vec()).await.unwrap();
    let mut stream = store.watch("/d/", 0).await.unwrap();
    drop(store);
    assert_eq!(next_event(&mut stream).await.revision(), revision);
    let end = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .unwrap();
    assert!(end.is_none(), "{end:?}");
}
