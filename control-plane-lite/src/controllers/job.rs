//! Job controller: runs pods until `completions` of them succeed (or, without completions, until
//! one does), at most `parallelism` at a time, and gives up once more than `backoffLimit` have
//! failed; reports active/ready/succeeded/failed and the Complete or Failed condition.
//!
//! Counts come from the Job's pods as listed at each reconcile (finished pods are kept, not
//! deleted, so they stay countable); the pod-tracking finalizers upstream uses for deleted pods
//! are not implemented.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use serde_json::json;

use super::{owner, pods, selector, ControllerError};

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
    let object = format!("job {}", super::key(job.as_ref()));
    let missing = |field| ControllerError::MissingField {
        object: object.clone(),
        field,
    };
    if finished(&job) || job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = job
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| missing("metadata.namespace"))?;
    let name = job
        .metadata
        .name
        .clone()
        .ok_or_else(|| missing("metadata.name"))?;
    let uid = job
        .metadata
        .uid
        .clone()
        .ok_or_else(|| missing("metadata.uid"))?;
    let spec = job.spec.clone().ok_or_else(|| missing("spec"))?;
    let sel = spec
        .selector
        .clone()
        .ok_or_else(|| missing("spec.selector"))?;
    let query = selector::to_query(&sel)
        .and_then(|q| {
            if q.is_empty() {
                Err("empty selector".into())
            } else {
                Ok(q)
            }
        })
        .map_err(|reason| ControllerError::InvalidSelector {
            object: object.clone(),
            reason,
        })?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<Pod> = api
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(ControllerError::kube("list pods of", object.clone()))?
        .items
        .into_iter()
        .filter(|p| owner::is_controlled_by(&p.metadata, &uid))
        .collect();
    let count = |phase: &str| owned.iter().filter(|p| pods::phase(p) == phase).count() as i32;
    let (succeeded, failed) = (count("Succeeded"), count("Failed"));
    let mut active: Vec<&Pod> = owned.iter().filter(|p| pods::is_active(p)).collect();
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
        let template = spec.template.clone();
        let tmeta = template.metadata.clone().unwrap_or_default();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(ns.clone()),
                labels: tmeta.labels,
                annotations: tmeta.annotations,
                owner_references: owner::controller_ref(job.as_ref()).map(|r| vec![r]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let pp = PostParams::default();
        let creates = (n_active..p.want_active).map(|_| api.create(&pp, &pod));
        futures::future::try_join_all(creates)
            .await
            .map_err(ControllerError::kube("create pod for", object.clone()))?;
    } else if n_active > p.want_active {
        active.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
        for pod in active.iter().take((n_active - p.want_active) as usize) {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            match api.delete(&pod_name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if super::is_not_found(&e) => {}
                Err(e) => {
                    return Err(ControllerError::kube(
                        "delete pod",
                        format!("{ns}/{pod_name}"),
                    )(e))
                }
            }
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
        tracing::info!(job = %object, kind, succeeded, failed, "job finished");
    }
    let status = JobStatus {
        active: Some(if p.finished.is_some() { 0 } else { n_active }),
        ready: Some(ready),
        succeeded: Some(succeeded),
        failed: Some(failed),
        start_time: old.start_time.clone().or(Some(now)),
        completion_time,
        conditions: Some(conditions).filter(|c| !c.is_empty()),
        ..old.clone()
    };
    if status != old {
        Api::<Job>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map_err(ControllerError::kube("update status of", object))?;
    }
    Ok(Action::await_change())
}

/// The controller future (runs until its watches end).
pub async fn run(client: Client) {
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            |pod| owner::controller_ref_of::<Job>(&pod.metadata),
        );
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
