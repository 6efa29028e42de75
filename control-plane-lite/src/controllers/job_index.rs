//! Indexed Jobs (`completionMode: Indexed`): every index `0..completions` must have one
//! succeeded pod. Each pod carries its index as the `batch.kubernetes.io/job-completion-index`
//! annotation and label, gets the hostname `<job>-<index>` and `JOB_COMPLETION_INDEX` in its
//! containers' environment (from the annotation, through the downward API), as upstream does.
//! The Job's `status.completedIndexes` lists the finished indexes in upstream's compressed
//! form (`0-2,4`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};

/// Annotation and label with a pod's completion index.
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable with the index.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// The completion index of `pod`, from its annotation.
pub fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INDEX_KEY)?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

/// Indexes to start now: the lowest ones in `0..completions` neither succeeded nor running, as
/// many as `parallelism` leaves room for beside `active` running indexes.
pub fn to_start(
    completions: i32,
    parallelism: i32,
    active: &BTreeSet<i32>,
    succeeded: &BTreeSet<i32>,
) -> Vec<i32> {
    let room = (parallelism - active.len() as i32).max(0) as usize;
    (0..completions)
        .filter(|i| !active.contains(i) && !succeeded.contains(i))
        .take(room)
        .collect()
}

/// `0-2,4,6-7`: runs of consecutive indexes as ranges.
pub fn compress(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// Turns the Job's template pod into the pod for `index`.
pub fn for_index(mut pod: Pod, job: &str, index: i32) -> Pod {
    let value = index.to_string();
    pod.metadata.generate_name = Some(format!("{job}-{index}-"));
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(INDEX_KEY.into(), value.clone());
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(INDEX_KEY.into(), value);
    if let Some(spec) = pod.spec.as_mut() {
        if spec.hostname.is_none() {
            spec.hostname = Some(format!("{job}-{index}"));
        }
        let env = EnvVar {
            name: INDEX_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{INDEX_KEY}']"),
                }),
                ..EnvVarSource::default()
            }),
        };
        let containers = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten());
        for c in containers {
            let vars = c.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == INDEX_ENV) {
                vars.push(env.clone());
            }
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(v: &[i32]) -> BTreeSet<i32> {
        v.iter().copied().collect()
    }

    #[test]
    fn ranges_compress_like_upstream() {
        assert_eq!(compress(&set(&[])), "");
        assert_eq!(compress(&set(&[0, 1, 2, 4, 6, 7])), "0-2,4,6-7");
        assert_eq!(compress(&set(&[3])), "3");
    }

    #[test]
    fn lowest_missing_indexes_start_within_parallelism() {
        assert_eq!(to_start(5, 2, &set(&[]), &set(&[])), [0, 1]);
        assert_eq!(to_start(5, 2, &set(&[1]), &set(&[0])), [2]);
        assert_eq!(to_start(5, 3, &set(&[]), &set(&[0, 2, 4])), [1, 3]);
        assert!(to_start(3, 2, &set(&[]), &set(&[0, 1, 2])).is_empty());
    }

    #[test]
    fn pods_carry_their_index() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"generateName": "j-"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        let p = for_index(pod, "j", 3);
        assert_eq!(index_of(&p), Some(3));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("j-3-"));
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("j-3"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, INDEX_ENV);
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
    }
}
