//! The network config on stdin: the reference `bridge` plugin's fields plus ours.
//!
//! Drop-in compatibility drives this file: a working bridge conflist must work after changing
//! `type` to `netlet`, so we accept every field the reference plugin accepts. Fields we do not
//! implement are accepted at their default value and refused with code 2 otherwise — silently
//! ignoring, say, a VLAN would leave a pod on the wrong network.

use crate::cni_err;
use crate::error::{CniError, Result};
use crate::result::{CniResult, Dns};
use crate::version::CniVersion;
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;

/// Bridge name used when the config names none, as in the reference plugin.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// The parsed network config.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// The requested spec version; results are written in its shape.
    pub cni_version: CniVersion,
    /// The network name; also the IPAM store's directory name.
    pub name: String,
    /// Node bridge to attach containers to.
    pub bridge: String,
    /// Give the bridge the gateway address of each range.
    pub is_gateway: bool,
    /// Install a default route in the container via the gateway (implies `is_gateway`).
    pub is_default_gateway: bool,
    /// Replace a different address already on the bridge instead of failing.
    pub force_address: bool,
    /// Masquerade traffic from the pod subnet that leaves `cluster_cidrs`.
    pub ip_masq: bool,
    /// Destinations never masqueraded (netlet extension `clusterCIDRs`); the pod subnet always is.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// MTU for the veth pair (and a new bridge).
    pub mtu: Option<u32>,
    /// Let a container reach itself through the bridge (Services pointing back at the pod).
    pub hairpin_mode: bool,
    /// Put the bridge in promiscuous mode.
    pub promisc_mode: bool,
    /// The `ipam` section, kept raw: it is re-sent verbatim to a delegated IPAM plugin.
    pub ipam: Option<Value>,
    /// `dns` to pass through into the result.
    pub dns: Dns,
    /// IPs requested through `runtimeConfig.ips` or `args.cni.ips`.
    pub requested_ips: Vec<IpAddr>,
    /// MAC requested through `runtimeConfig.mac` or `args.cni.mac`.
    pub requested_mac: Option<String>,
    /// `prevResult`, parsed (DEL, CHECK, and chained plugins after us).
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` for GC: (container ID, ifname) pairs.
    pub valid_attachments: Option<Vec<(String, String)>>,
    /// Log file (netlet extension `logFile`); logs never go to stdout, which is the protocol.
    pub log_file: Option<String>,
    /// The raw config bytes, forwarded to delegated IPAM plugins.
    pub raw: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default, rename = "clusterCIDRs")]
    cluster_cidrs: Vec<IpNetwork>,
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: u32,
    #[serde(default)]
    vlan_trunk: Vec<Value>,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    port_isolation: bool,
    #[serde(default)]
    disable_container_interface: bool,
    ipam: Option<Value>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    args: Option<Args>,
    prev_result: Option<Value>,
    log_file: Option<String>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize, Default)]
struct RuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
    mac: Option<String>,
}

#[derive(Deserialize, Default)]
struct Args {
    #[serde(default)]
    cni: Option<RuntimeConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// Extracts `cniVersion` alone, so even a config we cannot otherwise parse gets its error
/// answered in the version the runtime asked for.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: Option<String>,
    }
    serde_json::from_slice::<V>(stdin).ok().and_then(|v| v.v)
}

/// Maps a serde error to the spec's code: syntax errors are 6 (cannot decode), wrong types or
/// values are 7 (invalid network config).
fn decode_error(e: serde_json::Error) -> CniError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            cni_err!(DecodingFailure, "decoding network config from stdin", "{e}")
        }
        Category::Data => cni_err!(InvalidNetworkConfig, "invalid network config", "{e}"),
    }
}

fn parse_ip_or_cidr(s: &str) -> Result<IpAddr> {
    let ip = s.split('/').next().unwrap_or_default();
    ip.parse().map_err(|_| {
        cni_err!(
            InvalidNetworkConfig,
            "invalid requested IP",
            "{s:?} is not an IP address"
        )
    })
}

impl NetConf {
    /// Parses and validates the config bytes from stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self> {
        if stdin.iter().all(u8::is_ascii_whitespace) {
            return Err(cni_err!(DecodingFailure, "no network config on stdin"));
        }
        let w: Wire = serde_json::from_slice(stdin).map_err(decode_error)?;
        let cni_version =
            CniVersion::parse(w.cni_version.as_deref().ok_or_else(|| {
                cni_err!(InvalidNetworkConfig, "network config has no cniVersion")
            })?)?;
        let name = w
            .name
            .ok_or_else(|| cni_err!(InvalidNetworkConfig, "network config has no name"))?;
        let name_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            return Err(cni_err!(
                InvalidNetworkConfig,
                "invalid network name",
                "{name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
            ));
        }
        let bridge = w
            .bridge
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| DEFAULT_BRIDGE.into());
        crate::env::validate_ifname(&bridge).map_err(|_| {
            cni_err!(
                InvalidNetworkConfig,
                "invalid bridge name",
                "{bridge:?} is not a valid interface name"
            )
        })?;
        let unsupported = |field: &str, why: &str| {
            Err(cni_err!(
                UnsupportedField,
                format!("field {field:?} is not supported"),
                "{why}"
            ))
        };
        if w.vlan != 0 || !w.vlan_trunk.is_empty() {
            return unsupported(
                "vlan",
                "netlet-cni does not tag bridge ports; remove vlan/vlanTrunk",
            );
        }
        if w.macspoofchk {
            return unsupported("macspoofchk", "MAC spoof checking is not implemented");
        }
        if w.disable_container_interface {
            return unsupported(
                "disableContainerInterface",
                "the container interface is always brought up",
            );
        }
        if w.port_isolation {
            return unsupported("portIsolation", "port isolation is not implemented");
        }
        if let Some(b) = w.ip_masq_backend.as_deref().filter(|b| *b != "iptables") {
            return unsupported(
                "ipMasqBackend",
                &format!("only \"iptables\" is supported, not {b:?}"),
            );
        }
        if let Some(mtu) = w.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(cni_err!(
                    InvalidNetworkConfig,
                    "invalid mtu",
                    "{mtu} is outside 68..65535"
                ));
            }
        }
        let prev_result = w
            .prev_result
            .as_ref()
            .map(CniResult::from_json)
            .transpose()?;
        let mut requested_ips = vec![];
        let mut requested_mac = None;
        for rc in [w.runtime_config, w.args.and_then(|a| a.cni)]
            .into_iter()
            .flatten()
        {
            for ip in &rc.ips {
                requested_ips.push(parse_ip_or_cidr(ip)?);
            }
            requested_mac = requested_mac.or(rc.mac);
        }
        let ipam = w.ipam.filter(|v| match v {
            Value::Null => false,
            Value::Object(o) => !o.is_empty(),
            _ => true,
        });
        Ok(Self {
            cni_version,
            name,
            bridge,
            is_gateway: w.is_gateway || w.is_default_gateway,
            is_default_gateway: w.is_default_gateway,
            force_address: w.force_address,
            ip_masq: w.ip_masq,
            cluster_cidrs: w.cluster_cidrs,
            mtu: w.mtu,
            hairpin_mode: w.hairpin_mode,
            promisc_mode: w.promisc_mode,
            ipam,
            dns: w.dns.unwrap_or_default(),
            requested_ips,
            requested_mac,
            prev_result,
            valid_attachments: w
                .valid_attachments
                .map(|v| v.into_iter().map(|a| (a.container_id, a.ifname)).collect()),
            log_file: w.log_file,
            raw: stdin.to_vec(),
        })
    }

    /// The `ipam.type`, if an IPAM section is present.
    pub fn ipam_type(&self) -> Result<Option<&str>> {
        match &self.ipam {
            None => Ok(None),
            Some(v) => match v.get("type") {
                Some(Value::String(t)) if !t.is_empty() => Ok(Some(t)),
                _ => Err(cni_err!(
                    InvalidNetworkConfig,
                    "ipam section has no \"type\""
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn reference_bridge_config_parses() {
        let c = parse(json!({
            "cniVersion": "1.0.0", "name": "mynet", "type": "netlet", "bridge": "mynet0",
            "isDefaultGateway": true, "forceAddress": false, "ipMasq": true, "hairpinMode": true,
            "mtu": 1450, "promiscMode": false, "vlan": 0, "preserveDefaultVlan": true,
            "ipam": {"type": "netlet", "ranges": [[{"subnet": "10.10.0.0/16"}]]},
            "runtimeConfig": {"ips": ["10.10.0.9/16"]}
        }))
        .unwrap();
        assert_eq!(c.bridge, "mynet0");
        assert!(c.is_gateway && c.is_default_gateway && c.ip_masq && c.hairpin_mode);
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(
            c.requested_ips,
            vec!["10.10.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.ipam_type().unwrap(), Some("netlet"));
    }

    #[test]
    fn defaults() {
        let c = parse(json!({"cniVersion": "0.3.1", "name": "n"})).unwrap();
        assert_eq!(c.bridge, DEFAULT_BRIDGE);
        assert!(!c.is_gateway && c.ipam.is_none());
    }

    #[test]
    fn error_codes() {
        let code = |v: Value| parse(v).unwrap_err().code;
        assert_eq!(
            NetConf::parse(b"{not json").unwrap_err().code,
            ErrorCode::DecodingFailure
        );
        assert_eq!(
            NetConf::parse(b"").unwrap_err().code,
            ErrorCode::DecodingFailure
        );
        assert_eq!(code(json!({"name": "n"})), ErrorCode::InvalidNetworkConfig);
        assert_eq!(
            code(json!({"cniVersion": "9.9.9", "name": "n"})),
            ErrorCode::IncompatibleVersion
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0"})),
            ErrorCode::InvalidNetworkConfig
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0", "name": "../x"})),
            ErrorCode::InvalidNetworkConfig
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0", "name": "n", "mtu": "big"})),
            ErrorCode::InvalidNetworkConfig
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0", "name": "n", "mtu": 10})),
            ErrorCode::InvalidNetworkConfig
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0", "name": "n", "vlan": 5})),
            ErrorCode::UnsupportedField
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0", "name": "n", "bridge": "a/b"})),
            ErrorCode::InvalidNetworkConfig
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0", "name": "n", "clusterCIDRs": ["nope"]})),
            ErrorCode::InvalidNetworkConfig
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0", "name": "n", "prevResult": {"ips": 3}})),
            ErrorCode::DecodingFailure
        );
        assert_eq!(
            code(json!({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": {"ips": ["x"]}})),
            ErrorCode::InvalidNetworkConfig
        );
        let c =
            parse(json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"subnet": "10.0.0.0/8"}}))
                .unwrap();
        assert_eq!(
            c.ipam_type().unwrap_err().code,
            ErrorCode::InvalidNetworkConfig
        );
    }

    #[test]
    fn gc_attachments_parse() {
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}))
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![("a".to_string(), "eth0".to_string())]
        );
    }

    #[test]
    fn peek_version_survives_bad_configs() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0","mtu":"x"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(peek_version(b"garbage"), None);
    }
}
