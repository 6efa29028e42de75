//! In-memory backend: the same semantics as the embedded store, nothing on disk.
//!
//! For apiserver and controller tests that want a real [`Storage`] without a temp directory or
//! fsyncs. The history is a `BTreeMap` from revision to row, shaped like the embedded store's
//! log table, behind one mutex; writes publish their event while still holding it, so the
//! broadcast carries events in revision order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::watch::{watch_stream, EventBatch, EventLog, EventPage, DEFAULT_WATCH_BUFFER};
use super::{
    list_start, prefix_end, Event, EventKind, KeyValue, ListResult, Storage, StorageError,
    WatchStream,
};

/// One write in the history (a tombstone for deletes).
#[derive(Debug, Clone)]
struct Row {
    key: String,
    value: Vec<u8>,
    create_revision: u64,
    /// Revision of the key's previous row, 0 if none.
    prev_revision: u64,
    deleted: bool,
}

#[derive(Debug, Default)]
struct State {
    log: BTreeMap<u64, Row>,
    /// Latest row (possibly a tombstone) of every key with history.
    latest: BTreeMap<String, u64>,
    revision: u64,
    compacted: u64,
}

impl State {
    /// The live value written at `revision`, if that row exists and is not a tombstone.
    fn kv_at(&self, revision: u64) -> Option<KeyValue> {
        let row = self.log.get(&revision)?;
        (!row.deleted).then(|| KeyValue {
            key: row.key.clone(),
            value: row.value.clone(),
            create_revision: row.create_revision,
            mod_revision: revision,
        })
    }

    /// The value of `key` as of `revision`.
    fn get_at(&self, key: &str, revision: u64) -> Option<KeyValue> {
        let mut rev = *self.latest.get(key)?;
        while rev > revision {
            rev = self.log.get(&rev)?.prev_revision;
        }
        self.kv_at(rev)
    }

    fn current(&self, key: &str) -> Option<KeyValue> {
        self.get_at(key, u64::MAX)
    }

    /// Checks an update's or delete's precondition; returns the current value.
    fn check(&self, key: &str, expected: Option<u64>) -> Result<KeyValue, StorageError> {
        let current = self.current(key).ok_or_else(|| StorageError::NotFound {
            key: key.to_owned(),
        })?;
        match expected {
            Some(expected) if expected != current.mod_revision => Err(StorageError::Conflict {
                key: key.to_owned(),
                expected,
                actual: current.mod_revision,
            }),
            _ => Ok(current),
        }
    }

    /// Appends a row at the next revision and returns the event it makes.
    fn append(
        &mut self,
        key: &str,
        value: Vec<u8>,
        prev: Option<KeyValue>,
        deleted: bool,
    ) -> Event {
        self.revision += 1;
        let revision = self.revision;
        let create_revision = match (&prev, deleted) {
            (_, true) => 0,
            (Some(prev), false) => prev.create_revision,
            (None, false) => revision,
        };
        let prev_revision = self.latest.insert(key.to_owned(), revision).unwrap_or(0);
        let row = Row {
            key: key.to_owned(),
            value,
            create_revision,
            prev_revision,
            deleted,
        };
        let kv = KeyValue {
            key: key.to_owned(),
            value: row.value.clone(),
            create_revision,
            mod_revision: revision,
        };
        self.log.insert(revision, row);
        let kind = if deleted {
            EventKind::Delete
        } else {
            EventKind::Put
        };
        Event {
            kind,
            kv,
            prev_kv: prev,
        }
    }

    fn compact(&mut self, revision: u64) {
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for (&rev, row) in self.log.range(..=revision) {
            newest.insert(&row.key, rev);
        }
        let doomed: Vec<u64> = self
            .log
            .range(..=revision)
            .filter(|(rev, row)| row.deleted || newest[row.key.as_str()] != **rev)
            .map(|(rev, _)| *rev)
            .collect();
        for rev in doomed {
            let row = self.log.remove(&rev).expect("collected from the log");
            if self.latest.get(&row.key) == Some(&rev) {
                self.latest.remove(&row.key);
            }
        }
        self.compacted = revision;
    }
}

