//! Durable writes per second of a storage backend alone: `writers` concurrent tasks creating
//! keys through the [`Storage`] trait, no apiserver in between. `cargo xtask bench apiserver`
//! runs it (the hidden `netlet-control-plane bench-storage-writes`) on the embedded store and
//! on the bench's etcd, so the two engines are compared on the same disk without the
//! apiserver's own CPU (TLS, JSON, admission), which both setups share, flattening the ratio.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{Storage, StorageError};

/// Where the benchmark's keys live (apart from the apiserver's `/registry/...`).
pub const PREFIX: &str = "/netlet-write-bench/";

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct WriteBenchResult {
    /// Concurrent writers.
    pub writers: usize,
    /// Acknowledged creates.
    pub writes: usize,
    /// Wall time from the first create to the last acknowledgement.
    pub seconds: f64,
    /// `writes / seconds`.
    pub writes_per_second: f64,
}

/// Creates `writes` keys of `value_size` bytes each from `writers` concurrent tasks (every
/// create acknowledged only once durable, as the backend promises) and times it. The first
/// failure ends the run with that error.
pub async fn run(
    storage: Arc<dyn Storage>,
    writers: usize,
    writes: usize,
    value_size: usize,
) -> Result<WriteBenchResult, StorageError> {
    let writers = writers.max(1);
    // A pod-sized JSON value; the content does not matter to either engine.
    let value = Arc::new(format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(value_size.saturating_sub(10))
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (storage, next, value) = (Arc::clone(&storage), Arc::clone(&next), Arc::clone(&value));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= writes {
                    return Ok::<(), StorageError>(());
                }
                let key = format!("{PREFIX}{i:08}");
                storage.create(&key, value.as_bytes().to_vec()).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => result?,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => return Err(StorageError::backend("create", PREFIX, err)),
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    Ok(WriteBenchResult {
        writers,
        writes,
        seconds,
        writes_per_second: writes as f64 / seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EmbeddedStorage;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_counted_write_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Storage> = Arc::new(EmbeddedStorage::open(dir.path()).unwrap());
        let r = run(Arc::clone(&store), 4, 50, 300).await.unwrap();
        assert_eq!((r.writers, r.writes), (4, 50));
        assert!(r.writes_per_second > 0.0);
        let listed = store.list(PREFIX, None, 0, None).await.unwrap();
        assert_eq!(listed.kvs.len(), 50);
        assert!(listed.kvs.iter().all(|kv| kv.value.len() == 300));
        // Each write had its own revision: nothing was merged or lost.
        assert_eq!(store.current_revision().await.unwrap(), 50);
    }
}
