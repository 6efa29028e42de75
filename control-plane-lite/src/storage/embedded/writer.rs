//! The embedded store's single writer: group commit on its own thread.
//!
//! One OS thread owns the read-write SQLite connection. Callers send [`Request`]s over a
//! bounded channel and await a oneshot reply. The thread takes everything queued (up to
//! `max_batch`), applies it in one `BEGIN IMMEDIATE` transaction, commits once (one WAL fsync
//! with `synchronous=FULL`), then publishes the batch's events to watchers and answers each
//! caller. While it is fsyncing, new requests queue up and form the next batch, so N
//! concurrent writers share fsyncs instead of paying N of them.
//!
//! Each request runs inside its own savepoint and gets its own revision and its own result: a
//! refused request (conflict, missing or existing key) writes nothing and does not disturb the
//! others; an SQLite error confined to one request rolls back just that request. Only a failure
//! that loses the transaction (failed commit, I/O error) fails the whole batch, and then none
//! of it was written, no revision was used and no event was published.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{Fail, SqlRow};
use crate::storage::watch::EventBatch;
use crate::storage::{Event, EventKind, KeyValue, StorageError};

/// A write as queued for the writer thread.
pub(super) enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<u64>,
    },
    Delete {
        key: String,
        expected: Option<u64>,
    },
    Compact {
        revision: u64,
    },
}

impl WriteOp {
    /// The operation's name, for errors and logs.
    pub(super) fn name(&self) -> &'static str {
        match self {
            WriteOp::Create { .. } => "create",
            WriteOp::Update { .. } => "update",
            WriteOp::Delete { .. } => "delete",
            WriteOp::Compact { .. } => "compact",
        }
    }

    /// The key it is about (empty for compaction).
    pub(super) fn key(&self) -> &str {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key,
            WriteOp::Compact { .. } => "",
        }
    }
}

/// What a successful write did.
pub(super) enum Outcome {
    /// Created or updated at this revision.
    Put(u64),
    /// Deleted at this revision; the value it had.
    Deleted(u64, KeyValue),
    /// History compacted.
    Compacted,
}

/// A write and where to send its result.
pub(super) struct Request {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<Outcome, StorageError>>,
}

/// Counters the writer publishes to the store.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// The revision of the latest committed write.
    pub revision: AtomicU64,
    /// Committed transactions (fsyncs).
    pub commits: AtomicU64,
    /// Committed writes (revisions).
    pub writes: AtomicU64,
}

/// The writer thread's state.
pub(super) struct Writer {
    pub conn: Connection,
    pub revision: u64,
    pub compacted: u64,
    pub shared: Arc<Shared>,
    pub hub: broadcast::Sender<EventBatch>,
    pub max_batch: usize,
}

impl Writer {
    /// Serves requests until every sender is gone (the store was dropped).
    pub(super) fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while requests.blocking_recv_many(&mut batch, self.max_batch) > 0 {
            self.commit_batch(&mut batch);
        }
        tracing::debug!(revision = self.revision, "storage writer stopped");
    }

    /// Applies and commits one batch, then answers everyone in it.
    fn commit_batch(&mut self, batch: &mut Vec<Request>) {
        let mut revision = self.revision;
        let mut compacted = self.compacted;
        match apply_batch(&mut self.conn, batch, &mut revision, &mut compacted) {
            Ok((results, events)) => {
                self.revision = revision;
                self.compacted = compacted;
                self.shared.revision.store(revision, Ordering::Release);
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .writes
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                if !events.is_empty() {
                    // Publish before answering, so a watcher never trails an acknowledgement
                    // its caller has already seen. No receivers is fine.
                    let _ = self.hub.send(Arc::from(events));
                }
                for (request, result) in batch.drain(..).zip(results) {
                    // The caller may have given up waiting; the write stands regardless.
                    let _ = request.reply.send(result);
                }
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    writes = batch.len(),
                    "storage commit failed; the whole batch was rolled back"
                );
                // Nothing of the batch was written; go on from what the database holds.
                match super::revisions(&self.conn) {
                    Ok(read) => (self.revision, self.compacted) = read,
                    Err(err) => tracing::error!(error = %err, "cannot re-read the revision"),
                }
                let source: Arc<dyn std::error::Error + Send + Sync> = Arc::new(err);
                for request in batch.drain(..) {
                    let err = StorageError::Backend {
                        op: request.op.name(),
                        key: request.op.key().to_owned(),
                        source: Arc::clone(&source),
                    };
                    let _ = request.reply.send(Err(err));
                }
            }
        }
    }
}

