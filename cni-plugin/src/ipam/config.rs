//! The `ipam` section of the network config, read with host-local's field names and rules.
//!
//! We read the section by hand from a `serde_json::Value` rather than deriving: every wrong type
//! or bad address then becomes a code-7 error naming the field and value, never a generic serde
//! message or a panic. Legacy single-range fields are folded into `ranges` exactly as host-local
//! does, so old configs keep allocating from the same addresses.

use super::range::{Range, RangeSet, RangeSpec};
use crate::cni_err;
use crate::error::Result;
use crate::result::{Dns, Route};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Where allocations live when `dataDir` is not set (host-local's default).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The validated built-in IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// `type`: the IPAM plugin name (`host-local` for the built-in allocator).
    pub ipam_type: String,
    /// Range sets; a container gets one address from each.
    pub ranges: Vec<RangeSet>,
    /// Routes returned in the result.
    pub routes: Vec<Route>,
    /// `dataDir`: parent of the per-network allocation directories.
    pub data_dir: PathBuf,
    /// `resolvConf`: a resolv.conf-format file whose settings become the result's `dns`.
    pub resolv_conf: Option<PathBuf>,
}

/// The `type` of an `ipam` section, to decide between the built-in IPAM and delegation.
pub fn plugin_type(ipam: &Value) -> Result<&str> {
    let obj = ipam
        .as_object()
        .ok_or_else(|| cni_err!(InvalidNetworkConfig, "\"ipam\" is not a JSON object"))?;
    match obj.get("type") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(cni_err!(InvalidNetworkConfig, "\"ipam.type\" is missing"))
        }
        Some(other) => Err(cni_err!(
            InvalidNetworkConfig,
            "\"ipam.type\" is not a string",
            "got {other}"
        )),
    }
}

/// An optional string field; `null` counts as absent, any other non-string is an error.
fn opt_str(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(cni_err!(
            InvalidNetworkConfig,
            format!("\"{at}.{key}\" is not a string"),
            "got {other}"
        )),
    }
}

fn range_spec(v: &Value, at: &str) -> Result<RangeSpec> {
    let obj = v.as_object().ok_or_else(|| {
        cni_err!(
            InvalidNetworkConfig,
            format!("\"{at}\" is not an object"),
            "got {v}"
        )
    })?;
    let subnet = opt_str(obj, "subnet", at)?
        .ok_or_else(|| cni_err!(InvalidNetworkConfig, format!("\"{at}.subnet\" is missing")))?;
    Ok(RangeSpec {
        subnet,
        range_start: opt_str(obj, "rangeStart", at)?,
        range_end: opt_str(obj, "rangeEnd", at)?,
        gateway: opt_str(obj, "gateway", at)?,
    })
}

