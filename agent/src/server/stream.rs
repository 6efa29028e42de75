//! Streaming one container log: the lines already written (after `since` and `tailLines`), then
//! with `follow` the lines appended later, until the client goes away, the byte limit is reached,
//! a later run of the container starts its own file, the container stops running (when the
//! runtime can be asked, [`LiveRun`]) or the file is deleted with the pod.
//!
//! The file is read from a task of its own into a bounded channel, so a slow client slows the
//! reader instead of growing a buffer.

use super::cri_log::Decoder;
use super::log_files::ContainerLogs;
use super::options::{ByteBudget, LogOptions};
use super::remote;
use crate::cri::CriClient;
use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// How often a followed file is checked for new lines (kubelet polls its log files too, with
/// a file watcher as a shortcut; a quarter second is below what a person notices).
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// How many polls pass between asking the runtime whether the run is still going: once a
/// second, so a follower costs the runtime little and still ends soon after its container.
const POLLS_PER_LIVENESS_CHECK: u32 = 4;

/// Chunks in flight between the reader task and the connection.
const CHANNEL_DEPTH: usize = 16;

/// The container a followed log belongs to, asked about through the runtime so that following
/// a stopped container ends (as with the kubelet) instead of waiting for a restart.
#[derive(Debug, Clone)]
pub struct LiveRun {
    /// The runtime.
    pub cri: CriClient,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name.
    pub container: String,
}

impl LiveRun {
    /// Whether run `restart` is running; a failed question counts as running (the stream then
    /// goes on and ends with the file or the client instead).
    async fn running(&self, restart: u32) -> bool {
        let (ns, pod, c) = (&self.namespace, &self.pod, &self.container);
        remote::run_is_running(&self.cri, ns, pod, c, restart)
            .await
            .unwrap_or_else(|err| {
                tracing::debug!(%err, "asking whether a followed container still runs");
                true
            })
    }
}

/// Starts streaming run `restart` of `logs`; the receiver yields the response body's chunks and
/// ends with the stream. `live` lets a followed stream end when the run stops.
pub fn start(
    logs: ContainerLogs,
    restart: u32,
    opts: LogOptions,
    live: Option<LiveRun>,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let path = logs.file(restart);
    tokio::spawn(async move {
        let stream = Stream {
            logs: &logs,
            restart,
            path: &path,
            live: live.as_ref(),
        };
        if let Err(err) = stream.run(&opts, &tx).await {
            tracing::warn!(path = %path.display(), %err, "streaming a container log failed");
        }
    });
    rx
}

/// Why a stream ended early; `Closed` is the normal end of a followed stream.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("the client went away")]
    Closed,
    #[error("reading the log file: {0}")]
    Io(#[from] std::io::Error),
}

/// One run's log file being streamed.
struct Stream<'a> {
    logs: &'a ContainerLogs,
    restart: u32,
    path: &'a PathBuf,
    live: Option<&'a LiveRun>,
}

impl Stream<'_> {
    /// Whether nothing more will be written: a later run has its own file, the file is gone,
    /// or (asked on every few polls) the run has stopped.
    async fn finished(&self, polls: u32) -> bool {
        if self.logs.superseded(self.restart) || !self.path.exists() {
            return true;
        }
        match self.live {
            Some(live) if polls.is_multiple_of(POLLS_PER_LIVENESS_CHECK) => {
                !live.running(self.restart).await
            }
            _ => false,
        }
    }

    async fn run(&self, opts: &LogOptions, tx: &mpsc::Sender<Bytes>) -> Result<(), StreamEnd> {
        let mut file = tokio::fs::File::open(self.path).await?;
        let mut decoder = Decoder::default();
        let mut budget = ByteBudget::new(opts.limit_bytes);
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).await?;
        let (lines, used) = decoder.feed_buffer(&buf);
        buf.drain(..used);
        for chunk in opts.initial(lines) {
            if send(tx, &mut budget, chunk).await? {
                return Ok(());
            }
        }
        if !opts.follow {
            return Ok(());
        }
        let mut polls: u32 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = tx.closed() => return Err(StreamEnd::Closed),
            }
            // Checked before the read: whatever the run wrote before it ended is still read
            // below.
            let finished = self.finished(polls).await;
            polls = polls.wrapping_add(1);
            let before = buf.len();
            file.read_to_end(&mut buf).await?;
            if buf.len() > before {
                let (lines, used) = decoder.feed_buffer(&buf);
                buf.drain(..used);
                for line in lines.into_iter().filter(|l| opts.wanted(l)) {
                    if send(tx, &mut budget, line.render(opts.timestamps)).await? {
                        return Ok(());
                    }
                }
            }
            if finished {
                return Ok(());
            }
        }
    }
}

/// Sends what fits of `chunk`; `true` when the byte limit is used up.
async fn send(
    tx: &mpsc::Sender<Bytes>,
    budget: &mut ByteBudget,
    chunk: Vec<u8>,
) -> Result<bool, StreamEnd> {
    let chunk = budget.take(chunk);
    if !chunk.is_empty() {
        tx.send(Bytes::from(chunk))
            .await
            .map_err(|_| StreamEnd::Closed)?;
    }
    Ok(budget.exhausted())
}
