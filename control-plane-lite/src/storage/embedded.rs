//! The default backend: SQLite in-process, laid out like k3s's kine.
//!
//! Why SQLite: it gives us, in one well-tested library compiled into the binary (`rusqlite`
//! with `bundled`, so no system library and no external process), commits that are durable
//! once acknowledged (WAL with `synchronous=FULL`: one fsync of the WAL per commit), crash
//! recovery, snapshot-isolated readers that never block the writer, and ordered indexes: all
//! an MVCC log needs. k3s's kine runs Kubernetes on SQLite with a log table of this shape.
//! A pure-Rust key-value engine (redb, fjall) would also work, but the list-at-revision and
//! compaction queries below would become hand-written range scans, and a hand-written log
//! file would have to re-earn SQLite's crash recovery.
//!
//! Layout: `<dir>/state.db` (+ `-wal`, `-shm`) and `<dir>/lock`, an exclusive `flock` held
//! while the store is open so two processes never write one history. The table `log` has one
//! row per write, keyed by its revision (`INTEGER PRIMARY KEY`, so the history is clustered in
//! revision order and watch catch-up is a range scan); deletes are tombstone rows. The current
//! value of a key is its newest row, found through the index on `(key, revision)`; the state
//! at a past revision is the newest row at or below it. `meta` holds the compaction revision.
//!
//! Writes go through one writer thread with group commit (see `embedded/writer.rs`). Reads run
//! on a small pool of read-only connections on tokio's blocking threads; a list reads its
//! rows and its revision in one read transaction, so they agree. Watchers use the shared
//! machinery in `watch.rs`, catching up from `log` and then following the writer's broadcast.

mod read;
mod writer;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, Row};
use tokio::sync::{broadcast, mpsc, oneshot};

use self::read::{ReadPool, SqlLog};
use self::writer::{Outcome, Request, Shared, WriteOp, Writer};
use super::watch::{watch_stream, EventBatch, DEFAULT_WATCH_BUFFER};
use super::{list_start, prefix_end, KeyValue, ListResult, Storage, StorageError, WatchStream};

/// Version of the on-disk schema, kept in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS log (
        revision        INTEGER PRIMARY KEY,
        key             BLOB    NOT NULL,
        value           BLOB    NOT NULL,
        create_revision INTEGER NOT NULL,
        prev_revision   INTEGER NOT NULL,
        deleted         INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS log_key_revision ON log (key, revision);
    CREATE TABLE IF NOT EXISTS meta (
        name  TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    );
";

/// A list page: the newest row at or below revision ?3 of each key from ?1 on, if live, in key
/// order, at most ?4 rows. Two variants so that SQLite sees a closed index range when the
/// prefix has an end (?2) and does not scan to the end of the index.
macro_rules! list_sql {
    ($upper:literal) => {
        concat!(
            "SELECT revision, key, value, create_revision, deleted FROM log
             WHERE key >= ?1 ",
            $upper,
            " AND NOT deleted
               AND revision = (SELECT MAX(at.revision) FROM log AS at
                               WHERE at.key = log.key AND at.revision <= ?3)
             ORDER BY key LIMIT ?4"
        )
    };
}
const LIST_RANGE: &str = list_sql!("AND key < ?2");
const LIST_TO_END: &str = list_sql!("AND ?2 IS NULL");

/// How long a connection waits for SQLite's own locks (only contended while opening).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Tuning of an [`EmbeddedStorage`]; the defaults suit the apiserver.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most writes committed together in one transaction (one fsync).
    pub max_batch: usize,
    /// Write batches buffered for watchers; a watcher further behind re-reads the log.
    pub watch_buffer: usize,
    /// Idle read connections kept open.
    pub read_connections: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_batch: 256,
            watch_buffer: DEFAULT_WATCH_BUFFER,
            read_connections: 4,
        }
    }
}

/// Counters of an [`EmbeddedStorage`] since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Transactions committed, i.e. fsyncs paid.
    pub commits: u64,
    /// Writes (revisions) committed; `writes / commits` is the group-commit factor.
    pub writes: u64,
}

/// The embedded SQLite [`Storage`]; see the module docs.
///
/// Dropping it stops the writer thread after the batch in flight and releases the directory
/// lock; it blocks for at most that one commit.
pub struct EmbeddedStorage {
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    reads: Arc<ReadPool>,
    hub: broadcast::Sender<EventBatch>,
    shared: Arc<Shared>,
    /// Held (flocked) until drop; declared last so it is released after the writer stops.
    _lock: File,
}

