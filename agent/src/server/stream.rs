//! Streaming one container log: the lines already written (after `since` and `tailLines`), then
//! with `follow` the lines appended later, until the client goes away, the byte limit is reached,
//! a later run of the container starts its own file, or the file is deleted with the pod.
//!
//! The file is read from a task of its own into a bounded channel, so a slow client slows the
//! reader instead of growing a buffer.

use super::cri_log::Decoder;
use super::log_files::ContainerLogs;
use super::options::{ByteBudget, LogOptions};
use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// How often a followed file is checked for new lines (kubelet polls its log files too, with
/// a file watcher as a shortcut; a quarter second is below what a person notices).
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Chunks in flight between the reader task and the connection.
const CHANNEL_DEPTH: usize = 16;

/// Starts streaming run `restart` of `logs`; the receiver yields the response body's chunks and
/// ends with the stream.
pub fn start(logs: ContainerLogs, restart: u32, opts: LogOptions) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let path = logs.file(restart);
    tokio::spawn(async move {
        if let Err(err) = run(&logs, restart, &path, &opts, &tx).await {
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

async fn run(
    logs: &ContainerLogs,
    restart: u32,
    path: &PathBuf,
    opts: &LogOptions,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), StreamEnd> {
    let mut file = tokio::fs::File::open(path).await?;
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
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return Err(StreamEnd::Closed),
        }
        // Checked before the read: whatever the old run wrote before the new file appeared is
        // still read below.
        let finished = logs.superseded(restart) || !path.exists();
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
