//! Job controller: runs pods until `completions` of them succeed (or, without completions, until
//! one does), at most `parallelism` at a time, and gives up once more than `backoffLimit` have
//! failed; reports active/ready/succeeded/failed and the Complete or Failed condition.
//!
//! With `completionMode: Indexed` every index `0..completions` needs one succeeded pod
//! (`job_index.rs`).
//!
//! Counts come from the Job's pods as listed at each reconcile (finished pods are kept, not
//! deleted, so they stay countable); the pod-tracking finalizers upstream uses for deleted pods
//! are not implemented.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use super::workload::{self, Workload};
use super::{job_index, owner, pods, ControllerError};

/// What the Job's pods say, and what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Pods to keep running (create or delete to reach it).
    pub want_active: i32,
    /// `Some("Complete")` or `Some("Failed")` when the Job is finished.
    pub finished: Option<&'static str>,
}

/// The next step for a Job with these counts (upstream's non-indexed completion rules).
pub fn plan(
    completions: Option<i32>,
    parallelism: i32,
    backoff_limit: i32,
    active: i32,
    succeeded: i32,
    failed: i32,
) -> Plan {
    if failed > backoff_limit {
        return Plan {
            want_active: 0,
            finished: Some("Failed"),
        };
    }
    match completions {
        Some(c) if succeeded >= c => Plan {
            want_active: 0,
            finished: Some("Complete"),
        },
        Some(c) => Plan {
            want_active: parallelism.min(c - succeeded),
            finished: None,
        },
        // Work-queue Jobs: done once one pod succeeded and the rest have exited.
        None if succeeded > 0 => Plan {
            want_active: active.min(parallelism),
            finished: (active == 0).then_some("Complete"),
        },
        None => Plan {
            want_active: parallelism,
            finished: None,
        },
    }
}

fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