impl IpamConfig {
    /// Parses and validates the `ipam` section (the object, not the whole network config).
    ///
    /// Errors are code 7 (InvalidNetworkConfig) and name the offending field or value.
    pub fn from_json(ipam: &Value) -> Result<IpamConfig> {
        let ipam_type = plugin_type(ipam)?.to_string();
        let obj = ipam.as_object().expect("checked by plugin_type");

        let mut specs: Vec<Vec<RangeSpec>> = Vec::new();
        // Legacy single range at the top level comes first, as in host-local.
        if obj.get("subnet").is_some_and(|v| !v.is_null()) {
            specs.push(vec![range_spec(ipam, "ipam")?]);
        }
        match obj.get("ranges") {
            None | Some(Value::Null) => {}
            Some(Value::Array(sets)) => {
                for (i, set) in sets.iter().enumerate() {
                    let at = format!("ipam.ranges[{i}]");
                    let items = set.as_array().ok_or_else(|| {
                        cni_err!(
                            InvalidNetworkConfig,
                            format!("\"{at}\" is not a list of ranges"),
                            "got {set}"
                        )
                    })?;
                    let set = items
                        .iter()
                        .enumerate()
                        .map(|(j, r)| range_spec(r, &format!("{at}[{j}]")))
                        .collect::<Result<Vec<_>>>()?;
                    specs.push(set);
                }
            }
            Some(other) => {
                return Err(cni_err!(
                    InvalidNetworkConfig,
                    "\"ipam.ranges\" is not a list of range sets",
                    "got {other}"
                ))
            }
        }
        if specs.is_empty() {
            return Err(cni_err!(
                InvalidNetworkConfig,
                "no IP ranges specified in \"ipam\""
            ));
        }

        let mut ranges: Vec<RangeSet> = Vec::with_capacity(specs.len());
        for (i, set) in specs.iter().enumerate() {
            let built = set
                .iter()
                .map(Range::from_spec)
                .collect::<Result<Vec<_>>>()
                .and_then(RangeSet::new)
                .map_err(|e| e.context(format!("invalid range set {i}")))?;
            if let Some(j) = ranges.iter().position(|earlier| earlier.overlaps(&built)) {
                return Err(cni_err!(
                    InvalidNetworkConfig,
                    format!("range set {j} overlaps with {i}"),
                    "{} and {}",
                    ranges[j],
                    built
                ));
            }
            ranges.push(built);
        }

        let routes = match obj.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value::<Vec<Route>>(v.clone())
                .map_err(|e| cni_err!(InvalidNetworkConfig, "invalid \"ipam.routes\"", "{e}"))?,
        };
        let data_dir = opt_str(obj, "dataDir", "ipam")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
        let resolv_conf = opt_str(obj, "resolvConf", "ipam")?.filter(|s| !s.is_empty());

        Ok(IpamConfig {
            ipam_type,
            ranges,
            routes,
            data_dir: PathBuf::from(data_dir),
            resolv_conf: resolv_conf.map(PathBuf::from),
        })
    }

    /// The DNS settings for the result: read from `resolvConf` when set (at ADD time, as
    /// host-local does), empty otherwise.
    pub fn dns(&self) -> Result<Dns> {
        match &self.resolv_conf {
            Some(p) => parse_resolv_conf(p),
            None => Ok(Dns::default()),
        }
    }
}

