//! Work shared by the watches of one apiserver: every watcher of a resource receives the same
//! storage event, and each used to parse its stored value (and the previous one) and serialise
//! the JSON line on its own. With 100 watchers that was 100 parses and 100 encodings per write,
//! and the writer waited for the CPU they took (bench apiserver: a single client's PATCH took
//! 10 ms at the median). Here the decoded objects and the JSON lines are kept per revision, so
//! each is made once and the watchers share it, as kube-apiserver's watch cache serialises an
//! event once per format.
//!
//! A revision names one write to one key, so (revision, resource) identifies the object; the
//! resource is part of the key because `events.k8s.io` Events are a view of the stored core
//! Events and decode differently. Only the newest [`CAPACITY`] objects and lines are kept:
//! watchers follow the head of the log, and one catching up on old revisions simply computes
//! what it misses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;

use super::resources::Resource;

/// Entries kept per map (objects, lines); beyond it the oldest revisions go.
const CAPACITY: usize = 4096;

/// Which object of an event is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    /// The object as written.
    Current,
    /// The object before the write.
    Previous,
}

/// (revision, resource identity, what): `what` is a [`Slot`] for objects and the watch event
/// type (`ADDED`, `MODIFIED`, `DELETED`) for lines.
type Key<W> = (u64, usize, W);

/// The per-apiserver cache of decoded event objects and encoded watch lines.
#[derive(Default)]
pub struct EventCache {
    objects: Mutex<BTreeMap<Key<Slot>, Option<Arc<Value>>>>,
    lines: Mutex<BTreeMap<Key<&'static str>, Bytes>>,
}

/// The resource's identity: its entry in the static resource table.
fn identity(resource: &'static Resource) -> usize {
    std::ptr::from_ref(resource) as usize
}

/// The entry at `key` in `map`, made by `make` (outside the lock: two watchers may both make
/// it, and either result is right) and kept when missing; the oldest revisions go beyond
/// [`CAPACITY`].
fn get_or<K: Ord, V: Clone>(map: &Mutex<BTreeMap<K, V>>, key: K, make: impl FnOnce() -> V) -> V {
    let lock = || map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(hit) = lock().get(&key) {
        return hit.clone();
    }
    let made = make();
    let mut entries = lock();
    entries.insert(key, made.clone());
    while entries.len() > CAPACITY {
        entries.pop_first();
    }
    made
}

impl EventCache {
    /// The object of `slot` (current or previous) at `revision`, decoded by `decode` once.
    pub fn object(
        &self,
        resource: &'static Resource,
        revision: u64,
        slot: Slot,
        decode: impl FnOnce() -> Option<Value>,
    ) -> Option<Arc<Value>> {
        let key = (revision, identity(resource), slot);
        get_or(&self.objects, key, || decode().map(Arc::new))
    }

    /// The JSON watch line of type `kind` for the event at `revision`, encoded by `encode` once.
    pub fn line(
        &self,
        resource: &'static Resource,
        revision: u64,
        kind: &'static str,
        encode: impl FnOnce() -> Bytes,
    ) -> Bytes {
        get_or(&self.lines, (revision, identity(resource), kind), encode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;
    use serde_json::json;

    #[test]
    fn each_object_and_line_is_made_once_per_revision_and_resource() {
        let cache = EventCache::default();
        let pods = find("", "v1", "pods").unwrap();
        let events = find("events.k8s.io", "v1", "events").unwrap();
        let mut made = 0;
        for _ in 0..3 {
            let obj = cache.object(pods, 7, Slot::Current, || {
                made += 1;
                Some(json!({"n": 1}))
            });
            assert_eq!(obj.as_deref(), Some(&json!({"n": 1})));
        }
        assert_eq!(made, 1);
        // Another slot, resource or revision is another entry.
        cache.object(pods, 7, Slot::Previous, || None);
        cache.object(events, 7, Slot::Current, || None);
        cache.object(pods, 8, Slot::Current, || None);
        let line = |kind, made: &mut i32| {
            cache.line(pods, 7, kind, || {
                *made += 1;
                Bytes::from(kind)
            })
        };
        let mut lines = 0;
        assert_eq!(line("ADDED", &mut lines), "ADDED");
        assert_eq!(line("ADDED", &mut lines), "ADDED");
        assert_eq!(line("DELETED", &mut lines), "DELETED");
        assert_eq!(lines, 2);
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let cache = EventCache::default();
        let pods = find("", "v1", "pods").unwrap();
        for rev in 0..(CAPACITY as u64 + 10) {
            cache.line(pods, rev, "ADDED", Bytes::new);
        }
        let entries = cache.lines.lock().unwrap();
        assert_eq!(entries.len(), CAPACITY);
        assert_eq!(
            entries.keys().next().unwrap().0,
            10,
            "the oldest went first"
        );
    }
}