struct Ctx {
    client: Client,
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    if finished(&job) || job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let w = Workload::of("job", job.as_ref())?;
    let spec = job.spec.clone().ok_or_else(|| w.missing("spec"))?;
    let sel = spec
        .selector
        .clone()
        .ok_or_else(|| w.missing("spec.selector"))?;
    let query = w.selector_query(&sel)?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &w.ns);
    let owned = w.list_owned(&api, &query, "list pods of").await?;
    let count = |phase: &str| owned.iter().filter(|p| pods::phase(p) == phase).count() as i32;
    let failed = count("Failed");
    let mut active: Vec<&Pod> = owned.iter().filter(|p| pods::is_active(p)).collect();
    // Indexed Jobs count succeeded indexes, not pods (`job_index.rs`).
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    if indexed && spec.completions.is_none() {
        return Err(w.missing("spec.completions (required by completionMode Indexed)"));
    }
    let indexes = |phase: &dyn Fn(&Pod) -> bool| -> BTreeSet<i32> {
        owned
            .iter()
            .filter(|p| phase(p))
            .filter_map(job_index::index_of)
            .filter(|i| spec.completions.is_some_and(|c| *i < c))
            .collect()
    };
    let succeeded_idx = indexes(&|p| pods::phase(p) == "Succeeded");
    let active_idx = indexes(&pods::is_active);
    let succeeded = if indexed {
        succeeded_idx.len() as i32
    } else {
        count("Succeeded")
    };
    let ready = active.iter().filter(|p| pods::is_ready(p)).count() as i32;
    let suspended = spec.suspend.unwrap_or(false);
    let p = plan(
        spec.completions,
        if suspended {
            0
        } else {
            spec.parallelism.unwrap_or(1).max(0)
        },
        spec.backoff_limit.unwrap_or(6),
        active.len() as i32,
        succeeded,
        failed,
    );
    let n_active = active.len() as i32;
    if n_active < p.want_active {
        let pod = workload::pod_from_template(job.as_ref(), &spec.template)
            .ok_or_else(|| w.missing("metadata.uid"))?;
        let new_pods: Vec<Pod> = match spec.completions.filter(|_| indexed) {
            Some(c) => job_index::to_start(c, p.want_active, &active_idx, &succeeded_idx)
                .into_iter()
                .map(|i| job_index::for_index(pod.clone(), &w.name, i))
                .collect(),
            None => (n_active..p.want_active).map(|_| pod.clone()).collect(),
        };
        let pp = PostParams::default();
        let creates = new_pods.iter().map(|pod| api.create(&pp, pod));
        futures::future::try_join_all(creates)
            .await
            .map_err(ControllerError::kube("create pod for", w.object.clone()))?;
    } else if n_active > p.want_active {
        active.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
        for pod in active.iter().take((n_active - p.want_active) as usize) {
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            workload::delete_pod(&api, &w.ns, pod_name).await?;
        }
    }
    let now = Time(Timestamp::now());
    let old = job.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let mut completion_time = old.completion_time.clone();
    if let Some(kind) = p.finished {
        let (reason, message) = match kind {
            "Failed" => (
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ),
            _ => (
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ),
        };
        // Upstream sets the *Target/Met condition first and then the terminal one.
        let interim = if kind == "Failed" {
            "FailureTarget"
        } else {
            "SuccessCriteriaMet"
        };
        for type_ in [interim, kind] {
            conditions.push(JobCondition {
                type_: type_.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_probe_time: Some(now.clone()),
                last_transition_time: Some(now.clone()),
            });
        }
        if kind == "Complete" {
            completion_time = Some(now.clone());
        }
        tracing::info!(job = %w.object, kind, succeeded, failed, "job finished");
    }
    let status = JobStatus {
        active: Some(if p.finished.is_some() { 0 } else { n_active }),
        ready: Some(ready),
        succeeded: Some(succeeded),
        failed: Some(failed),
        start_time: old.start_time.clone().or(Some(now)),
        completion_time,
        conditions: Some(conditions).filter(|c| !c.is_empty()),
        completed_indexes: if indexed {
            Some(job_index::compress(&succeeded_idx))
        } else {
            old.completed_indexes.clone()
        },
        ..old.clone()
    };
    if status != old {
        w.patch_status(&Api::<Job>::namespaced(ctx.client.clone(), &w.ns), &status)
            .await?;
    }
    Ok(Action::await_change())
}

/// The controller future (runs until its watches end); `pods` is the process's shared pod
/// watch ([`super::shared_watch`]).
pub async fn run(client: Client, pods: impl futures::Stream<Item = Arc<Pod>> + Send + 'static) {
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .watches_shared_stream(pods, |pod| owner::controller_ref_of::<Job>(&pod.metadata));
    let ctx = Arc::new(Ctx { client });
    super::drain("job", controller.run(reconcile, super::on_error, ctx)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_rules() {
        // 3 completions, 2 in parallel.
        assert_eq!(
            plan(Some(3), 2, 6, 0, 0, 0),
            Plan {
                want_active: 2,
                finished: None
            }
        );
        assert_eq!(
            plan(Some(3), 2, 6, 1, 2, 0),
            Plan {
                want_active: 1,
                finished: None
            }
        );
        assert_eq!(plan(Some(3), 2, 6, 0, 3, 0).finished, Some("Complete"));
        // Failures up to backoffLimit are retried; one more fails the Job.
        assert_eq!(plan(Some(1), 1, 1, 0, 0, 1).want_active, 1);
        assert_eq!(
            plan(Some(1), 1, 1, 0, 0, 2),
            Plan {
                want_active: 0,
                finished: Some("Failed")
            }
        );
        // Work queue: no new pods after the first success; complete once all exited.
        assert_eq!(
            plan(None, 3, 6, 2, 1, 0),
            Plan {
                want_active: 2,
                finished: None
            }
        );
        assert_eq!(plan(None, 3, 6, 0, 1, 0).finished, Some("Complete"));
    }
}