impl EmbeddedStorage {
    /// Opens (creating if needed) the store in directory `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// Opens (creating if needed) the store in directory `dir`.
    ///
    /// Fails if another [`EmbeddedStorage`], in this process or another, has it open.
    /// Blocking (it opens and checks the database); call it at startup.
    pub fn open_with(
        dir: impl AsRef<Path>,
        options: EmbeddedOptions,
    ) -> Result<Self, StorageError> {
        let dir = dir.as_ref();
        let where_ = dir.display().to_string();
        std::fs::create_dir_all(dir)
            .map_err(|err| StorageError::backend("create data directory", &where_, err))?;
        let lock = File::create(dir.join("lock"))
            .map_err(|err| StorageError::backend("open lock file", &where_, err))?;
        lock.try_lock().map_err(|err| match err {
            std::fs::TryLockError::WouldBlock => {
                StorageError::backend("lock data directory", &where_, OpenError::Locked)
            }
            std::fs::TryLockError::Error(err) => {
                StorageError::backend("lock data directory", &where_, err)
            }
        })?;

        let path = dir.join("state.db");
        let conn = open_writer(&path).map_err(|err| err.into_storage("open", &where_))?;
        // Make the directory entries of new database files durable too.
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|err| StorageError::backend("sync data directory", &where_, err))?;
        let (current, compacted) =
            revisions(&conn).map_err(|err| StorageError::backend("open", &where_, err))?;
        tracing::info!(path = %path.display(), revision = current, compacted, "opened storage");

        let shared = Arc::new(Shared::default());
        shared.revision.store(current, Ordering::Release);
        let (hub, _) = broadcast::channel(options.watch_buffer.max(1));
        let max_batch = options.max_batch.max(1);
        let (requests, queue) = mpsc::channel(max_batch * 4);
        let writer = Writer {
            conn,
            revision: current,
            compacted,
            shared: Arc::clone(&shared),
            hub: hub.clone(),
            max_batch,
        };
        let writer = std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|err| StorageError::backend("start writer", &where_, err))?;

        let reads = Arc::new(ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            max_idle: options.read_connections,
        });
        Ok(EmbeddedStorage {
            requests: Some(requests),
            writer: Some(writer),
            reads,
            hub,
            shared,
            _lock: lock,
        })
    }

    /// Group-commit counters since opening.
    pub fn stats(&self) -> EmbeddedStats {
        EmbeddedStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
        }
    }

    /// Queues a write for the writer thread and waits for its result. If the caller stops
    /// waiting after the request was queued, the write still happens (as with etcd).
    async fn write(&self, op: WriteOp) -> Result<Outcome, StorageError> {
        let closed = StorageError::Closed {
            op: op.name(),
            key: op.key().to_owned(),
        };
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().expect("set until drop");
        if requests.send(Request { op, reply }).await.is_err() {
            return Err(closed);
        }
        answer.await.map_err(|_| closed)?
    }
}

impl Drop for EmbeddedStorage {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("storage writer thread panicked");
            }
        }
    }
}

/// Why a data directory could not be opened, beyond I/O and SQLite errors.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("another storage instance holds the data directory's lock")]
    Locked,
    #[error("SQLite refused WAL mode (journal_mode is {0:?})")]
    NotWal(String),
    #[error("unknown storage schema version {0} (this build knows {SCHEMA_VERSION})")]
    UnknownSchema(i64),
}

/// Opens the read-write connection: WAL, `synchronous=FULL`, schema created or checked.
fn open_writer(path: &Path) -> Result<Connection, Fail> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Fail::Refused(StorageError::backend(
            "open",
            path.display().to_string(),
            OpenError::NotWal(mode),
        )));
    }
    // FULL: in WAL mode every commit fsyncs the WAL before returning, so an acknowledged write
    // survives power loss, not just a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        0 => conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?,
        SCHEMA_VERSION => {}
        other => {
            return Err(Fail::Refused(StorageError::backend(
                "open",
                path.display().to_string(),
                OpenError::UnknownSchema(other),
            )))
        }
    }
    Ok(conn)
}

