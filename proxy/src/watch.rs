//! The generic watch → cache → debounce → callback helper (kube-rs style), meant to be shared by
//! every component that reconciles on two kinds of objects (the proxy: Services and
//! EndpointSlices).
//!
//! [`watch_pair`] runs one kube-rs [`watcher()`] + [`reflector()`] per kind, so each kind has a
//! read-only [`Store`] that always mirrors the apiserver. Events are mapped to keys (for the
//! proxy, the owning Service of an object) and coalesced: the handler runs once per burst,
//! [`WatchConfig::debounce`] after the burst's first event and never sooner than
//! [`WatchConfig::min_interval`] after the previous run. It is told either [`Change::Resync`]
//! (after the first complete list of both kinds, and after any relist, when deletions may have
//! been missed) or [`Change::Keys`] with exactly the keys touched since its last successful run.
//!
//! Nothing here panics on API errors: watch errors are logged and the watcher retries with
//! kube-rs's default backoff; a failing handler is retried with exponential backoff, with the
//! changes that arrived meanwhile merged in.
//!
//! The handler runs on the loop's task (it may block, e.g. running `iptables-restore`); events
//! arriving meanwhile wait in the watch streams and are coalesced into the next run.

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Timing of the loop; [`Default`] suits a proxy (100 ms debounce, 1 s minimum interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// How long after the first event of a burst the handler runs, collecting the rest.
    pub debounce: Duration,
    /// The least time between the end of one handler run and the start of the next.
    pub min_interval: Duration,
    /// The first delay before retrying a failed handler run; doubled on each further failure.
    pub retry_initial: Duration,
    /// The longest delay between handler retries.
    pub retry_max: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            min_interval: Duration::from_secs(1),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// What changed since the handler's last successful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<K: Ord> {
    /// Anything may have changed (first list, relist): reconcile everything.
    Resync,
    /// Only objects with these keys were added, updated or deleted.
    Keys(BTreeSet<K>),
}

impl<K: Ord> Change<K> {
    /// Folds `other` into `self`; a resync absorbs any key set.
    pub fn merge(&mut self, other: Change<K>) {
        match (&mut *self, other) {
            (Change::Resync, _) => {}
            (_, Change::Resync) => *self = Change::Resync,
            (Change::Keys(mine), Change::Keys(theirs)) => mine.extend(theirs),
        }
    }
}

/// Why [`watch_pair`] stopped other than by cancellation.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A watch stream ended; kube-rs watchers retry forever, so this means a bug upstream.
    #[error("the watch stream of {kind} ended")]
    StreamEnded {
        /// The kind whose stream ended.
        kind: String,
    },
}

/// One event mapped to what the loop needs to know.
enum Seen<K: Ord> {
    /// A complete list arrived: the store is ready and may have lost deletions.
    Listed,
    /// An object changed.
    Changed(Change<K>),
    /// Nothing to act on (list in progress, object without key, or an error already logged).
    Nothing,
}

/// The key each object of one kind was last reported under, so an object whose key changes
/// (an EndpointSlice relabelled to another Service) reports its old key too.
struct Keys<K> {
    kind: String,
    last: HashMap<(Option<String>, String), K>,
}

impl<K: Ord + Clone> Keys<K> {
    fn new(kind: String) -> Self {
        Self {
            kind,
            last: HashMap::new(),
        }
    }

    fn id<T: reflector::Lookup>(obj: &T) -> (Option<String>, String) {
        (
            obj.namespace().map(|n| n.into_owned()),
            obj.name().map(|n| n.into_owned()).unwrap_or_default(),
        )
    }

    /// Maps one stream item to what the loop needs to know.
    fn observe<T: reflector::Lookup>(
        &mut self,
        item: Option<Result<watcher::Event<T>, watcher::Error>>,
        key_of: &impl Fn(&T) -> Option<K>,
    ) -> Result<Seen<K>, WatchError> {
        let event = match item {
            None => {
                return Err(WatchError::StreamEnded {
                    kind: self.kind.clone(),
                })
            }
            Some(Err(e)) => {
                tracing::warn!(kind = %self.kind, error = %e, "watch failed; retrying with backoff");
                return Ok(Seen::Nothing);
            }
            Some(Ok(event)) => event,
        };
        let mut changed = BTreeSet::new();
        match event {
            watcher::Event::Init => self.last.clear(),
            watcher::Event::InitApply(obj) => {
                if let Some(k) = key_of(&obj) {
                    self.last.insert(Self::id(&obj), k);
                }
            }
            watcher::Event::InitDone => return Ok(Seen::Listed),
            watcher::Event::Apply(obj) => {
                let id = Self::id(&obj);
                let previous = match key_of(&obj) {
                    Some(k) => {
                        changed.insert(k.clone());
                        self.last.insert(id, k)
                    }
                    None => self.last.remove(&id),
                };
                changed.extend(previous);
            }
            watcher::Event::Delete(obj) => {
                changed.extend(key_of(&obj));
                changed.extend(self.last.remove(&Self::id(&obj)));
            }
        }
        Ok(if changed.is_empty() {
            Seen::Nothing
        } else {
            Seen::Changed(Change::Keys(changed))
        })
    }
}

