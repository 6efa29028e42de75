//! Versioned key-value storage under the apiserver, with etcd's semantics.
//!
//! The apiserver is the only client. Keys are strings such as `/registry/pods/default/nginx`;
//! values are opaque bytes (the serialized object). Every write gets the next value of one
//! global revision counter (the first write of an empty store gets revision 1); a stored value
//! remembers the revision that created its key (`create_revision`) and the one that last wrote
//! it (`mod_revision`, which becomes `metadata.resourceVersion`). Updates and deletes can be made
//! conditional on `mod_revision` (optimistic concurrency), lists can read a past revision, and
//! watches deliver every change after a revision, in order and without gaps, until that history
//! is compacted away.
//!
//! # Backends
//!
//! - [`EmbeddedStorage`] (`embedded.rs`): the default, SQLite in-process, no external daemon.
//! - [`MemoryStorage`] (`memory.rs`): not durable; a fast stand-in for apiserver tests.
//! - [`EtcdStorage`] (`etcd.rs`): an etcd v3 cluster, through the `etcd-client` crate;
//!   [`EtcdStorage::connect`] takes the members' endpoints and a key prefix (`""` stores the
//!   apiserver's keys as they are; another prefix lets several stores share one etcd). The trait
//!   maps one call to one request: `get`/`list` are `Range` (with `revision` for `at_revision`,
//!   `limit`, and `key > continue_from_key` as the range start `continue_from_key + "\0"`);
//!   `create` is a `Txn` comparing `CreateRevision(key) == 0` then `Put`; `update`/`delete` are a
//!   `Txn` comparing `ModRevision(key) == expected` (or `CreateRevision(key) > 0` when
//!   unconditional) with a `Range` in the else branch to tell [`StorageError::NotFound`] from
//!   [`StorageError::Conflict`]; `delete` asks for `prev_kv`; `watch` is a `Watch` with
//!   `prev_kv` and `progress_notify`, whose `compact_revision` reply becomes
//!   [`StorageError::Compacted`]; `compact` and `current_revision` are `Compact` and the header
//!   revision of any response. What differs from the first sketch of this mapping:
//!   - Revisions are etcd's minus one. An empty etcd is at revision 1 and its first write gets
//!     2; the contract starts at 0 and 1. So `watch` uses `start_revision = from_revision + 2`
//!     in etcd's numbering (`from_revision + 1` in ours), and `resourceVersion`s differ by one
//!     from what `etcdctl` shows.
//!   - etcd's errors do not say which revision was compacted; the error paths find it by
//!     bisection with `Range` reads at past revisions (a few extra requests, errors only).
//!   - `watch` first reads at `from_revision`, because etcd still streams from one revision
//!     below its compaction point, which the contract calls compacted. The etcd watch itself
//!     opens on the stream's first poll, so a compaction before then is reported.
//!   - Failover: requests go to one member; when it is unreachable the store moves to the next
//!     and retries reads and watch opens, and writes and compactions only if they certainly
//!     never reached a member. A write whose outcome is unknown (in flight when a member or the
//!     leader died) fails with [`StorageError::Backend`] instead of risking a double apply.
//!     Watches re-open on another member after the last revision they delivered.
//!   - When the store is dropped its watches end after delivering the writes it had seen (or
//!     after 2 s), like the embedded store's.
//!
//! # Why `async-trait`
//!
//! The apiserver holds the store as `Arc<dyn Storage>` and picks the backend at runtime, so the
//! trait must be dyn-compatible, which native `async fn` in traits is not. `async-trait` boxes
//! each returned future (`Pin<Box<dyn Future + Send>>`), exactly what we would write by hand,
//! while keeping the trait and its implementations readable. One allocation per call is noise
//! next to an SQLite read or an etcd round trip.

mod embedded;
pub mod etcd;
mod memory;
mod watch;
pub mod write_bench;

#[cfg(test)]
mod conformance;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use embedded::{EmbeddedOptions, EmbeddedStats, EmbeddedStorage};
pub use etcd::{EtcdError, EtcdStorage};
pub use memory::MemoryStorage;

/// A stored key and its value, as of some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/registry/pods/default/nginx`.
    pub key: String,
    /// The opaque value; empty in the `kv` of a [`EventKind::Delete`] event.
    pub value: Vec<u8>,
    /// Revision of the write that created the key (0 in a delete event's `kv`, as in etcd).
    pub create_revision: u64,
    /// Revision of the write that produced this value: the object's `resourceVersion`.
    pub mod_revision: u64,
}

/// What a watch event did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated; a creation has `kv.create_revision == kv.mod_revision`
    /// (the apiserver's ADDED versus MODIFIED).
    Put,
    /// The key was deleted; `prev_kv` holds the value it had.
    Delete,
}

/// One change, as delivered by [`Storage::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` (the deletion's
    /// revision) are set.
    pub kv: KeyValue,
    /// The key's value before the change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

/// One page of [`Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Live keys under the prefix, in key order.
    pub kvs: Vec<KeyValue>,
    /// The revision the page was read at; pass it as `at_revision` for the next page so that all
    /// pages show one snapshot (the list's `resourceVersion`).
    pub revision: u64,
    /// Whether keys remain after the last one returned (continue from `kvs.last()`).
    pub more: bool,
}

/// The events of one watch, oldest first. It ends (`None`) when the store shuts down; an `Err`
/// item (e.g. [`StorageError::Compacted`] for a consumer that fell behind a compaction) is the
/// last item. Either way the consumer re-lists or re-watches from the last revision it saw.
pub type WatchStream = BoxStream<'static, Result<Event, StorageError>>;

