//! Watch fan-out shared by the backends that own their history (embedded, memory).
//!
//! A backend publishes each committed write batch, in revision order, on a
//! [`tokio::sync::broadcast`] channel, and exposes its history through [`EventLog`]. A watcher
//! is an explicit state machine ([`Watcher::step`], kube-rs style):
//!
//! - `CatchUp`: read pages of past events from the log until a page reaches the end of the log.
//! - `Live`: take batches from the broadcast receiver.
//! - `Done`: the stream is over.
//!
//! Why it is gap-free: the receiver is subscribed *before* the first log read. Every event is
//! published after it commits, so an event missing from the log reads (committed after the
//! last read's snapshot) was published after the subscription and reaches the receiver. Events
//! seen twice (in a log read and on the channel) are dropped by revision: the watcher
//! remembers `last`, the highest revision it has accounted for, and only passes events above
//! it. If the receiver lags (the channel overwrote batches it had not read), the watcher goes
//! back to `CatchUp` from `last` and keeps the same receiver, so the same argument holds again.
//! A log read below the compaction revision ends the stream with `Compacted`.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use super::{Event, StorageError, WatchStream};

/// One committed batch of events, in revision order, as published by a backend's writer.
pub(crate) type EventBatch = Arc<[Event]>;

/// Default capacity of a backend's broadcast channel, in write batches. A watcher more than
/// this many batches behind catches up from the log instead.
pub(crate) const DEFAULT_WATCH_BUFFER: usize = 1024;

/// How many past events one catch-up read returns at most.
const CATCH_UP_PAGE: usize = 512;

/// A page of history read by [`EventLog::events_after`].
pub(crate) struct EventPage {
    /// Events with `after < revision <= through` under the prefix, oldest first.
    pub events: Vec<Event>,
    /// Every event under the prefix up to this revision is in `events` (or before `after`).
    pub through: u64,
    /// `through` is the end of the log as of this read.
    pub complete: bool,
}

/// Read access to a backend's history of events.
#[async_trait]
pub(crate) trait EventLog: Send + Sync + 'static {
    /// The oldest events with revision greater than `after` whose key starts with `prefix`, at
    /// most `limit` of them. [`StorageError::Compacted`] if `after` is below the compaction
    /// revision (some of those events may be gone).
    async fn events_after(
        &self,
        prefix: &str,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StorageError>;
}

/// Where a [`Watcher`] is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    CatchUp,
    Live,
    Done,
}

/// One watch: catch-up from the log, then live events; see the module docs.
struct Watcher {
    log: Arc<dyn EventLog>,
    rx: broadcast::Receiver<EventBatch>,
    prefix: String,
    /// Highest revision accounted for: every event under the prefix up to it was emitted (or
    /// is in `pending`).
    last: u64,
    phase: Phase,
    pending: VecDeque<Event>,
}

impl Watcher {
    /// Produces the next item of the stream, or `None` at its end.
    async fn step(&mut self) -> Option<Result<Event, StorageError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            match self.phase {
                Phase::Done => return None,
                Phase::CatchUp => {
                    let read = self
                        .log
                        .events_after(&self.prefix, self.last, CATCH_UP_PAGE)
                        .await;
                    match read {
                        Ok(page) => {
                            self.pending.extend(page.events);
                            self.last = self.last.max(page.through);
                            if page.complete {
                                self.phase = Phase::Live;
                            }
                        }
                        Err(err) => {
                            self.phase = Phase::Done;
                            return Some(Err(err));
                        }
                    }
                }
                Phase::Live => match self.rx.recv().await {
                    Ok(batch) => {
                        for event in batch.iter() {
                            if event.revision() <= self.last {
                                continue;
                            }
                            self.last = event.revision();
                            if event.kv.key.starts_with(&self.prefix) {
                                self.pending.push_back(event.clone());
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            prefix = %self.prefix,
                            last = self.last,
                            missed,
                            "watcher fell behind the broadcast; catching up from the log"
                        );
                        self.phase = Phase::CatchUp;
                    }
                    Err(broadcast::error::RecvError::Closed) => self.phase = Phase::Done,
                },
            }
        }
    }
}

/// A watch stream over `log` and `rx`, starting after `from_revision`.
///
/// `rx` must be subscribed before the first log read, which happens on the first poll; callers
/// subscribe right before calling this.
pub(crate) fn watch_stream(
    log: Arc<dyn EventLog>,
    rx: broadcast::Receiver<EventBatch>,
    prefix: &str,
    from_revision: u64,
) -> WatchStream {
    let watcher = Watcher {
        log,
        rx,
        prefix: prefix.to_owned(),
        last: from_revision,
        phase: Phase::CatchUp,
        pending: VecDeque::new(),
    };
    futures::stream::unfold(watcher, |mut watcher| async move {
        let item = watcher.step().await?;
        Some((item, watcher))
    })
    .boxed()
}
