//! The embedded store's read side: pooled read-only connections and the history reader that
//! watchers catch up from.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags};

use super::{revisions, Fail, SqlRow, BUSY_TIMEOUT};
use crate::storage::watch::{EventLog, EventPage};
use crate::storage::{prefix_end, Event, EventKind, KeyValue, StorageError};

/// Read-only connections, used on tokio's blocking threads.
pub(super) struct ReadPool {
    pub(super) path: PathBuf,
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) max_idle: usize,
}

impl ReadPool {
    /// Runs `read` on a pooled connection on a blocking thread.
    pub(super) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        key: &str,
        read: impl FnOnce(&mut Connection) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, StorageError> {
        let pool = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let result = read(&mut conn);
            pool.put(conn);
            result
        })
        .await;
        match joined {
            Ok(result) => result.map_err(|fail| fail.into_storage(op, key)),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(StorageError::backend(op, key, err)),
        }
    }

    fn take(&self) -> Result<Connection, Fail> {
        if let Some(conn) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}

/// The `log` table as seen by watchers (which may outlive the store: they then read on until
/// the broadcast closes).
pub(super) struct SqlLog(pub(super) Arc<ReadPool>);

#[async_trait]
impl EventLog for SqlLog {
    async fn events_after(
        &self,
        prefix: &str,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StorageError> {
        let start = prefix.as_bytes().to_vec();
        let end = prefix_end(prefix.as_bytes());
        self.0
            .run("watch", prefix, move |conn| {
                let tx = conn.transaction()?;
                let (current, compacted) = revisions(&tx)?;
                if after < compacted {
                    return Err(Fail::Refused(StorageError::Compacted {
                        requested: after,
                        compacted,
                    }));
                }
                let events = tx
                    .prepare_cached(
                        "SELECT l.revision, l.key, l.value, l.create_revision, l.deleted,
                                p.revision, p.key, p.value, p.create_revision, p.deleted
                         FROM log AS l LEFT JOIN log AS p ON p.revision = l.prev_revision
                         WHERE l.revision > ?1 AND l.key >= ?2 AND (?3 IS NULL OR l.key < ?3)
                         ORDER BY l.revision LIMIT ?4",
                    )?
                    .query_map(params![after, start, end, limit as i64], |row| {
                        let this = SqlRow::read_at(row, 0)?;
                        let prev = match row.get::<_, Option<u64>>(5)? {
                            Some(_) => SqlRow::read_at(row, 5)?.live(),
                            None => None,
                        };
                        Ok(event(this, prev))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let complete = events.len() < limit;
                let through = match events.last() {
                    Some(last) if !complete => last.revision(),
                    _ => current,
                };
                Ok(EventPage {
                    events,
                    through,
                    complete,
                })
            })
            .await
    }
}

/// The watch event a log row makes, given the key's previous value.
fn event(row: SqlRow, prev_kv: Option<KeyValue>) -> Event {
    let kind = if row.deleted {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    let kv = KeyValue {
        key: row.key,
        value: row.value,
        create_revision: row.create_revision,
        mod_revision: row.revision,
    };
    Event { kind, kv, prev_kv }
}
