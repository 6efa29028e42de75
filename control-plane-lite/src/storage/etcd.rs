//! The etcd v3 backend: each [`Storage`] call is one etcd request (see the module docs of
//! [`crate::storage`] for the mapping).
//!
//! # Revisions
//!
//! An empty etcd is at revision 1 and its first write gets revision 2, while the [`Storage`]
//! contract starts at 0 and 1. This backend therefore reports etcd's revision minus one
//! everywhere (results, `KeyValue`s, events, errors) and adds one to every revision it is given;
//! a `resourceVersion` seen through this store is the etcd revision minus one.
//!
//! # Failover
//!
//! The store holds one client per endpoint and sends every request to one member, the current
//! one. When that member cannot be reached (connection refused, `Unavailable`), the store moves
//! to the next member and retries — reads and watch (re)opens always, writes and compactions
//! only when the request certainly never reached the member, so that none is applied twice. A
//! write whose outcome is unknown fails with [`StorageError::Backend`]. Watches survive the loss of
//! their member by re-opening after the last revision they delivered.

mod watch;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse,
    ResponseHeader, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use tokio::sync::watch as signal;

use super::{list_start, prefix_end, KeyValue, ListResult, Storage, StorageError, WatchStream};

/// How long one call keeps retrying across members before it gives up.
const RETRY_FOR: Duration = Duration::from_secs(15);

/// How long one attempt may take before the member counts as unreachable: longer than etcd's
/// own request timeout (about 7 s with default election settings), so that etcd's answer
/// normally wins, but bounded, so that a hung (not dead) member is failed over too.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between retries, so that a cluster electing a leader is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What went wrong talking to etcd, beyond etcd's own errors.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// [`EtcdStorage::connect`] was given no endpoint.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// A response lacked its header, so its revision is unknown.
    #[error("etcd response to {op} has no header")]
    MissingHeader {
        /// The request, e.g. `"txn"`.
        op: &'static str,
    },
    /// A stored key is not UTF-8 or not under the store's prefix (it was not written by this
    /// store).
    #[error("etcd key {key:?} is not UTF-8 or not under the store prefix")]
    ForeignKey {
        /// The key's bytes, lossily decoded.
        key: String,
    },
    /// A transaction's response did not hold the operation it asked for.
    #[error("etcd transaction for {op} returned an unexpected response")]
    UnexpectedTxnResponse {
        /// The operation, e.g. `"delete"`.
        op: &'static str,
    },
    /// A write failed in a way that leaves its outcome unknown: the member or the leader died
    /// while it was in flight. It may have been applied; the caller must read to find out.
    #[error("etcd write may or may not have been applied: {source}")]
    OutcomeUnknown {
        /// The transport or etcd error.
        #[source]
        source: etcd_client::Error,
    },
    /// The watch was cancelled by etcd for a reason other than compaction.
    #[error("etcd cancelled the watch: {reason}")]
    WatchCancelled {
        /// etcd's reason.
        reason: String,
    },
}

/// A [`Storage`] backed by an etcd v3 cluster.
///
/// Dropping the store ends its watches once they have delivered every write the store saw.
pub struct EtcdStorage {
    members: Arc<Members>,
    /// Prepended to every key; lets several stores share one etcd.
    prefix: String,
    /// Dropped with the store: tells watches to wind down.
    _closed: signal::Sender<()>,
    closed_rx: signal::Receiver<()>,
}

