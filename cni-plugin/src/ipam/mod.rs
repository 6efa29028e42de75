//! IPAM: the built-in host-local compatible allocator, and delegation to external IPAM plugins.
//!
//! The bridge plugin needs addresses before it can configure the container. Building host-local
//! in (same config, same on-disk store, same lock) saves a fork/exec per operation and gives us
//! GC and STATUS, while a network already managed by host-local keeps working unchanged. Configs
//! naming another IPAM plugin go through [`delegate::exec`].
//!
//! Every operation here opens the network's [`Store`], which holds the directory lock until it
//! is dropped at the end of the call, so concurrent plugin processes never race.

pub mod allocator;
pub mod config;
pub mod delegate;
pub mod range;
pub mod store;

pub use config::IpamConfig;
pub use store::{Allocation, Store};

use crate::cni_err;
use crate::error::Result;
use crate::result::CniResult;
use allocator::Allocator;
use std::net::IpAddr;

/// Who asks for addresses in an ADD.
#[derive(Debug, Clone, Copy)]
pub struct IpamRequest<'a> {
    /// The network name (the config's `name`); names the store directory.
    pub network: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// Specific addresses asked for (`CNI_ARGS` `IP=`, `args.cni.ips`, `runtimeConfig.ips`);
    /// each is matched to the range set that contains it.
    pub requested_ips: &'a [IpAddr],
}

/// Assigns one address from every range set, with the config's routes and DNS.
///
/// A retried ADD returns the addresses already held. If any range set fails, the addresses this
/// call reserved in earlier sets are released again, so a failed ADD leaves nothing behind.
pub fn add(cfg: &IpamConfig, req: &IpamRequest) -> Result<CniResult> {
    let mut per_set: Vec<Option<IpAddr>> = vec![None; cfg.ranges.len()];
    for ip in req.requested_ips {
        let ip = ip.to_canonical();
        let idx = cfg
            .ranges
            .iter()
            .position(|set| set.contains(ip))
            .ok_or_else(|| {
                cni_err!(
                    InvalidNetworkConfig,
                    format!("requested IP {ip} is not in any configured range")
                )
            })?;
        if let Some(other) = per_set[idx].replace(ip) {
            return Err(cni_err!(
                InvalidNetworkConfig,
                format!(
                    "requested IPs {other} and {ip} are both in range set {}",
                    cfg.ranges[idx]
                )
            ));
        }
    }
    let dns = cfg.dns()?;

    let store = Store::open(&cfg.data_dir, req.network)?;
    let mut ips = Vec::with_capacity(cfg.ranges.len());
    let mut reserved: Vec<IpAddr> = Vec::new();
    for (idx, set) in cfg.ranges.iter().enumerate() {
        match Allocator::new(&store, set, idx).get(req.container_id, req.ifname, per_set[idx]) {
            Ok(a) => {
                if a.newly_reserved {
                    reserved.push(a.config.address.ip());
                }
                ips.push(a.config);
            }
            Err(e) => {
                for ip in reserved {
                    let _ = store.release(ip);
                }
                return Err(e);
            }
        }
    }
    Ok(CniResult {
        interfaces: Vec::new(),
        ips,
        routes: cfg.routes.clone(),
        dns,
    })
}

/// Releases every address of `(container_id, ifname)`; having none is success.
pub fn del(cfg: &IpamConfig, network: &str, container_id: &str, ifname: &str) -> Result<()> {
    let store = Store::open(&cfg.data_dir, network)?;
    store.release_by_id(container_id, ifname)?;
    Ok(())
}

/// Releases every allocation whose `(containerID, ifname)` is not in `valid` (old single-line
/// files are kept when their container ID appears in `valid`); returns the released addresses.
pub fn gc(cfg: &IpamConfig, network: &str, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
    let store = Store::open(&cfg.data_dir, network)?;
    let mut released = Vec::new();
    for a in store.allocations()? {
        if !valid.iter().any(|(id, ifname)| a.belongs_to(id, ifname)) {
            store.release(a.ip)?;
            released.push(a.ip);
        }
    }
    Ok(released)
}

/// Ok when every range set still has a free address; code 50 naming the set otherwise.
pub fn status(cfg: &IpamConfig, network: &str) -> Result<()> {
    let store = Store::open(&cfg.data_dir, network)?;
    for (idx, set) in cfg.ranges.iter().enumerate() {
        if Allocator::new(&store, set, idx).free()? == 0 {
            return Err(cni_err!(
                PluginNotAvailable,
                format!("no free addresses in range set {set}: range exhausted")
            ));
        }
    }
    Ok(())
}

