//! The CNI result: one internal model, written out in the shape of the requested version.
//!
//! ADD returns it, CHECK and DEL receive it back as `prevResult`, chained plugins (portmap,
//! bandwidth, tuning) read it. We keep the 1.1 model internally (a superset of every older
//! shape) and convert only at the edges, so the rest of the plugin never branches on versions.

use crate::cni_err;
use crate::error::Result;
use crate::version::CniVersion;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// An interface the plugin created or touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (inside `sandbox` when that is set).
    pub name: String,
    /// Hardware address, `aa:bb:...`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path for container-side interfaces; empty for host-side ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// MTU (1.1.0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.244.1.5/24`.
    pub address: IpNetwork,
    /// Gateway for this address's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route to install in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination network.
    pub dst: IpNetwork,
    /// Next hop; the interface's gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// TCP advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority / metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (1.1.0), numeric as in rtnetlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A plain route to `dst` via `gw`.
    pub fn via(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings handed to the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set (the `dns` key is then omitted).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The result of ADD (and of an IPAM plugin, which fills only `ips`, `routes`, `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces, referenced by index from `ips`.
    pub interfaces: Vec<Interface>,
    /// Assigned addresses.
    pub ips: Vec<IpConfig>,
    /// Routes for the container.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
}

impl CniResult {
    /// Writes the result in the shape `version` defines.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifaces: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut v = serde_json::to_value(i).expect("interface serialises");
                    if !version.has_gc_status() {
                        v.as_object_mut().expect("object").remove("mtu");
                    }
                    v
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).expect("ip serialises");
                if version.ip_has_version_field() {
                    let fam = if ip.address.is_ipv4() { "4" } else { "6" };
                    v.as_object_mut()
                        .expect("object")
                        .insert("version".into(), json!(fam));
                }
                v
            })
            .collect();
        out.insert("ips".into(), Value::Array(ips));
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).expect("route serialises");
                    if !version.has_gc_status() {
                        let o = v.as_object_mut().expect("object");
                        for k in ["mtu", "advmss", "priority", "table", "scope"] {
                            o.remove(k);
                        }
                    }
                    v
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            out.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).expect("dns serialises"),
            );
        }
        Value::Object(out)
    }

    /// Reads a result of any supported version (a `prevResult`, or an IPAM plugin's output).
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| cni_err!(DecodingFailure, "result is not a JSON object"))?;
        let field = |k: &str| obj.get(k).cloned().unwrap_or(Value::Null);
        let decode = |what: &str, e: serde_json::Error| {
            cni_err!(
                DecodingFailure,
                format!("decoding result field {what:?}"),
                "{e}"
            )
        };
        let interfaces: Vec<Interface> = match field("interfaces") {
            Value::Null => vec![],
            x => serde_json::from_value(x).map_err(|e| decode("interfaces", e))?,
        };
        // Older versions carry `version` in each IP config; it is derivable, so drop it.
        let ips: Vec<IpConfig> = match field("ips") {
            Value::Null => vec![],
            Value::Array(items) => items
                .into_iter()
                .map(|mut i| {
                    if let Some(o) = i.as_object_mut() {
                        o.remove("version");
                    }
                    serde_json::from_value(i).map_err(|e| decode("ips", e))
                })
                .collect::<Result<_>>()?,
            _ => {
                return Err(cni_err!(
                    DecodingFailure,
                    "result field \"ips\" is not a list"
                ))
            }
        };
        for ip in &ips {
            if let Some(i) = ip.interface {
                if i >= interfaces.len() {
                    return Err(cni_err!(
                        DecodingFailure,
                        "result IP refers to a missing interface",
                        "ip {} names interface index {i} of {}",
                        ip.address,
                        interfaces.len()
                    ));
                }
            }
        }
        let routes: Vec<Route> = match field("routes") {
            Value::Null => vec![],
            x => serde_json::from_value(x).map_err(|e| decode("routes", e))?,
        };
        let dns: Dns = match field("dns") {
            Value::Null => Dns::default(),
            x => serde_json::from_value(x).map_err(|e| decode("dns", e))?,
        };
        Ok(Self {
            interfaces,
            ips,
            routes,
            dns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    sandbox: "/var/run/netns/x".into(),
                    mtu: Some(1500),
                },
            ],
            ips: vec![IpConfig {
                address: "10.1.1.2/24".parse().unwrap(),
                gateway: Some("10.1.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::via(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.1.1.1".parse().unwrap()),
                )
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_have_ip_version_and_no_11_fields() {
        let j = sample().to_json(CniVersion::V0_3_1);
        assert_eq!(j["cniVersion"], "0.3.1");
        assert_eq!(j["ips"][0]["version"], "4");
        assert!(j["interfaces"][1].get("mtu").is_none());
        assert!(j["routes"][0].get("mtu").is_none());
        assert!(j.get("dns").is_none());
    }

    #[test]
    fn v1_drops_ip_version_and_v11_keeps_attributes() {
        let j = sample().to_json(CniVersion::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["routes"][0].get("mtu").is_none());
        let j = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(j["interfaces"][1]["mtu"], 1500);
        assert_eq!(j["routes"][0]["mtu"], 1400);
    }

    #[test]
    fn every_version_round_trips() {
        for v in crate::version::SUPPORTED {
            let back = CniResult::from_json(&sample().to_json(v)).unwrap();
            assert_eq!(back.ips, sample().ips, "version {v}");
        }
    }

    #[test]
    fn rejects_dangling_interface_index_and_bad_shapes() {
        let bad = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24","interface":3}]});
        assert!(CniResult::from_json(&bad).is_err());
        assert!(CniResult::from_json(&json!({"ips": 5})).is_err());
        assert!(CniResult::from_json(&json!([1])).is_err());
        assert!(CniResult::from_json(&json!({"ips":[{"address":"nope"}]})).is_err());
    }
}
