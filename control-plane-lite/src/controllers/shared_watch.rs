//! One watch of a kind, decoded once and handed to several controllers.
//!
//! Five controllers react to pod changes (ReplicaSet, DaemonSet, Job, StatefulSet, endpoints).
//! With a watch each, every pod write reached the process five times and was decoded five
//! times: while 10,000 pods were created and bound that was a fifth of the server's CPU. Here
//! one kube-rs watcher feeds every subscriber the same `Arc` of each touched object (applied,
//! listed or deleted), which `Controller::watches_shared_stream` maps to reconcile requests, as
//! client-go's shared informers do. Subscribers get bounded buffers: one that falls behind
//! slows the watch down (the apiserver holds the rest) instead of growing memory.

use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// Objects buffered per subscriber before the watch waits for it.
const BUFFER: usize = 1024;

/// A watch of `K` with its subscribers; [`SharedWatch::run`] drives it.
pub struct SharedWatch<K> {
    api: Api<K>,
    subscribers: Vec<mpsc::Sender<Arc<K>>>,
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// A watch of every object `api` reaches; nothing is watched until [`Self::run`].
    pub fn new(api: Api<K>) -> Self {
        Self {
            api,
            subscribers: Vec::new(),
        }
    }

    /// A stream of every object the watch touches from its first list on. Subscribe before
    /// [`Self::run`]: the subscriber list is fixed once it runs.
    pub fn subscribe(&mut self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::channel(BUFFER);
        self.subscribers.push(tx);
        receiver_stream(rx)
    }

    /// Watches (relisting with backoff after errors) until every subscriber is gone.
    pub async fn run(self) {
        let objects = watcher(self.api, watcher::Config::default())
            .default_backoff()
            .touched_objects();
        fan_out(objects, self.subscribers).await;
    }
}

/// The objects `rx` receives, as a stream.
fn receiver_stream<K: Send + Sync + 'static>(
    rx: mpsc::Receiver<Arc<K>>,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) })
}

/// Sends each object of `objects` to every subscriber, in order; errors are logged and
/// skipped. Ends with the stream or once no subscriber is left.
async fn fan_out<K, E>(
    objects: impl Stream<Item = Result<K, E>>,
    mut subscribers: Vec<mpsc::Sender<Arc<K>>>,
) where
    K: Resource<DynamicType = ()>,
    E: std::fmt::Display,
{
    let kind = K::kind(&()).into_owned();
    futures::pin_mut!(objects);
    while let Some(object) = objects.next().await {
        let object = match object {
            Ok(object) => Arc::new(object),
            Err(err) => {
                tracing::debug!(%kind, error = %err, "shared watch failed; retrying");
                continue;
            }
        };
        let mut live = Vec::with_capacity(subscribers.len());
        for subscriber in subscribers {
            if subscriber.send(Arc::clone(&object)).await.is_ok() {
                live.push(subscriber);
            }
        }
        subscribers = live;
        if subscribers.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    async fn drain(rx: mpsc::Receiver<Arc<Pod>>) -> Vec<Arc<Pod>> {
        receiver_stream(rx).collect().await
    }

    #[tokio::test]
    async fn every_subscriber_gets_the_same_objects_in_order_and_errors_are_skipped() {
        let (tx1, rx1) = mpsc::channel(4);
        let (tx2, rx2) = mpsc::channel(4);
        let events = futures::stream::iter(vec![Ok(pod("a")), Err("watch broke"), Ok(pod("b"))]);
        fan_out(events, vec![tx1, tx2]).await;
        let (one, two) = (drain(rx1).await, drain(rx2).await);
        let names: Vec<_> = one
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(two.len(), 2);
        // Decoded once: both subscribers hold the same allocation.
        assert!(one.iter().zip(&two).all(|(x, y)| Arc::ptr_eq(x, y)));
    }

    #[tokio::test]
    async fn a_gone_subscriber_neither_blocks_the_others_nor_keeps_the_watch_alive() {
        let (tx1, rx1) = mpsc::channel(1);
        let (tx2, rx2) = mpsc::channel(4);
        drop(rx1);
        let events = futures::stream::iter(vec![Ok::<_, &str>(pod("a")), Ok(pod("b"))]);
        fan_out(events, vec![tx1, tx2]).await;
        assert_eq!(drain(rx2).await.len(), 2);

        // With nobody left, the fan-out stops without reading the (endless) watch further.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let endless = futures::stream::repeat_with(|| Ok::<_, &str>(pod("x")));
        fan_out(endless, vec![tx]).await;
    }
}