type BatchResults = (Vec<Result<Outcome, StorageError>>, Vec<Event>);

/// Runs every request of `batch` in one transaction; `revision` and `compacted` advance as
/// requests succeed. An `Err` means the transaction is gone and nothing was written.
fn apply_batch(
    conn: &mut Connection,
    batch: &[Request],
    revision: &mut u64,
    compacted: &mut u64,
) -> rusqlite::Result<BatchResults> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    for request in batch {
        let savepoint = tx.savepoint()?;
        match apply(&savepoint, &request.op, *revision, compacted) {
            Ok((outcome, event)) => {
                savepoint.commit()?;
                if let Some(event) = event {
                    *revision = event.revision();
                    events.push(event);
                }
                results.push(Ok(outcome));
            }
            Err(fail) => {
                // Rolls back to the savepoint; fails only if the transaction itself is gone.
                savepoint.finish()?;
                if tx.is_autocommit() {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                        Some("transaction was rolled back by SQLite".into()),
                    ));
                }
                results.push(Err(fail.into_storage(request.op.name(), request.op.key())));
            }
        }
    }
    tx.commit()?;
    Ok((results, events))
}

/// Applies one write at revision `current + 1`; returns its outcome and the event it makes.
fn apply(
    conn: &Connection,
    op: &WriteOp,
    current: u64,
    compacted: &mut u64,
) -> Result<(Outcome, Option<Event>), Fail> {
    let next = current + 1;
    match op {
        WriteOp::Create { key, value } => {
            let latest = latest_row(conn, key)?;
            if latest.as_ref().is_some_and(|row| !row.deleted) {
                return Err(Fail::Refused(StorageError::AlreadyExists {
                    key: key.clone(),
                }));
            }
            let prev_revision = latest.map_or(0, |row| row.revision);
            insert(conn, next, key, value, next, prev_revision, false)?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: next,
                mod_revision: next,
            };
            let event = Event {
                kind: EventKind::Put,
                kv,
                prev_kv: None,
            };
            Ok((Outcome::Put(next), Some(event)))
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => {
            let prev = checked(conn, key, *expected)?;
            insert(
                conn,
                next,
                key,
                value,
                prev.create_revision,
                prev.mod_revision,
                false,
            )?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: prev.create_revision,
                mod_revision: next,
            };
            let event = Event {
                kind: EventKind::Put,
                kv,
                prev_kv: Some(prev),
            };
            Ok((Outcome::Put(next), Some(event)))
        }
        WriteOp::Delete { key, expected } => {
            let prev = checked(conn, key, *expected)?;
            insert(conn, next, key, &[], 0, prev.mod_revision, true)?;
            let kv = KeyValue {
                key: key.clone(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: next,
            };
            let event = Event {
                kind: EventKind::Delete,
                kv,
                prev_kv: Some(prev.clone()),
            };
            Ok((Outcome::Deleted(next, prev), Some(event)))
        }
        WriteOp::Compact { revision } => {
            compact(conn, *revision, current, compacted)?;
            Ok((Outcome::Compacted, None))
        }
    }
}

