//! The resources the scheduler accounts for (CPU, memory, pod slots): parsing Kubernetes
//! quantities and summing a pod's requests the way the kubelet admits it.

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// CPU request assumed for a container without one when *scoring* (upstream's non-zero default),
/// so best-effort pods still spread instead of piling onto one node.
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory request assumed for a container without one when scoring (200 MiB, upstream's value).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// An amount of each resource the scheduler tracks; used for allocatable, requests and sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Pod slots (only meaningful for allocatable and per-node sums).
    pub pods: i64,
}

impl Resources {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.pods += other.pods;
    }

    /// Subtracts `other` from `self`.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.pods -= other.pods;
    }

    /// Reads cpu/memory/pods out of a resource list (node allocatable or container requests).
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        let Some(list) = list else { return r };
        if let Some(q) = list.get("cpu") {
            r.milli_cpu = parse_milli(&q.0).unwrap_or(0);
        }
        if let Some(q) = list.get("memory") {
            r.memory = parse_milli(&q.0).map(|m| ceil_div(m, 1000)).unwrap_or(0);
        }
        if let Some(q) = list.get("pods") {
            r.pods = parse_milli(&q.0).map(|m| m / 1000).unwrap_or(0);
        }
        r
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1).div_euclid(b)
}

/// Parses a Kubernetes quantity (`100m`, `1.5`, `2Gi`, `1e3`) into thousandths of its unit,
/// rounding up like the apiserver does for sub-milli amounts; `None` if it is malformed.
pub fn parse_milli(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let milli = value * factor * 1000.0;
    // Round up, but let float noise (0.1 * 1000 = 100.00000000000001) stay at the integer.
    let rounded = milli.round();
    Some(if (milli - rounded).abs() < 1e-6 {
        rounded as i64
    } else {
        milli.ceil() as i64
    })
}

/// A container's requests; a resource with only a limit requests its limit (API defaulting).
fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    let mut req = Resources::from_list(res.and_then(|r| r.requests.as_ref()));
    let limits = Resources::from_list(res.and_then(|r| r.limits.as_ref()));
    let has = |name: &str| {
        res.and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key(name))
    };
    if !has("cpu") {
        req.milli_cpu = limits.milli_cpu;
    }
    if !has("memory") {
        req.memory = limits.memory;
    }
    req
}

/// What a pod takes from a node: the sum of its containers or the largest init container,
/// whichever is more, plus its overhead; one pod slot. With `non_zero`, containers that
/// request nothing count as [`DEFAULT_MILLI_CPU`]/[`DEFAULT_MEMORY`] (for scoring only).
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let mut total = Resources {
        pods: 1,
        ..Default::default()
    };
    let Some(spec) = pod.spec.as_ref() else {
        return total;
    };
    let fix = |mut r: Resources| {
        if non_zero {
            if r.milli_cpu == 0 {
                r.milli_cpu = DEFAULT_MILLI_CPU;
            }
            if r.memory == 0 {
                r.memory = DEFAULT_MEMORY;
            }
        }
        r
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&fix(container_requests(c)));
    }
    for c in spec.init_containers.iter().flatten() {
        let r = fix(container_requests(c));
        sum.milli_cpu = sum.milli_cpu.max(r.milli_cpu);
        sum.memory = sum.memory.max(r.memory);
    }
    total.add(&sum);
    let overhead = Resources::from_list(spec.overhead.as_ref());
    total.milli_cpu += overhead.milli_cpu;
    total.memory += overhead.memory;
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_to_milli_units() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("1Ki"), Some(1_024_000));
        assert_eq!(parse_milli("1Gi"), Some(1_073_741_824_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("0.1"), Some(100));
        assert_eq!(parse_milli("1n"), Some(1)); // rounded up
        assert_eq!(parse_milli("12x"), None);
        assert_eq!(parse_milli(""), None);
    }

    #[test]
    fn pod_requests_sum_containers_and_take_max_init() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "200m", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "300m"}}},
                ],
                "initContainers": [
                    {"name": "i", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}},
                ],
                "overhead": {"cpu": "10m"},
            }
        }))
        .unwrap();
        let r = pod_requests(&pod, false);
        assert_eq!(r.milli_cpu, 1010);
        assert_eq!(r.memory, 1024 * 1024 * 1024);
        assert_eq!(r.pods, 1);
    }

    #[test]
    fn non_zero_requests_fill_in_defaults() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}]}
        }))
        .unwrap();
        assert_eq!(pod_requests(&pod, false).milli_cpu, 0);
        let r = pod_requests(&pod, true);
        assert_eq!((r.milli_cpu, r.memory), (DEFAULT_MILLI_CPU, DEFAULT_MEMORY));
    }
}