/// Watches `first` and `second` (each kind in every namespace `Api` covers) into stores, and
/// calls `handle(first_store, second_store, change)` as described in the [module docs](self)
/// until `cancel` fires.
///
/// `key_first` and `key_second` map an object to the key its changes are reported under
/// (`None`: ignore the object's events; it stays in the store). When an object's key changes,
/// both the old and the new key are reported.
pub async fn watch_pair<A, B, K, E, F>(
    first: Api<A>,
    second: Api<B>,
    key_first: impl Fn(&A) -> Option<K>,
    key_second: impl Fn(&B) -> Option<K>,
    cfg: WatchConfig,
    cancel: CancellationToken,
    handle: F,
) -> Result<(), WatchError>
where
    A: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    A::DynamicType: Eq + Hash + Clone + Default,
    B: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    B::DynamicType: Eq + Hash + Clone + Default,
    K: Ord + Clone,
    E: std::error::Error,
    F: FnMut(&Store<A>, &Store<B>, &Change<K>) -> Result<(), E>,
{
    let (store_a, writer_a) = reflector::store();
    let (store_b, writer_b) = reflector::store();
    let stream_a = reflector(
        writer_a,
        watcher(first, watcher::Config::default()).default_backoff(),
    );
    let stream_b = reflector(
        writer_b,
        watcher(second, watcher::Config::default()).default_backoff(),
    );
    let kinds = (
        A::kind(&Default::default()).into_owned(),
        B::kind(&Default::default()).into_owned(),
    );
    run_streams(
        kinds,
        (stream_a, stream_b),
        (key_first, key_second),
        (store_a, store_b),
        cfg,
        cancel,
        handle,
    )
    .await
}

/// The loop behind [`watch_pair`], on any two event streams whose stores are `stores`
/// (separate so it can be driven by hand-made streams).
async fn run_streams<A, B, K, E, F, SA, SB, KA, KB>(
    kinds: (String, String),
    streams: (SA, SB),
    keys: (KA, KB),
    stores: (Store<A>, Store<B>),
    cfg: WatchConfig,
    cancel: CancellationToken,
    mut handle: F,
) -> Result<(), WatchError>
where
    A: reflector::Lookup + Clone + 'static,
    A::DynamicType: Eq + Hash + Clone,
    B: reflector::Lookup + Clone + 'static,
    B::DynamicType: Eq + Hash + Clone,
    K: Ord + Clone,
    E: std::error::Error,
    F: FnMut(&Store<A>, &Store<B>, &Change<K>) -> Result<(), E>,
    SA: Stream<Item = Result<watcher::Event<A>, watcher::Error>>,
    SB: Stream<Item = Result<watcher::Event<B>, watcher::Error>>,
    KA: Fn(&A) -> Option<K>,
    KB: Fn(&B) -> Option<K>,
{
    let (stream_a, stream_b) = streams;
    let (store_a, store_b) = stores;
    futures::pin_mut!(stream_a, stream_b);
    let (mut ready_a, mut ready_b) = (false, false);
    let (mut keys_a, mut keys_b) = (Keys::new(kinds.0), Keys::new(kinds.1));
    // The changes not yet handled successfully, and when the first of them arrived.
    let mut pending: Option<(Change<K>, Instant)> = None;
    let mut not_before = Instant::now();
    let mut retry = cfg.retry_initial;
    loop {
        let fire_at = pending
            .as_ref()
            .filter(|_| ready_a && ready_b)
            .map(|(_, first)| (*first + cfg.debounce).max(not_before));
        // Biased: cancellation first, then a due run (so a flood of events cannot postpone it
        // forever), then the streams.
        let seen = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(fire_at.unwrap_or_else(Instant::now)), if fire_at.is_some() => {
                let (change, since) = pending.take().expect("fire_at implies pending");
                match handle(&store_a, &store_b, &change) {
                    Ok(()) => {
                        retry = cfg.retry_initial;
                        not_before = Instant::now() + cfg.min_interval;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?retry, "reconcile failed; retrying");
                        not_before = Instant::now() + retry;
                        retry = (retry * 2).min(cfg.retry_max);
                        pending = Some((change, since));
                    }
                }
                continue;
            }
            item = stream_a.next() => keys_a.observe(item, &keys.0)?.with_ready(&mut ready_a),
            item = stream_b.next() => keys_b.observe(item, &keys.1)?.with_ready(&mut ready_b),
        };
        if let Some(change) = seen {
            match &mut pending {
                Some((c, _)) => c.merge(change),
                None => pending = Some((change, Instant::now())),
            }
        }
    }
}