impl std::fmt::Debug for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStorage")
            .field("endpoints", &self.members.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Keys per range request when listing; see [`EtcdStorage`]'s `list`.
const LIST_PAGE: usize = 500;

impl EtcdStorage {
    /// Connects to the etcd members at `endpoints` (e.g. `http://127.0.0.1:2379`), storing every
    /// key under `prefix` (`""` for the apiserver's keys as they are).
    ///
    /// Fails if no member answers within about 15 s (members that refuse connections are
    /// skipped at once).
    pub async fn connect<E: AsRef<str>>(
        endpoints: &[E],
        prefix: impl Into<String>,
    ) -> Result<Self, StorageError> {
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        if endpoints.is_empty() {
            return Err(StorageError::backend("connect", "", EtcdError::NoEndpoints));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in &endpoints {
            // Connecting is lazy: this only parses the endpoint.
            let client = Client::connect([endpoint], Some(options.clone()))
                .await
                .map_err(|e| StorageError::backend("connect", endpoint.clone(), e))?;
            clients.push(client);
        }
        let (closed, closed_rx) = signal::channel(());
        let store = EtcdStorage {
            members: Arc::new(Members {
                endpoints,
                clients,
                current: AtomicUsize::new(0),
                latest: AtomicU64::new(0),
            }),
            prefix: prefix.into(),
            _closed: closed,
            closed_rx,
        };
        store.current_revision().await?;
        Ok(store)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The header of a response, remembered as the latest revision this store has seen.
    fn revision(
        &self,
        op: &'static str,
        header: Option<&ResponseHeader>,
    ) -> Result<u64, StorageError> {
        let header =
            header.ok_or_else(|| StorageError::backend(op, "", EtcdError::MissingHeader { op }))?;
        let revision = from_etcd(header.revision());
        self.members.latest.fetch_max(revision, Ordering::Relaxed);
        Ok(revision)
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StorageError> {
        convert_kv(&self.prefix, kv)
    }

    /// Maps an etcd error of `op` on `key`; `requested` is the revision the call asked for.
    async fn error(
        &self,
        op: &'static str,
        key: &str,
        requested: u64,
        err: etcd_client::Error,
    ) -> StorageError {
        let message = err.to_string();
        if message.contains("required revision has been compacted") {
            match self.compacted_revision().await {
                Ok(compacted) => StorageError::Compacted {
                    requested,
                    compacted,
                },
                Err(err) => err,
            }
        } else if message.contains("required revision is a future revision") {
            match self.current_revision().await {
                Ok(current) => StorageError::FutureRevision { requested, current },
                Err(err) => err,
            }
        } else {
            StorageError::backend(op, key, err)
        }
    }

    /// The compaction revision, found by bisection: the oldest revision a read still works at.
    /// Only error paths need it, and etcd does not report it directly.
    async fn compacted_revision(&self) -> Result<u64, StorageError> {
        let (mut low, mut high) = (0, self.current_revision().await?);
        while low < high {
            let mid = low + (high - low) / 2;
            let read = self
                .members
                .call(true, |mut c| async move {
                    c.get(vec![0], Some(read_at(mid).with_count_only())).await
                })
                .await;
            match read {
                Ok(_) => high = mid,
                Err(err) if err.to_string().contains("has been compacted") => low = mid + 1,
                Err(err) => return Err(StorageError::backend("find compaction", "", err)),
            }
        }
        Ok(low)
    }

    /// Runs a transaction `compare ? then : get(key)`; the else branch tells a missing key from
    /// a conflicting one.
    async fn txn(
        &self,
        op: &'static str,
        key: &str,
        compare: Compare,
        then: TxnOp,
    ) -> Result<TxnResponse, StorageError> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([compare])
            .and_then([then])
            .or_else([TxnOp::get(full, None)]);
        self.members
            .call(false, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| write_failed(op, key, e))
    }

    /// The error of a failed conditional update or delete, from the else branch's read.
    fn precondition_failed(
        &self,
        op: &'static str,
        key: &str,
        expected: Option<u64>,
        response: &TxnResponse,
    ) -> StorageError {
        let current = match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.mod_revision()),
            _ => return StorageError::backend(op, key, EtcdError::UnexpectedTxnResponse { op }),
        };
        match (current, expected) {
            (Some(actual), Some(expected)) => StorageError::Conflict {
                key: key.to_owned(),
                expected,
                actual: from_etcd(actual),
            },
            _ => StorageError::NotFound {
                key: key.to_owned(),
            },
        }
    }
}

#[async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        let full = self.full_key(key);
        let response = self
            .members
            .call(true, |mut c| {
                let full = full.clone();
                async move { c.get(full, None).await }
            })
            .await
            .map_err(|e| StorageError::backend("get", key, e))?;
        self.revision("get", response.header())?;
        response
            .kvs()
            .first()
            .map(|kv| self.key_value(kv))
            .transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        at_revision: Option<u64>,
        limit: usize,
        continue_from_key: Option<&str>,
    ) -> Result<ListResult, StorageError> {
        // Read in pages pinned to the first page's revision: one snapshot, and no response near
        // gRPC's 4 MiB message cap (10,000 pods are ~6.5 MB in one range response).
        let mut kvs = Vec::new();
        let mut pinned = at_revision;
        let mut after = continue_from_key.map(str::to_owned);
        loop {
            let want = match limit {
                0 => LIST_PAGE,
                _ => (limit - kvs.len()).min(LIST_PAGE),
            };
            let (start, end) = key_range(&self.prefix, prefix, after.as_deref());
            let mut options = GetOptions::new().with_range(end).with_limit(want as i64);
            if let Some(revision) = pinned {
                options = options.with_revision(to_etcd(revision));
            }
            let result: Result<GetResponse, _> = self
                .members
                .call(true, |mut c| {
                    let (start, options) = (start.clone(), options.clone());
                    async move { c.get(start, Some(options)).await }
                })
                .await;
            let response = match result {
                Ok(response) => response,
                Err(err) => {
                    let requested = pinned.unwrap_or(0);
                    return Err(self.error("list", prefix, requested, err).await);
                }
            };
            let revision = *pinned.get_or_insert(self.revision("list", response.header())?);
            let page = response
                .kvs()
                .iter()
                .map(|kv| self.key_value(kv))
                .collect::<Result<Vec<_>, _>>()?;
            let more = response.more();
            after = page.last().map(|kv| kv.key.clone());
            kvs.extend(page);
            let full = limit != 0 && kvs.len() >= limit;
            if !more || full || after.is_none() {
                return Ok(ListResult {
                    kvs,
                    revision,
                    more,
                });
            }
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<u64, StorageError> {
        let full = self.full_key(key);
        let compare = Compare::create_revision(full.clone(), CompareOp::Equal, 0);
        let response = self
            .txn("create", key, compare, TxnOp::put(full, value, None))
            .await?;
        if !response.succeeded() {
            return Err(StorageError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        self.revision("create", response.header())
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<u64>,
    ) -> Result<u64, StorageError> {
        let full = self.full_key(key);
        let compare = exists_at(&full, expected_mod_revision);
        let response = self
            .txn("update", key, compare, TxnOp::put(full, value, None))
            .await?;
        if !response.succeeded() {
            return Err(self.precondition_failed("update", key, expected_mod_revision, &response));
        }
        self.revision("update", response.header())
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<u64>,
    ) -> Result<(u64, KeyValue), StorageError> {
        let full = self.full_key(key);
        let compare = exists_at(&full, expected_mod_revision);
        let then = TxnOp::delete(full, Some(DeleteOptions::new().with_prev_key()));
        let response = self.txn("delete", key, compare, then).await?;
        if !response.succeeded() {
            return Err(self.precondition_failed("delete", key, expected_mod_revision, &response));
        }
        let revision = self.revision("delete", response.header())?;
        let prev = match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(delete)) => delete.prev_kvs().first().cloned(),
            _ => None,
        };
        let prev = prev.ok_or_else(|| {
            StorageError::backend(
                "delete",
                key,
                EtcdError::UnexpectedTxnResponse { op: "delete" },
            )
        })?;
        Ok((revision, self.key_value(&prev)?))
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StorageError> {
        // etcd would still stream from one revision below its compaction point, which the
        // contract counts as compacted; a read at `from_revision` checks it exactly.
        let check = self
            .members
            .call(true, |mut c| async move {
                c.get(vec![0], Some(read_at(from_revision).with_count_only()))
                    .await
            })
            .await;
        if let Err(err) = check {
            match self.error("watch", prefix, from_revision, err).await {
                StorageError::FutureRevision { .. } => {}
                err => return Err(err),
            }
        }
        let (start, end) = key_range(&self.prefix, prefix, None);
        Ok(watch::stream(watch::WatchSpec {
            members: Arc::clone(&self.members),
            store_prefix: self.prefix.clone(),
            start,
            end,
            from_revision,
            closed: self.closed_rx.clone(),
        }))
    }

    async fn compact(&self, revision: u64) -> Result<(), StorageError> {
        let result = self
            .members
            .call(false, |mut c| async move {
                c.compact(to_etcd(revision), None).await
            })
            .await;
        match result {
            Ok(response) => self.revision("compact", response.header()).map(drop),
            Err(err) if matches!(unreachable(&err), Unreachable::Maybe) => {
                Err(write_failed("compact", "", err))
            }
            Err(err) => Err(self.error("compact", "", revision, err).await),
        }
    }

    async fn current_revision(&self) -> Result<u64, StorageError> {
        let response = self
            .members
            .call(true, |mut c| async move {
                c.get(vec![0], Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await
            .map_err(|e| StorageError::backend("current revision", "", e))?;
        self.revision("current revision", response.header())
    }
}

/// The clients of the cluster's members, and which one requests go to.
struct Members {
    endpoints: Vec<String>,
    clients: Vec<Client>,
    current: AtomicUsize,
    /// The latest revision any response showed; watches drain to it when the store closes.
    latest: AtomicU64,
}

impl Members {
    /// Runs `request` against the current member, moving to the next one while members are
    /// unreachable. Requests that are not `idempotent` are retried only if they certainly did
    /// not reach a member.
    async fn call<T, F, Fut>(&self, idempotent: bool, request: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            let index = self.current.load(Ordering::Relaxed);
            let client = self.clients[index % self.clients.len()].clone();
            let err = match tokio::time::timeout(ATTEMPT_TIMEOUT, request(client)).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(err)) => err,
                Err(_) => etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(
                    format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                )),
            };
            let retry = match unreachable(&err) {
                Unreachable::NotSent => true,
                Unreachable::Maybe => idempotent,
                Unreachable::No => return Err(err),
            };
            // The member failed: later requests go to the next one, whether or not this one is
            // retried. Another caller may have moved on already; only move from the failed one.
            let next = (index + 1) % self.clients.len();
            if self
                .current
                .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::warn!(
                    failed = %self.endpoints[index % self.endpoints.len()],
                    next = %self.endpoints[next],
                    error = %err,
                    "etcd member unavailable; failing over"
                );
            }
            if !retry || tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Whether an error means the member could not serve the request.
enum Unreachable {
    /// The request never reached a member (the connection was refused).
    NotSent,
    /// The member or its connection failed; the request may have been applied.
    Maybe,
    /// The member answered: an error of the request itself.
    No,
}

fn unreachable(err: &etcd_client::Error) -> Unreachable {
    let detail = format!("{err:?}");
    if detail.contains("ConnectionRefused") || detail.contains("Connection refused") {
        return Unreachable::NotSent;
    }
    match err {
        etcd_client::Error::TransportError(_) => Unreachable::Maybe,
        etcd_client::Error::GRpcStatus(status)
            if matches!(
                status.code(),
                tonic_code::Unavailable | tonic_code::Unknown | tonic_code::DeadlineExceeded
            ) =>
        {
            // etcd refuses before proposing when it has no leader.
            if status.message().contains("no leader") {
                Unreachable::NotSent
            } else {
                Unreachable::Maybe
            }
        }
        _ => Unreachable::No,
    }
}

/// gRPC status codes, as etcd-client's tonic names them.
mod tonic_code {
    pub(super) use tonic::Code::{DeadlineExceeded, Unavailable, Unknown};
}

/// The error of a write (not retried) that failed with `err`.
fn write_failed(op: &'static str, key: &str, err: etcd_client::Error) -> StorageError {
    match unreachable(&err) {
        Unreachable::Maybe => {
            StorageError::backend(op, key, EtcdError::OutcomeUnknown { source: err })
        }
        Unreachable::NotSent | Unreachable::No => StorageError::backend(op, key, err),
    }
}

/// The compare that makes an update or delete conditional.
fn exists_at(full_key: &str, expected_mod_revision: Option<u64>) -> Compare {
    match expected_mod_revision {
        Some(expected) => Compare::mod_revision(full_key, CompareOp::Equal, to_etcd(expected)),
        None => Compare::create_revision(full_key, CompareOp::Greater, 0),
    }
}

/// A range read at a revision of ours.
fn read_at(revision: u64) -> GetOptions {
    GetOptions::new().with_revision(to_etcd(revision))
}

/// The etcd range `[start, end)` of keys starting with `prefix` (after `continue_from_key`),
/// under the store prefix. An `end` of `"\0"` is etcd's "to the last key".
fn key_range(
    store_prefix: &str,
    prefix: &str,
    continue_from_key: Option<&str>,
) -> (Vec<u8>, Vec<u8>) {
    let full_prefix = format!("{store_prefix}{prefix}");
    let mut start = store_prefix.as_bytes().to_vec();
    start.extend(list_start(prefix, continue_from_key));
    if start.is_empty() {
        // etcd has no empty key; "\0" is the smallest one.
        start.push(0);
    }
    let end = prefix_end(full_prefix.as_bytes()).unwrap_or_else(|| vec![0]);
    (start, end)
}

/// Our revision for an etcd revision (etcd starts at 1, the contract at 0).
fn from_etcd(revision: i64) -> u64 {
    u64::try_from(revision - 1).unwrap_or(0)
}

/// The etcd revision for one of ours.
fn to_etcd(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX - 1) + 1
}

/// Converts an etcd key-value, stripping the store prefix. A `create_revision` of 0 (in a
/// delete event) stays 0.
fn convert_kv(store_prefix: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue, StorageError> {
    let key = std::str::from_utf8(kv.key())
        .ok()
        .and_then(|k| k.strip_prefix(store_prefix))
        .ok_or_else(|| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            StorageError::backend("read", key.clone(), EtcdError::ForeignKey { key })
        })?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: from_etcd(kv.create_revision()),
        mod_revision: from_etcd(kv.mod_revision()),
    })
}