/// Reads a resolv.conf-format file: `nameserver`, `domain`, `search` and `options` lines.
///
/// An unreadable file is code 5 (IoFailure) naming the path.
pub fn parse_resolv_conf(path: &Path) -> Result<Dns> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        cni_err!(
            IoFailure,
            format!("reading resolvConf {}", path.display()),
            "{e}"
        )
    })?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some((key, rest)) = fields.split_first() else {
            continue;
        };
        let Some(first) = rest.first() else { continue };
        let owned = || rest.iter().map(|s| s.to_string());
        match *key {
            "nameserver" => dns.nameservers.push(first.to_string()),
            "domain" => dns.domain = Some(first.to_string()),
            "search" => dns.search.extend(owned()),
            "options" => dns.options.extend(owned()),
            _ => {}
        }
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn err(v: Value) -> crate::error::CniError {
        IpamConfig::from_json(&v).expect_err("config should be rejected")
    }

    #[test]
    fn parses_ranges_routes_and_defaults() {
        let c = IpamConfig::from_json(&json!({
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.1.1.0/24"}, {"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10",
                  "rangeEnd": "10.1.2.20", "gateway": "10.1.2.254"}],
                [{"subnet": "fd00::/64"}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.1.254"}]
        }))
        .unwrap();
        assert_eq!(c.ipam_type, "host-local");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.resolv_conf, None);
        assert_eq!(c.ranges.len(), 2);
        let r = &c.ranges[0].0[1];
        assert_eq!(r.range_start.to_string(), "10.1.2.10");
        assert_eq!(r.range_end.to_string(), "10.1.2.20");
        assert_eq!(r.gateway.to_string(), "10.1.2.254");
        let r = &c.ranges[0].0[0];
        assert_eq!(r.gateway.to_string(), "10.1.1.1");
        assert_eq!(r.range_end.to_string(), "10.1.1.254");
        assert_eq!(
            c.ranges[1].0[0].range_end.to_string(),
            "fd00::ffff:ffff:ffff:ffff"
        );
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some("10.1.1.254".parse().unwrap()));
        assert_eq!(c.dns().unwrap(), Dns::default());
    }

    #[test]
    fn legacy_fields_become_the_first_range_set() {
        let c = IpamConfig::from_json(&json!({
            "type": "host-local", "subnet": "10.5.0.0/16", "rangeStart": "10.5.1.0",
            "rangeEnd": "10.5.1.255", "gateway": "10.5.0.1", "dataDir": "/tmp/x",
            "ranges": [[{"subnet": "10.6.0.0/16"}]]
        }))
        .unwrap();
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.ranges[0].0[0].subnet.to_string(), "10.5.0.0/16");
        assert_eq!(c.ranges[0].0[0].range_start.to_string(), "10.5.1.0");
        assert_eq!(c.ranges[1].0[0].subnet.to_string(), "10.6.0.0/16");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn invalid_configs_are_code_7_with_a_named_cause() {
        let cases = [
            (json!({"type": "host-local"}), "no IP ranges"),
            (json!({"type": "host-local", "ranges": []}), "no IP ranges"),
            (json!({"type": "host-local", "ranges": 5}), "ipam.ranges"),
            (
                json!({"type": "host-local", "ranges": [5]}),
                "ipam.ranges[0]",
            ),
            (
                json!({"type": "host-local", "ranges": [[5]]}),
                "ipam.ranges[0][0]",
            ),
            (
                json!({"type": "host-local", "ranges": [[{}]]}),
                "subnet\" is missing",
            ),
            (
                json!({"type": "host-local", "ranges": [[{"subnet": 3}]]}),
                "not a string",
            ),
            (
                json!({"type": "host-local", "ranges": [[]]}),
                "empty range set",
            ),
            (
                json!({"type": "host-local", "subnet": "10.0.0.0/33"}),
                "10.0.0.0/33",
            ),
            (
                json!({"type": "host-local", "subnet": "10.0.0.0/31"}),
                "too small",
            ),
            (
                json!({"type": "host-local", "subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}),
                "gateway 10.0.1.1 not in network 10.0.0.0/24",
            ),
            (
                json!({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
                "mixed address families",
            ),
            (
                json!({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/16"}]]}),
                "range set 0 overlaps with 1",
            ),
            (
                json!({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}]]}),
                "overlap",
            ),
            (
                json!({"type": "host-local", "subnet": "10.0.0.0/24", "routes": 1}),
                "routes",
            ),
            (
                json!({"type": "host-local", "subnet": "10.0.0.0/24", "routes": [{"dst": "x"}]}),
                "routes",
            ),
            (
                json!({"type": "host-local", "subnet": "10.0.0.0/24", "dataDir": 1}),
                "dataDir",
            ),
            (json!({"subnet": "10.0.0.0/24"}), "ipam.type"),
            (json!({"type": 4, "subnet": "10.0.0.0/24"}), "ipam.type"),
            (json!([1, 2]), "not a JSON object"),
        ];
        for (v, needle) in cases {
            let e = err(v.clone());
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig, "{v}: {e}");
            assert!(
                e.to_string().contains(needle),
                "{v}: {e:?} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn resolv_conf_is_read_at_add_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(
            &p,
            "# comment\nnameserver 10.0.0.10\nnameserver 10.0.0.11\ndomain example.com\n\
             search a.example b.example\n; x\noptions ndots:5 edns0\nbogus line\nnameserver\n",
        )
        .unwrap();
        let c = IpamConfig::from_json(&json!({
            "type": "host-local", "subnet": "10.0.0.0/24", "resolvConf": p
        }))
        .unwrap();
        let dns = c.dns().unwrap();
        assert_eq!(dns.nameservers, ["10.0.0.10", "10.0.0.11"]);
        assert_eq!(dns.domain.as_deref(), Some("example.com"));
        assert_eq!(dns.search, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
        let missing = IpamConfig {
            resolv_conf: Some(dir.path().join("nope")),
            ..c
        };
        let e = missing.dns().unwrap_err();
        assert_eq!(e.code, ErrorCode::IoFailure);
        assert!(e.to_string().contains("nope"));
    }
}
