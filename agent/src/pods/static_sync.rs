//! The pod manager's side of static pods: each check re-reads the manifest directory, starts
//! workers for new manifests, tears down those whose manifest is gone or changed (a changed
//! manifest is a new uid), and keeps their mirror pods ([`super::mirror`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::mirror::{delete_mirror, sync_mirror, MirrorSync};
use super::static_pods::ManifestDir;
use super::worker::key;
use super::Manager;

/// Bound of one mirror API call, so a slow apiserver does not hold the manager's loop.
const MIRROR_CALL_LIMIT: Duration = Duration::from_secs(5);

/// The static pods the manager runs.
#[derive(Debug)]
pub(super) struct StaticPods {
    dir: ManifestDir,
    /// The current static pods by uid.
    pods: HashMap<String, Pod>,
    /// Manifest errors already logged (logged once while they persist).
    reported: HashSet<String>,
}

impl StaticPods {
    /// The static pods of manifest directory `dir` on node `node` (none read yet).
    pub(super) fn new(dir: ManifestDir) -> Self {
        Self {
            dir,
            pods: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// Whether `uid` is a static pod's.
    pub(super) fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }
}

impl Manager {
    /// One check of the manifests and mirrors.
    pub(super) async fn sync_static(&mut self, statics: &mut StaticPods) {
        let (read, errors) = statics.dir.read();
        let messages: HashSet<String> = errors.iter().map(ToString::to_string).collect();
        for m in messages.difference(&statics.reported) {
            tracing::warn!("{m}");
        }
        statics.reported = messages;
        let names: HashSet<String> = read.values().map(key).collect();
        let gone: Vec<Pod> = statics
            .pods
            .iter()
            .filter(|(uid, _)| !read.contains_key(*uid))
            .map(|(_, p)| p.clone())
            .collect();
        for pod in gone {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            tracing::info!(pod = %key(&pod), "static pod manifest removed or changed");
            statics.pods.remove(&uid);
            self.gone(&uid);
            // A changed manifest keeps its name: the new version's mirror replaces this one.
            if !names.contains(&key(&pod)) {
                let deleted =
                    tokio::time::timeout(MIRROR_CALL_LIMIT, delete_mirror(&self.ctx.client, &pod))
                        .await;
                match deleted {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("{e}"),
                    Err(_) => tracing::warn!(pod = %key(&pod), "deleting the mirror pod timed out"),
                }
            }
        }
        for (uid, pod) in read {
            let pod = match statics.pods.get(&uid) {
                Some(current) => current.clone(),
                None => {
                    tracing::info!(pod = %key(&pod), %uid, "static pod manifest read");
                    statics.pods.insert(uid, pod.clone());
                    self.apply(pod.clone());
                    pod
                }
            };
            let synced = tokio::time::timeout(
                MIRROR_CALL_LIMIT,
                sync_mirror(&self.ctx.client, &self.ctx.config.node_name, &pod),
            )
            .await;
            match synced {
                Ok(Ok(MirrorSync::Unchanged)) => {}
                // A fresh mirror has no status: hand the worker its pod again so it writes.
                Ok(Ok(MirrorSync::Created)) => self.apply(pod.clone()),
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(_) => tracing::warn!(pod = %key(&pod), "syncing the mirror pod timed out"),
            }
        }
    }
}