impl<K: Ord> Seen<K> {
    /// The change this event adds, marking the kind ready on a complete list.
    fn with_ready(self, ready: &mut bool) -> Option<Change<K>> {
        match self {
            Seen::Listed => {
                *ready = true;
                Some(Change::Resync)
            }
            Seen::Changed(c) => Some(c),
            Seen::Nothing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::task::JoinHandle;

    fn keys(k: &[&str]) -> Change<String> {
        Change::Keys(k.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn changes_merge_and_resync_absorbs_keys() {
        let mut c = keys(&["a"]);
        c.merge(keys(&["b", "a"]));
        assert_eq!(c, keys(&["a", "b"]));
        c.merge(Change::Resync);
        assert_eq!(c, Change::Resync);
        c.merge(keys(&["c"]));
        assert_eq!(c, Change::Resync);
    }

    type Item = Result<watcher::Event<ConfigMap>, watcher::Error>;

    /// One handler run: when (since start), what it was told, and the store sizes it saw.
    type Run = (Duration, Change<String>, usize, usize);

    /// The loop on two hand-fed event streams (both of ConfigMaps, keyed by name).
    struct Harness {
        a: mpsc::UnboundedSender<Item>,
        b: mpsc::UnboundedSender<Item>,
        runs: Arc<Mutex<Vec<Run>>>,
        fail_next: Arc<AtomicUsize>,
        cancel: CancellationToken,
        task: JoinHandle<Result<(), WatchError>>,
    }

    const CFG: WatchConfig = WatchConfig {
        debounce: Duration::from_millis(100),
        min_interval: Duration::from_secs(1),
        retry_initial: Duration::from_millis(500),
        retry_max: Duration::from_secs(2),
    };

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    impl Harness {
        fn start() -> Self {
            let (store_a, writer_a) = reflector::store::<ConfigMap>();
            let (store_b, writer_b) = reflector::store::<ConfigMap>();
            let (a, rx_a) = mpsc::unbounded();
            let (b, rx_b) = mpsc::unbounded();
            let runs = Arc::new(Mutex::new(Vec::new()));
            let fail_next = Arc::new(AtomicUsize::new(0));
            let cancel = CancellationToken::new();
            let start = Instant::now();
            let key = |c: &ConfigMap| {
                let owner = c.metadata.labels.as_ref().and_then(|l| l.get("owner"));
                owner.or(c.metadata.name.as_ref()).cloned()
            };
            let (r, f) = (runs.clone(), fail_next.clone());
            let task = tokio::spawn(run_streams(
                ("A".into(), "B".into()),
                (reflector(writer_a, rx_a), reflector(writer_b, rx_b)),
                (key, key),
                (store_a, store_b),
                CFG,
                cancel.clone(),
                move |a: &Store<ConfigMap>, b: &Store<ConfigMap>, change: &Change<String>| {
                    if f.load(Ordering::SeqCst) > 0 {
                        f.fetch_sub(1, Ordering::SeqCst);
                        return Err(std::io::Error::other("backend refused"));
                    }
                    let run = (
                        start.elapsed(),
                        change.clone(),
                        a.state().len(),
                        b.state().len(),
                    );
                    r.lock().unwrap().push(run);
                    Ok(())
                },
            ));
            Self {
                a,
                b,
                runs,
                fail_next,
                cancel,
                task,
            }
        }

        fn list(tx: &mpsc::UnboundedSender<Item>, names: &[&str]) {
            tx.unbounded_send(Ok(watcher::Event::Init)).unwrap();
            for n in names {
                tx.unbounded_send(Ok(watcher::Event::InitApply(cm(n))))
                    .unwrap();
            }
            tx.unbounded_send(Ok(watcher::Event::InitDone)).unwrap();
        }

        fn runs(&self) -> Vec<Run> {
            self.runs.lock().unwrap().clone()
        }
    }

    async fn sleep_ms(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_both_lists_then_coalesces_bursts_no_faster_than_min_interval() {
        let h = Harness::start();
        Harness::list(&h.a, &["a1"]);
        sleep_ms(500).await;
        assert!(h.runs().is_empty(), "ran before B was listed");

        Harness::list(&h.b, &[]);
        sleep_ms(300).await;
        let runs = h.runs();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!((&runs[0].1, runs[0].2, runs[0].3), (&Change::Resync, 1, 0));
        assert!(runs[0].0 < Duration::from_millis(600), "{runs:?}");

        // t = 0.8 s: a burst; the last run was at 0.5 s, so the next may start at 1.5 s.
        h.a.unbounded_send(Ok(watcher::Event::Apply(cm("a2"))))
            .unwrap();
        h.b.unbounded_send(Ok(watcher::Event::Apply(cm("b1"))))
            .unwrap();
        sleep_ms(500).await;
        assert_eq!(h.runs().len(), 1, "ran before min_interval");
        h.a.unbounded_send(Ok(watcher::Event::Delete(cm("a1"))))
            .unwrap();
        sleep_ms(500).await;
        let runs = h.runs();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[1].1, keys(&["a1", "a2", "b1"]));
        assert_eq!((runs[1].2, runs[1].3), (1, 1));
        assert!(
            runs[1].0 >= Duration::from_millis(1500) && runs[1].0 < Duration::from_millis(1600),
            "{runs:?}"
        );

        // Quiet: no further runs.
        sleep_ms(5000).await;
        assert_eq!(h.runs().len(), 2);
        h.cancel.cancel();
        assert!(h.task.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_runs_are_retried_with_backoff_and_relists_resync() {
        let h = Harness::start();
        h.fail_next.store(2, Ordering::SeqCst);
        Harness::list(&h.a, &["a1"]);
        Harness::list(&h.b, &["b1"]);
        // Runs (and fails) after the 0.1 s debounce, is retried 0.5 s later (fails), then
        // 1 s later, at 1.6 s (succeeds).
        sleep_ms(1500).await;
        assert!(h.runs().is_empty());
        h.a.unbounded_send(Ok(watcher::Event::Apply(cm("a2"))))
            .unwrap();
        sleep_ms(200).await;
        let runs = h.runs();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(
            runs[0].1,
            Change::Resync,
            "keys merge into the pending resync"
        );
        assert!(
            runs[0].0 >= Duration::from_millis(1600) && runs[0].0 < Duration::from_millis(1700),
            "{runs:?}"
        );

        // A watch error is logged and changes nothing; a relist is a resync.
        h.b.unbounded_send(Err(watcher::Error::NoResourceVersion))
            .unwrap();
        sleep_ms(2000).await;
        assert_eq!(h.runs().len(), 1);
        Harness::list(&h.b, &[]);
        sleep_ms(200).await;
        let runs = h.runs();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!((&runs[1].1, runs[1].2, runs[1].3), (&Change::Resync, 2, 0));

        // An object whose key changes reports both keys; its deletion the last one.
        let mut moved = cm("s1");
        moved.metadata.labels = Some([("owner".to_string(), "x".to_string())].into());
        h.a.unbounded_send(Ok(watcher::Event::Apply(moved.clone())))
            .unwrap();
        sleep_ms(1200).await;
        moved.metadata.labels = Some([("owner".to_string(), "y".to_string())].into());
        h.a.unbounded_send(Ok(watcher::Event::Apply(moved.clone())))
            .unwrap();
        sleep_ms(1200).await;
        h.a.unbounded_send(Ok(watcher::Event::Delete(moved)))
            .unwrap();
        sleep_ms(1200).await;
        let runs: Vec<_> = h.runs().into_iter().skip(2).map(|r| r.1).collect();
        assert_eq!(runs, vec![keys(&["x"]), keys(&["x", "y"]), keys(&["y"])]);

        // A stream that ends stops the loop with an error naming the kind.
        drop(h.a);
        let err = h.task.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, WatchError::StreamEnded { kind } if kind == "A"),
            "{err}"
        );
    }
}
