//! The files of `configMap`, `secret` and `downwardAPI` volumes: which keys become which files
//! with which modes, as the kubelet lays them out (every key as a file named after it, or only
//! the listed `items` at their `path`; `defaultMode` 0644 unless an item sets `mode`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeSource, KeyToPath, ResourceFieldSelector,
};

use super::atomic::{FileProjection, Payload};
use super::VolumeError;
use crate::pods::env::{field_value, PodFacts};
use crate::pods::resources::{bytes, millicpu};

/// The mode of projected files when neither the volume nor the item sets one.
pub const DEFAULT_MODE: i32 = 0o644;

/// The payload of a ConfigMap or Secret volume from the object's `data` (`None`: the object
/// does not exist and the volume is optional, which gives an empty volume).
pub fn key_payload(
    kind: &'static str,
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, VolumeError> {
    let mode = |m: Option<i32>| m.or(default_mode).unwrap_or(DEFAULT_MODE) as u32;
    let mut out = Payload::new();
    let Some(data) = data else {
        return Ok(out);
    };
    match items {
        None => {
            for (k, v) in data {
                out.insert(
                    k.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: mode(None),
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        out.insert(
                            item.path.clone(),
                            FileProjection {
                                data: v.clone(),
                                mode: mode(item.mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(VolumeError::MissingKey {
                            kind,
                            name: name.into(),
                            key: item.key.clone(),
                        })
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The payload of a downwardAPI volume for the pod in `facts`.
pub fn downward_payload(
    facts: PodFacts<'_>,
    source: &DownwardAPIVolumeSource,
    volume: &str,
) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    let m = &facts.pod.metadata;
    for item in source.items.iter().flatten() {
        let text = if let Some(f) = &item.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => map_lines(m.labels.as_ref()),
                "metadata.annotations" => map_lines(m.annotations.as_ref()),
                path => field_value(facts, path).map_err(|e| VolumeError::Downward {
                    volume: volume.into(),
                    message: e.to_string(),
                })?,
            }
        } else if let Some(r) = &item.resource_field_ref {
            resource_value(facts, r).map_err(|message| VolumeError::Downward {
                volume: volume.into(),
                message,
            })?
        } else {
            continue;
        };
        let mode = item.mode.or(source.default_mode).unwrap_or(DEFAULT_MODE) as u32;
        out.insert(
            item.path.clone(),
            FileProjection {
                data: text.into_bytes(),
                mode,
            },
        );
    }
    Ok(out)
}

/// `key="value"` lines, sorted by key, the kubelet's format for whole label/annotation maps.
fn map_lines(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// A container's CPU or memory request or limit, divided by `divisor` and rounded up. An unset
/// limit is the node's capacity, as the kubelet reports it.
fn resource_value(facts: PodFacts<'_>, r: &ResourceFieldSelector) -> Result<String, String> {
    let spec = facts.pod.spec.as_ref();
    let containers: Vec<&Container> = spec
        .map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .into_iter()
        .flatten()
        .collect();
    let c = match r.container_name.as_deref() {
        Some(name) => containers.iter().find(|c| c.name == name),
        None => containers.first(),
    }
    .ok_or_else(|| format!("resourceFieldRef: no container {:?}", r.container_name))?;
    let (section, res) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resourceFieldRef {:?}", r.resource))?;
    let resources = c.resources.as_ref();
    let map = match section {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resourceFieldRef {:?}", r.resource)),
    };
    // A missing request defaults to the limit, as the apiserver defaults it.
    let limits = resources.and_then(|r| r.limits.as_ref());
    let set = map
        .and_then(|m| m.get(res))
        .or_else(|| limits.and_then(|m| m.get(res)))
        .map(|q| q.0.clone());
    let divisor = r.divisor.as_ref().map(|q| q.0.as_str()).unwrap_or("1");
    let bad = |e: crate::pods::resources::InvalidQuantity| e.to_string();
    let (value, unit) = match res {
        "cpu" => {
            let v = match set {
                Some(q) => millicpu(&q).map_err(bad)?,
                None if section == "limits" => node_cpus() * 1000,
                None => 0,
            };
            (v, millicpu(divisor).map_err(bad)?)
        }
        "memory" => {
            let v = match set {
                Some(q) => bytes(&q).map_err(bad)?,
                None if section == "limits" => node_memory(),
                None => 0,
            };
            (v, bytes(divisor).map_err(bad)?)
        }
        _ => return Err(format!("unsupported resourceFieldRef {:?}", r.resource)),
    };
    if unit <= 0 {
        return Err(format!(
            "resourceFieldRef divisor {divisor:?} must be positive"
        ));
    }
    Ok(((value + unit - 1) / unit).to_string())
}

/// CPUs of this node.
fn node_cpus() -> i64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as i64)
}

/// Memory of this node in bytes, from `/proc/meminfo`.
fn node_memory() -> i64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        DownwardAPIVolumeFile, ObjectFieldSelector, Pod, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn data() -> BTreeMap<String, Vec<u8>> {
        [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]
        .into()
    }

    #[test]
    fn all_keys_or_listed_items_with_modes() {
        let all = key_payload("ConfigMap", "cm", Some(&data()), None, None, false).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["a"].mode, 0o644);
        let items = [KeyToPath {
            key: "b".into(),
            path: "dir/bee".into(),
            mode: Some(0o400),
            ..Default::default()
        }];
        let some = key_payload(
            "Secret",
            "s",
            Some(&data()),
            Some(&items),
            Some(0o440),
            false,
        )
        .unwrap();
        assert_eq!(some.keys().collect::<Vec<_>>(), ["dir/bee"]);
        assert_eq!(some["dir/bee"].mode, 0o400);
        assert_eq!(some["dir/bee"].data, b"2");
        let dm = key_payload("Secret", "s", Some(&data()), None, Some(0o440), false).unwrap();
        assert_eq!(dm["a"].mode, 0o440);
    }

    #[test]
    fn missing_keys_and_objects() {
        let items = [KeyToPath {
            key: "zzz".into(),
            path: "z".into(),
            mode: None,
            ..Default::default()
        }];
        let err = key_payload("ConfigMap", "cm", Some(&data()), Some(&items), None, false);
        assert!(
            matches!(err, Err(VolumeError::MissingKey { .. })),
            "{err:?}"
        );
        let opt = key_payload("ConfigMap", "cm", Some(&data()), Some(&items), None, true);
        assert!(opt.unwrap().is_empty());
        assert!(key_payload("ConfigMap", "cm", None, None, None, true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn downward_fields_and_resources() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(
            [
                ("app".to_string(), "w".to_string()),
                ("tier".to_string(), "front".to_string()),
            ]
            .into(),
        );
        pod.spec = Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                resources: Some(ResourceRequirements {
                    limits: Some(
                        [
                            ("cpu".to_string(), Quantity("1500m".into())),
                            ("memory".to_string(), Quantity("64Mi".into())),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        let facts = PodFacts {
            pod: &pod,
            pod_ip: "",
            host_ip: "",
        };
        let field = |path: &str, field: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let res = |path: &str, r: &str, divisor: Option<&str>| DownwardAPIVolumeFile {
            path: path.into(),
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some("app".into()),
                resource: r.into(),
                divisor: divisor.map(|d| Quantity(d.into())),
            }),
            ..Default::default()
        };
        let source = DownwardAPIVolumeSource {
            default_mode: Some(0o600),
            items: Some(vec![
                field("name", "metadata.name"),
                field("labels", "metadata.labels"),
                res("cpu", "limits.cpu", None),
                res("cpu_m", "limits.cpu", Some("1m")),
                res("mem_mi", "limits.memory", Some("1Mi")),
                res("req_cpu", "requests.cpu", None),
            ]),
            ..Default::default()
        };
        let p = downward_payload(facts, &source, "info").unwrap();
        let text = |k: &str| String::from_utf8(p[k].data.clone()).unwrap();
        assert_eq!(text("name"), "web");
        assert_eq!(text("labels"), "app=\"w\"\ntier=\"front\"\n");
        assert_eq!(text("cpu"), "2");
        assert_eq!(text("cpu_m"), "1500");
        assert_eq!(text("mem_mi"), "64");
        assert_eq!(text("req_cpu"), "2");
        assert_eq!(p["name"].mode, 0o600);
        let bad = DownwardAPIVolumeSource {
            items: Some(vec![field("x", "spec.bogus")]),
            ..Default::default()
        };
        assert!(downward_payload(facts, &bad, "info").is_err());
    }
}