/// The current and the compaction revision, as seen by `conn`'s current transaction.
fn revisions(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    let (newest, compacted): (u64, u64) = conn.query_row(
        "SELECT (SELECT IFNULL(MAX(revision), 0) FROM log),
                IFNULL((SELECT value FROM meta WHERE name = 'compacted'), 0)",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    // Compaction may have removed the newest row (a tombstone), never anything above it.
    Ok((newest.max(compacted), compacted))
}

/// A failed storage step: refused by the store's rules, or an SQLite error.
enum Fail {
    Refused(StorageError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(err: rusqlite::Error) -> Self {
        Fail::Sql(err)
    }
}

impl Fail {
    fn into_storage(self, op: &'static str, key: &str) -> StorageError {
        match self {
            Fail::Refused(err) => err,
            Fail::Sql(err) => StorageError::backend(op, key, err),
        }
    }
}

/// One row of `log` as read back.
struct SqlRow {
    revision: u64,
    key: String,
    value: Vec<u8>,
    create_revision: u64,
    deleted: bool,
}

impl SqlRow {
    /// Reads columns `revision, key, value, create_revision, deleted` starting at 0.
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Self::read_at(row, 0)
    }

    fn read_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Self> {
        let key: Vec<u8> = row.get(at + 1)?;
        let key = String::from_utf8(key).map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(
                at + 1,
                rusqlite::types::Type::Blob,
                Box::new(err),
            )
        })?;
        Ok(SqlRow {
            revision: row.get(at)?,
            key,
            value: row.get(at + 2)?,
            create_revision: row.get(at + 3)?,
            deleted: row.get(at + 4)?,
        })
    }

    /// The value this row wrote, unless it is a tombstone.
    fn live(self) -> Option<KeyValue> {
        (!self.deleted).then_some(KeyValue {
            key: self.key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.revision,
        })
    }
}

/// Checks that `revision` can be read: not compacted, not in the future.
fn readable(revision: u64, current: u64, compacted: u64) -> Result<(), Fail> {
    if revision > current {
        return Err(Fail::Refused(StorageError::FutureRevision {
            requested: revision,
            current,
        }));
    }
    if revision < compacted {
        return Err(Fail::Refused(StorageError::Compacted {
            requested: revision,
            compacted,
        }));
    }
    Ok(())
}

#[async_trait]
impl Storage for EmbeddedStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        let owned = key.to_owned();
        self.reads
            .run("get", key, move |conn| {
                Ok(writer::latest_live(conn, &owned)?)
            })
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        at_revision: Option<u64>,
        limit: usize,
        continue_from_key: Option<&str>,
    ) -> Result<ListResult, StorageError> {
        let start = list_start(prefix, continue_from_key);
        let end = prefix_end(prefix.as_bytes());
        self.reads
            .run("list", prefix, move |conn| {
                let tx = conn.transaction()?;
                let (current, compacted) = revisions(&tx)?;
                let revision = at_revision.unwrap_or(current);
                readable(revision, current, compacted)?;
                // Fetch one extra row to learn whether there are more.
                let fetch = if limit == 0 { -1 } else { limit as i64 + 1 };
                let mut kvs = tx
                    .prepare_cached(if end.is_some() {
                        LIST_RANGE
                    } else {
                        LIST_TO_END
                    })?
                    .query_map(params![start, end, revision, fetch], SqlRow::read)?
                    .map(|row| Ok(row?.live().expect("filtered on NOT deleted")))
                    .collect::<Result<Vec<_>, Fail>>()?;
                let more = limit != 0 && kvs.len() > limit;
                if more {
                    kvs.truncate(limit);
                }
                Ok(ListResult {
                    kvs,
                    revision,
                    more,
                })
            })
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<u64, StorageError> {
        let key = key.to_owned();
        match self.write(WriteOp::Create { key, value }).await? {
            Outcome::Put(revision) => Ok(revision),
            _ => unreachable!("create answers Put"),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<u64>,
    ) -> Result<u64, StorageError> {
        let op = WriteOp::Update {
            key: key.to_owned(),
            value,
            expected: expected_mod_revision,
        };
        match self.write(op).await? {
            Outcome::Put(revision) => Ok(revision),
            _ => unreachable!("update answers Put"),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<u64>,
    ) -> Result<(u64, KeyValue), StorageError> {
        let op = WriteOp::Delete {
            key: key.to_owned(),
            expected: expected_mod_revision,
        };
        match self.write(op).await? {
            Outcome::Deleted(revision, prev) => Ok((revision, prev)),
            _ => unreachable!("delete answers Deleted"),
        }
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StorageError> {
        // Subscribe before any read of the log: see `watch.rs` for why that makes it gap-free.
        let rx = self.hub.subscribe();
        let (_, compacted) = self
            .reads
            .run("watch", prefix, |conn| Ok(revisions(conn)?))
            .await?;
        StorageError::ensure_not_compacted(from_revision, compacted)?;
        let log = Arc::new(SqlLog(Arc::clone(&self.reads)));
        Ok(watch_stream(log, rx, prefix, from_revision))
    }

    async fn compact(&self, revision: u64) -> Result<(), StorageError> {
        self.write(WriteOp::Compact { revision }).await.map(|_| ())
    }

    async fn current_revision(&self) -> Result<u64, StorageError> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests;