/// Every allocation recorded for `network`, sorted by IP.
pub fn allocations(cfg: &IpamConfig, network: &str) -> Result<Vec<Allocation>> {
    Store::open(&cfg.data_dir, network)?.allocations()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;
    use std::collections::HashSet;
    use std::path::Path;

    fn cfg(dir: &Path, ranges: serde_json::Value) -> IpamConfig {
        IpamConfig::from_json(&json!({
            "type": "host-local", "ranges": ranges, "dataDir": dir,
            "routes": [{"dst": "0.0.0.0/0"}]
        }))
        .unwrap()
    }

    fn req<'a>(id: &'a str, ips: &'a [IpAddr]) -> IpamRequest<'a> {
        IpamRequest {
            network: "net",
            container_id: id,
            ifname: "eth0",
            requested_ips: ips,
        }
    }

    #[test]
    fn add_gives_one_ip_per_range_set_with_routes() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(
            d.path(),
            json!([[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd02::/64"}]]),
        );
        let r = add(&c, &req("c1", &[])).unwrap();
        let ips: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(ips, ["10.2.0.2/24", "fd02::2/64"]);
        assert!(r.ips.iter().all(|i| i.interface.is_none()));
        assert_eq!(r.routes, c.routes);
        assert_eq!(add(&c, &req("c1", &[])).unwrap(), r, "retry is idempotent");
        let want = ["fd02::9".parse().unwrap()];
        let r = add(&c, &req("c2", &want)).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.2.0.3/24");
        assert_eq!(r.ips[1].address.to_string(), "fd02::9/64");
        assert_eq!(allocations(&c, "net").unwrap().len(), 4);
    }

    #[test]
    fn bad_requests_are_code_7() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), json!([[{"subnet": "10.2.0.0/24"}]]));
        let two: [IpAddr; 2] = ["10.2.0.5".parse().unwrap(), "10.2.0.6".parse().unwrap()];
        let outside: [IpAddr; 1] = ["10.3.0.5".parse().unwrap()];
        for ips in [&two[..], &outside[..]] {
            assert_eq!(
                add(&c, &req("c", ips)).unwrap_err().code,
                ErrorCode::InvalidNetworkConfig
            );
        }
        let e = add(
            &c,
            &IpamRequest {
                network: "../x",
                ..req("c", &[])
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidNetworkConfig);
    }

    #[test]
    fn failure_in_a_later_set_releases_earlier_reservations() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(
            d.path(),
            json!([[{"subnet": "10.2.0.0/24"}], [{"subnet": "10.3.0.0/30"}]]),
        );
        add(&c, &req("first", &[])).unwrap();
        let e = add(&c, &req("second", &[])).unwrap_err();
        assert_eq!(e.code, ErrorCode::PluginNotAvailable);
        assert!(
            e.msg.contains("10.3.0.0/30") && e.msg.contains("second"),
            "{e}"
        );
        let held: Vec<String> = allocations(&c, "net")
            .unwrap()
            .iter()
            .map(|a| a.container_id.clone())
            .collect();
        assert_eq!(held, ["first", "first"]);
        assert_eq!(
            status(&c, "net").unwrap_err().code,
            ErrorCode::PluginNotAvailable
        );
    }

    #[test]
    fn del_is_idempotent_and_frees_for_reuse() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), json!([[{"subnet": "10.2.0.0/30"}]]));
        del(&c, "net", "never", "eth0").unwrap();
        add(&c, &req("c1", &[])).unwrap();
        status(&c, "net").unwrap_err();
        del(&c, "net", "c1", "eth0").unwrap();
        del(&c, "net", "c1", "eth0").unwrap();
        status(&c, "net").unwrap();
        assert!(allocations(&c, "net").unwrap().is_empty());
        assert_eq!(
            add(&c, &req("c2", &[])).unwrap().ips[0].address.to_string(),
            "10.2.0.2/30"
        );
    }

    #[test]
    fn gc_keeps_valid_attachments_and_releases_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), json!([[{"subnet": "10.2.0.0/24"}]]));
        for id in ["keep", "drop1", "drop2"] {
            add(&c, &req(id, &[])).unwrap();
        }
        add(
            &c,
            &IpamRequest {
                ifname: "eth1",
                ..req("keep", &[])
            },
        )
        .unwrap();
        std::fs::write(d.path().join("net/10.2.0.200"), "legacy").unwrap();
        std::fs::write(d.path().join("net/10.2.0.201"), "gone").unwrap();
        let valid = [
            ("keep".to_string(), "eth0".to_string()),
            ("legacy".to_string(), "eth0".to_string()),
        ];
        let mut released: Vec<String> = gc(&c, "net", &valid)
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        released.sort();
        assert_eq!(released, ["10.2.0.201", "10.2.0.3", "10.2.0.4", "10.2.0.5"]);
        let left: Vec<(String, Option<String>)> = allocations(&c, "net")
            .unwrap()
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        assert_eq!(
            left,
            [
                ("keep".into(), Some("eth0".into())),
                ("legacy".into(), None)
            ]
        );
    }

    #[test]
    fn dns_comes_from_resolv_conf() {
        let d = tempfile::tempdir().unwrap();
        let rc = d.path().join("resolv.conf");
        std::fs::write(&rc, "nameserver 10.0.0.53\nsearch svc.local\n").unwrap();
        let mut c = cfg(d.path(), json!([[{"subnet": "10.2.0.0/24"}]]));
        c.resolv_conf = Some(rc);
        let r = add(&c, &req("c", &[])).unwrap();
        assert_eq!(r.dns.nameservers, ["10.0.0.53"]);
        assert_eq!(r.dns.search, ["svc.local"]);
    }

    #[test]
    fn concurrent_adds_get_distinct_ips() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), json!([[{"subnet": "10.2.0.0/24"}]]));
        let ips: Vec<IpAddr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..20)
                .map(|i| {
                    let c = &c;
                    s.spawn(move || {
                        let id = format!("ctr-{i}");
                        add(c, &req(&id, &[])).unwrap().ips[0].address.ip()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: HashSet<IpAddr> = ips.iter().copied().collect();
        assert_eq!(unique.len(), 20, "{ips:?}");
        assert_eq!(allocations(&c, "net").unwrap().len(), 20);
    }
}
