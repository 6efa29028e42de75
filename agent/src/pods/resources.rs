//! Container resource requests and limits as Linux cgroup settings.
//!
//! The kubelet's mapping: a CPU limit becomes a CFS quota over a 100 ms period, a CPU request
//! becomes `cpu.shares` (1024 per CPU, at least 2), a memory limit becomes the memory limit.
//! Quantities are parsed here rather than pulled in from a crate: only the suffixes Kubernetes
//! allows for CPU and memory are needed.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::cri::api;

/// CFS period the CPU limit is expressed over (100 ms, as the kubelet).
const CPU_PERIOD_US: i64 = 100_000;
/// The smallest `cpu.shares` the kernel accepts.
const MIN_SHARES: i64 = 2;

/// A quantity string that is not a valid Kubernetes quantity.
#[derive(Debug, thiserror::Error)]
#[error("invalid quantity {0:?}")]
pub struct InvalidQuantity(pub String);

/// The Linux resources for a container with `resources`; `None` when nothing is set.
pub fn linux_resources(
    resources: Option<&ResourceRequirements>,
) -> Result<Option<api::LinuxContainerResources>, InvalidQuantity> {
    let Some(r) = resources else {
        return Ok(None);
    };
    let get = |map: &Option<std::collections::BTreeMap<String, Quantity>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone())
    };
    let mut out = api::LinuxContainerResources::default();
    let mut any = false;
    if let Some(cpu) = get(&r.limits, "cpu") {
        let milli = millicpu(&cpu)?;
        out.cpu_period = CPU_PERIOD_US;
        out.cpu_quota = (milli * CPU_PERIOD_US / 1000).max(1000);
        any = true;
    }
    // Without a request the limit is the request, as the apiserver would default it.
    if let Some(cpu) = get(&r.requests, "cpu").or_else(|| get(&r.limits, "cpu")) {
        out.cpu_shares = (millicpu(&cpu)? * 1024 / 1000).max(MIN_SHARES);
        any = true;
    }
    if let Some(mem) = get(&r.limits, "memory") {
        out.memory_limit_in_bytes = bytes(&mem)?;
        any = true;
    }
    Ok(any.then_some(out))
}

/// A CPU quantity in thousandths of a CPU (`"500m"` → 500, `"1.5"` → 1500), rounded up.
pub fn millicpu(q: &str) -> Result<i64, InvalidQuantity> {
    let bad = || InvalidQuantity(q.to_string());
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<i64>().map_err(|_| bad());
    }
    let v: f64 = q.parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    Ok((v * 1000.0).ceil() as i64)
}

/// A memory quantity in bytes (`"128Mi"`, `"1G"`, `"1e6"`, `"500"`).
pub fn bytes(q: &str) -> Result<i64, InvalidQuantity> {
    let bad = || InvalidQuantity(q.to_string());
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let (num, mult) = SUFFIXES
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    Ok((v * mult).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(millicpu("500m").unwrap(), 500);
        assert_eq!(millicpu("1").unwrap(), 1000);
        assert_eq!(millicpu("0.25").unwrap(), 250);
        assert!(millicpu("lots").is_err());
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(bytes("1e3").unwrap(), 1000);
        assert_eq!(bytes("64").unwrap(), 64);
        assert!(bytes("12Xi").is_err());
    }

    #[test]
    fn limits_become_quota_shares_and_memory() {
        let q = |s: &str| Quantity(s.into());
        let r = ResourceRequirements {
            limits: Some([("cpu".into(), q("250m")), ("memory".into(), q("64Mi"))].into()),
            requests: Some([("cpu".into(), q("100m"))].into()),
            ..Default::default()
        };
        let l = linux_resources(Some(&r)).unwrap().unwrap();
        assert_eq!((l.cpu_period, l.cpu_quota), (100_000, 25_000));
        assert_eq!(l.cpu_shares, 102);
        assert_eq!(l.memory_limit_in_bytes, 64 << 20);
        assert!(linux_resources(Some(&ResourceRequirements::default()))
            .unwrap()
            .is_none());
    }
}