/// The error of a storage operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The key does not exist (update or delete of a missing key).
    #[error("key {key:?} not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// The key exists already (create).
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The existing key.
        key: String,
    },
    /// The key was written since the caller read it (optimistic concurrency failed).
    #[error("key {key:?} was modified: expected mod_revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The `mod_revision` the caller expected.
        expected: u64,
        /// The key's current `mod_revision`.
        actual: u64,
    },
    /// The requested revision is older than the oldest one kept (the apiserver's 410 Gone).
    #[error("revision {requested} has been compacted (history kept from revision {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The compaction revision: reads and watches from here on still work.
        compacted: u64,
    },
    /// The requested revision has not been written yet.
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's current revision.
        current: u64,
    },
    /// The store has shut down (or its writer died) before the operation completed.
    #[error("storage is closed; {op} of {key:?} was not done")]
    Closed {
        /// The operation, e.g. `"update"`.
        op: &'static str,
        /// The key (or prefix) it was about.
        key: String,
    },
    /// The backend failed (I/O, SQLite, network). The write may or may not have happened only if
    /// the backend says so; for the embedded store a failed write did not happen.
    #[error("storage backend failed during {op} of {key:?}: {source}")]
    Backend {
        /// The operation, e.g. `"commit"`.
        op: &'static str,
        /// The key, prefix or path it was about.
        key: String,
        /// The backend's error (shared so that one failed commit can fail many waiters).
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    /// `Compacted` when `requested` is older than the oldest revision still kept.
    pub fn ensure_not_compacted(requested: u64, compacted: u64) -> Result<(), StorageError> {
        if requested < compacted {
            return Err(StorageError::Compacted {
                requested,
                compacted,
            });
        }
        Ok(())
    }

    /// Wraps a backend error for the operation `op` on `key`.
    pub fn backend(
        op: &'static str,
        key: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Backend {
            op,
            key: key.into(),
            source: Arc::new(source),
        }
    }
}

/// A versioned key-value store with etcd's semantics; see the module docs.
///
/// All revisions are global: each successful create, update or delete gets the next one, and
/// failed writes get none.
#[async_trait]
pub trait Storage: Send + Sync {
    /// The current value of `key`, or `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError>;

    /// The live keys starting with `prefix`, in key order, as of `at_revision` (default: now).
    ///
    /// `limit` caps the page (0: no limit). `continue_from_key` is the last key of the previous
    /// page; this page starts strictly after it. Fails with [`StorageError::Compacted`] below
    /// the compaction revision and [`StorageError::FutureRevision`] above the current one.
    async fn list(
        &self,
        prefix: &str,
        at_revision: Option<u64>,
        limit: usize,
        continue_from_key: Option<&str>,
    ) -> Result<ListResult, StorageError>;

    /// Creates `key`; returns the write's revision. [`StorageError::AlreadyExists`] if present.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<u64, StorageError>;

    /// Replaces the value of `key`; returns the write's revision. With `expected_mod_revision`
    /// the write happens only if the key's `mod_revision` still equals it
    /// ([`StorageError::Conflict`] otherwise). [`StorageError::NotFound`] if absent.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<u64>,
    ) -> Result<u64, StorageError>;

    /// Deletes `key`, conditionally like [`Storage::update`]; returns the deletion's revision
    /// and the value the key had.
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<u64>,
    ) -> Result<(u64, KeyValue), StorageError>;

    /// Every change to keys starting with `prefix` with a revision greater than
    /// `from_revision`, exactly once and in revision order, then live changes as they commit.
    ///
    /// Fails with [`StorageError::Compacted`] if `from_revision` is below the compaction
    /// revision. A `from_revision` in the future is allowed (events start after it).
    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StorageError>;

    /// Forgets history before `revision`: reads at and watches from `revision` or later keep
    /// working, older ones fail with [`StorageError::Compacted`]. Compacting to a revision at or
    /// below the current compaction revision fails with `Compacted`, beyond the current
    /// revision with [`StorageError::FutureRevision`].
    async fn compact(&self, revision: u64) -> Result<(), StorageError>;

    /// The revision of the latest write (0 for a store never written).
    async fn current_revision(&self) -> Result<u64, StorageError>;
}

/// The smallest key greater than every key starting with `prefix` (etcd's "range end"), or
/// `None` when no such key exists (empty prefix or all `0xff` bytes): scan to the end.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The smallest key a list page may start at: `prefix`, or just after `continue_from_key`.
fn list_start(prefix: &str, continue_from_key: Option<&str>) -> Vec<u8> {
    match continue_from_key {
        Some(after) if after >= prefix => {
            let mut start = after.as_bytes().to_vec();
            start.push(0);
            start
        }
        _ => prefix.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_below_0xff() {
        assert_eq!(
            prefix_end(b"/registry/pods/"),
            Some(b"/registry/pods0".to_vec())
        );
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn list_start_is_just_after_the_continue_key() {
        assert_eq!(list_start("/a/", None), b"/a/".to_vec());
        assert_eq!(list_start("/a/", Some("/a/x")), b"/a/x\0".to_vec());
        // A continue key before the prefix cannot move the start backwards.
        assert_eq!(list_start("/b/", Some("/a/x")), b"/b/".to_vec());
    }

    #[test]
    fn errors_name_the_key() {
        let err = StorageError::Conflict {
            key: "/registry/pods/default/nginx".into(),
            expected: 3,
            actual: 5,
        };
        let msg = err.to_string();
        assert!(
            msg.contains("/registry/pods/default/nginx") && msg.contains('3'),
            "{msg}"
        );
        let err = StorageError::NotFound { key: "/k".into() };
        assert!(err.to_string().contains("\"/k\""));
    }
}
