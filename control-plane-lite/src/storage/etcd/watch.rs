//! One [`Storage::watch`](crate::storage::Storage::watch) on etcd, as an explicit state machine
//! ([`EtcdWatch::step`], kube-rs style):
//!
//! - `Closed`: no etcd watch open; the next step opens one after `last`. The first open
//!   happens on the first poll, so a compaction between `watch()` and that poll is reported.
//! - `Open`: take responses from etcd. A stream that fails (its member died) goes back to
//!   `Closed` and re-opens on another member after `last`, so nothing is lost or repeated.
//! - `Done`: the stream is over.
//!
//! When the store is dropped, the watch ends once it has delivered every revision the store had
//! seen, or etcd's progress notification for this watch shows it has passed that revision, or
//! after [`DRAIN_FOR`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream as EtcdStream, Watcher};
use futures::StreamExt;
use tokio::sync::watch as signal;
use tokio::time::Instant;

use super::{convert_kv, from_etcd, to_etcd, EtcdError, Members};
use crate::storage::{Event, EventKind, StorageError, WatchStream};

/// How long a watch of a dropped store waits for the last writes before it ends anyway.
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// How many times in a row a watch may break (with no response in between) before it gives up
/// with the last error instead of re-opening.
const MAX_BREAKS: u32 = 20;

/// What a watch is about.
pub(super) struct WatchSpec {
    pub members: Arc<Members>,
    pub store_prefix: String,
    /// The etcd range `[start, end)`.
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub from_revision: u64,
    /// Changes (closes) when the store is dropped.
    pub closed: signal::Receiver<()>,
}

enum Phase {
    Closed,
    /// Boxed: the open stream is large and `Done` is not.
    Open(Box<OpenWatch>),
    Done,
}

/// An etcd watch. The watcher is kept for its request stream: dropping it cancels the watch.
struct OpenWatch {
    watcher: Watcher,
    stream: EtcdStream,
}

/// What woke an open watch up.
enum Next {
    Response(Option<Result<WatchResponse, etcd_client::Error>>),
    StoreDropped,
    GiveUp,
}

struct EtcdWatch {
    spec: WatchSpec,
    /// Highest revision delivered (or accounted for): the next open starts after it.
    last: u64,
    /// Highest revision etcd reported progress to; only used to end a drain.
    progress: u64,
    /// Set when the store is dropped: the revision to drain to and when to give up.
    drain: Option<(u64, Instant)>,
    phase: Phase,
    pending: VecDeque<Event>,
    /// Breaks of the etcd stream since the last response.
    breaks: u32,
}

/// The stream of a watch; nothing is sent to etcd until it is first polled.
pub(super) fn stream(spec: WatchSpec) -> WatchStream {
    let last = spec.from_revision;
    let watch = EtcdWatch {
        spec,
        last,
        progress: 0,
        drain: None,
        phase: Phase::Closed,
        pending: VecDeque::new(),
        breaks: 0,
    };
    futures::stream::unfold(watch, |mut watch| async move {
        let item = watch.step().await?;
        Some((item, watch))
    })
    .boxed()
}

impl EtcdWatch {
    /// Produces the next item of the stream, or `None` at its end.
    async fn step(&mut self) -> Option<Result<Event, StorageError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if let Some((target, give_up)) = self.drain {
                if self.last.max(self.progress) >= target || Instant::now() >= give_up {
                    self.phase = Phase::Done;
                }
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Closed => match self.open().await {
                    Ok(phase) => self.phase = phase,
                    Err(err) => return Some(Err(err)),
                },
                Phase::Open(mut open) => {
                    let give_up = self.drain.map(|(_, at)| at);
                    let next = tokio::select! {
                        response = open.stream.next() => Next::Response(response),
                        _ = self.spec.closed.changed(), if self.drain.is_none() => Next::StoreDropped,
                        _ = sleep_until(give_up) => Next::GiveUp,
                    };
                    match next {
                        Next::Response(Some(Ok(response))) => {
                            self.breaks = 0;
                            // On error the phase stays `Done`: the error is the last item.
                            if let Err(err) = self.handle(response, open.watcher.watch_id()) {
                                return Some(Err(err));
                            }
                            self.phase = Phase::Open(open);
                        }
                        Next::Response(Some(Err(err))) => {
                            self.breaks += 1;
                            if self.breaks > MAX_BREAKS {
                                let prefix = String::from_utf8_lossy(&self.spec.start).into_owned();
                                return Some(Err(StorageError::backend("watch", prefix, err)));
                            }
                            tracing::debug!(error = %err, last = self.last, "etcd watch broke; re-opening");
                            self.reopen().await;
                        }
                        Next::Response(None) => self.reopen().await,
                        Next::StoreDropped => {
                            let target = self.spec.members.latest.load(Ordering::Relaxed);
                            self.drain = Some((target, Instant::now() + DRAIN_FOR));
                            self.phase = Phase::Open(open);
                        }
                        Next::GiveUp => {}
                    }
                }
            }
        }
    }

    /// Opens an etcd watch after `last`, failing over between members.
    async fn open(&self) -> Result<Phase, StorageError> {
        let options = WatchOptions::new()
            .with_range(self.spec.end.clone())
            .with_start_revision(to_etcd(self.last) + 1)
            .with_prev_key()
            .with_progress_notify();
        let start = self.spec.start.clone();
        let (watcher, stream) = self
            .spec
            .members
            .call(true, |mut client| {
                let (start, options) = (start.clone(), options.clone());
                async move { client.watch(start, Some(options)).await }
            })
            .await
            .map_err(|e| {
                let prefix = String::from_utf8_lossy(&self.spec.start).into_owned();
                StorageError::backend("watch", prefix, e)
            })?;
        Ok(Phase::Open(Box::new(OpenWatch { watcher, stream })))
    }

    /// After the etcd stream broke: open again from `last` unless the store is gone.
    async fn reopen(&mut self) {
        self.phase = if self.drain.is_some() {
            Phase::Done
        } else {
            tokio::time::sleep(super::RETRY_PAUSE).await;
            Phase::Closed
        };
    }

    /// Takes in one etcd response: events, a progress report, or a cancellation.
    fn handle(&mut self, response: WatchResponse, watch_id: i64) -> Result<(), StorageError> {
        if response.compact_revision() > 0 {
            return Err(StorageError::Compacted {
                requested: self.last,
                compacted: from_etcd(response.compact_revision()),
            });
        }
        if response.canceled() {
            let reason = response.cancel_reason().to_owned();
            let prefix = String::from_utf8_lossy(&self.spec.start).into_owned();
            return Err(StorageError::backend(
                "watch",
                prefix,
                EtcdError::WatchCancelled { reason },
            ));
        }
        // Only this watch's own progress notifications count: etcd 3.4 answers a progress
        // request (watch id -1) even before an unsynced watcher has caught up.
        if response.events().is_empty() && response.watch_id() == watch_id {
            if let Some(header) = response.header() {
                self.progress = self.progress.max(from_etcd(header.revision()));
            }
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let kv = convert_kv(&self.spec.store_prefix, kv)?;
            if kv.mod_revision <= self.last {
                continue;
            }
            let prev_kv = event
                .prev_kv()
                .map(|prev| convert_kv(&self.spec.store_prefix, prev))
                .transpose()?;
            let kind = match event.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            };
            self.pending.push_back(Event { kind, kv, prev_kv });
        }
        if let Some(event) = self.pending.back() {
            self.last = self.last.max(event.revision());
        }
        Ok(())
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