/// The newest row of key ?1. `+?1`, not `?1`: with the plain parameter, SQLite (built with
/// STAT4, as rusqlite's bundled build is) marks the plan as depending on the bound value and
/// recompiles the statement on every new key, which took half the time of each lookup and
/// ~4 % of the apiserver's CPU under a create/bind load. The unary plus changes neither the
/// value nor the plan (still the `(key, revision)` index).
const LATEST_ROW: &str = "SELECT revision, key, value, create_revision, deleted FROM log
     WHERE key = +?1 ORDER BY revision DESC LIMIT 1";

/// The latest row of `key`, tombstones included.
fn latest_row(conn: &Connection, key: &str) -> rusqlite::Result<Option<SqlRow>> {
    conn.prepare_cached(LATEST_ROW)?
        .query_row([key.as_bytes()], SqlRow::read)
        .optional()
}

/// The current value of `key`, if it exists.
pub(super) fn latest_live(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    Ok(latest_row(conn, key)?.and_then(SqlRow::live))
}

/// The current value of `key` if it exists and `expected` (if any) is its `mod_revision`.
fn checked(conn: &Connection, key: &str, expected: Option<u64>) -> Result<KeyValue, Fail> {
    let Some(current) = latest_live(conn, key)? else {
        return Err(Fail::Refused(StorageError::NotFound {
            key: key.to_owned(),
        }));
    };
    match expected {
        Some(expected) if expected != current.mod_revision => {
            Err(Fail::Refused(StorageError::Conflict {
                key: key.to_owned(),
                expected,
                actual: current.mod_revision,
            }))
        }
        _ => Ok(current),
    }
}

fn insert(
    conn: &Connection,
    revision: u64,
    key: &str,
    value: &[u8],
    create_revision: u64,
    prev_revision: u64,
    deleted: bool,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO log (revision, key, value, create_revision, prev_revision, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        revision,
        key.as_bytes(),
        value,
        create_revision,
        prev_revision,
        deleted
    ])?;
    Ok(())
}

/// Deletes the rows nobody can read any more once reads below `revision` are refused: rows
/// superseded by a newer row at or below `revision`, and tombstones at or below it. The
/// newest live row of each key at `revision` stays, so the state at `revision` and every event
/// after it (with its previous value) can still be read.
fn compact(
    conn: &Connection,
    revision: u64,
    current: u64,
    compacted: &mut u64,
) -> Result<(), Fail> {
    if revision > current {
        return Err(Fail::Refused(StorageError::FutureRevision {
            requested: revision,
            current,
        }));
    }
    if revision <= *compacted {
        return Err(Fail::Refused(StorageError::Compacted {
            requested: revision,
            compacted: *compacted,
        }));
    }
    let removed = conn.execute(
        "DELETE FROM log WHERE revision <= ?1 AND (deleted OR revision < (
             SELECT MAX(newer.revision) FROM log AS newer
             WHERE newer.key = log.key AND newer.revision <= ?1))",
        [revision],
    )?;
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('compacted', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [revision],
    )?;
    tracing::info!(revision, removed, "compacted storage history");
    *compacted = revision;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    #[test]
    fn latest_row_is_not_recompiled_per_key_and_uses_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(conn) = super::super::open_writer(&dir.path().join("db")) else {
            panic!("opening the database failed");
        };
        for (revision, key) in [(1, "/a"), (2, "/b"), (3, "/a")] {
            conn.execute(
                "INSERT INTO log VALUES (?1, ?2, x'7b7d', ?1, 0, 0)",
                params![revision, key.as_bytes()],
            )
            .unwrap();
        }
        let revision = |key: &str| latest_row(&conn, key).unwrap().map(|r| r.revision);
        assert_eq!(revision("/a"), Some(3));
        assert_eq!(revision("/b"), Some(2));
        assert_eq!(revision("/c"), None);
        let stmt = conn.prepare_cached(LATEST_ROW).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
        drop(stmt);
        let plan: String = conn
            .query_row(&format!("EXPLAIN QUERY PLAN {LATEST_ROW}"), [b"/a"], |r| {
                r.get(3)
            })
            .unwrap();
        assert!(plan.contains("log_key_revision"), "plan: {plan}");
    }
}