/// A [`Storage`] kept in memory; see the module docs. Cheap to create, lost on drop.
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
    hub: broadcast::Sender<EventBatch>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_watch_buffer(DEFAULT_WATCH_BUFFER)
    }

    /// An empty store whose watchers fall back to catching up from history after
    /// `watch_buffer` unread writes (small values exercise that path in tests).
    pub fn with_watch_buffer(watch_buffer: usize) -> Self {
        let (hub, _) = broadcast::channel(watch_buffer.max(1));
        MemoryStorage {
            state: Arc::default(),
            hub,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Runs a write under the lock and publishes its event before unlocking.
    fn write<T>(
        &self,
        op: impl FnOnce(&mut State) -> Result<(T, Event), StorageError>,
    ) -> Result<T, StorageError> {
        let mut state = self.lock();
        let (out, event) = op(&mut state)?;
        // No receivers is fine: nobody is watching.
        let _ = self.hub.send(Arc::from(vec![event]));
        Ok(out)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave a half-applied write: every write checks
    // first and then mutates without failing.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        Ok(self.lock().current(key))
    }

    async fn list(
        &self,
        prefix: &str,
        at_revision: Option<u64>,
        limit: usize,
        continue_from_key: Option<&str>,
    ) -> Result<ListResult, StorageError> {
        let state = self.lock();
        let revision = at_revision.unwrap_or(state.revision);
        if revision > state.revision {
            return Err(StorageError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        StorageError::ensure_not_compacted(revision, state.compacted)?;
        let start = String::from_utf8(list_start(prefix, continue_from_key))
            .expect("a str plus a NUL byte is UTF-8");
        let end = prefix_end(prefix.as_bytes());
        let mut kvs = Vec::new();
        let mut more = false;
        for key in state.latest.range(start..).map(|(key, _)| key) {
            if end.as_deref().is_some_and(|end| key.as_bytes() >= end) {
                break;
            }
            if let Some(kv) = state.get_at(key, revision) {
                if limit != 0 && kvs.len() == limit {
                    more = true;
                    break;
                }
                kvs.push(kv);
            }
        }
        Ok(ListResult {
            kvs,
            revision,
            more,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<u64, StorageError> {
        self.write(|state| {
            if state.current(key).is_some() {
                return Err(StorageError::AlreadyExists {
                    key: key.to_owned(),
                });
            }
            let event = state.append(key, value, None, false);
            Ok((event.revision(), event))
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<u64>,
    ) -> Result<u64, StorageError> {
        self.write(|state| {
            let prev = state.check(key, expected_mod_revision)?;
            let event = state.append(key, value, Some(prev), false);
            Ok((event.revision(), event))
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<u64>,
    ) -> Result<(u64, KeyValue), StorageError> {
        self.write(|state| {
            let prev = state.check(key, expected_mod_revision)?;
            let event = state.append(key, Vec::new(), Some(prev.clone()), true);
            Ok(((event.revision(), prev), event))
        })
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StorageError> {
        let rx = self.hub.subscribe();
        let compacted = self.lock().compacted;
        StorageError::ensure_not_compacted(from_revision, compacted)?;
        let log = Arc::new(MemoryLog(Arc::clone(&self.state)));
        Ok(watch_stream(log, rx, prefix, from_revision))
    }

    async fn compact(&self, revision: u64) -> Result<(), StorageError> {
        let mut state = self.lock();
        if revision > state.revision {
            return Err(StorageError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        if revision <= state.compacted {
            return Err(StorageError::Compacted {
                requested: revision,
                compacted: state.compacted,
            });
        }
        state.compact(revision);
        Ok(())
    }

    async fn current_revision(&self) -> Result<u64, StorageError> {
        Ok(self.lock().revision)
    }
}

/// The history of a [`MemoryStorage`], for its watchers (which may outlive the store).
struct MemoryLog(Arc<Mutex<State>>);

#[async_trait]
impl EventLog for MemoryLog {
    async fn events_after(
        &self,
        prefix: &str,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StorageError> {
        let state = lock(&self.0);
        StorageError::ensure_not_compacted(after, state.compacted)?;
        let mut events = Vec::new();
        for (&revision, row) in state.log.range(after + 1..) {
            if !row.key.starts_with(prefix) {
                continue;
            }
            let (kind, kv) = if row.deleted {
                let kv = KeyValue {
                    key: row.key.clone(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: revision,
                };
                (EventKind::Delete, kv)
            } else {
                (EventKind::Put, state.kv_at(revision).expect("live row"))
            };
            let prev_kv = state.kv_at(row.prev_revision);
            events.push(Event { kind, kv, prev_kv });
            if events.len() == limit {
                return Ok(EventPage {
                    events,
                    through: revision,
                    complete: false,
                });
            }
        }
        Ok(EventPage {
            events,
            through: state.revision,
            complete: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryStorage;
    use crate::storage::Storage;

    macro_rules! conformance {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                // A tiny watch buffer sends lagging watchers through catch-up often.
                let store: Arc<dyn Storage> = Arc::new(MemoryStorage::with_watch_buffer(4));
                crate::storage::conformance::$name(store).await;
            }
        )*};
    }

    crate::storage::conformance::all_tests!(conformance);
}
