//! The `CNI_*` environment: which command to run, on which container, and `CNI_ARGS`.
//!
//! The runtime passes the "what" in environment variables and the "how" (network config) on
//! stdin. Parsing both up front, with every variable validated once, means commands never look
//! at the raw environment and every malformed value is reported as code 4 naming the variable.

use crate::cni_err;
use crate::error::Result;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The CNI commands of spec 1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it and release its resources; idempotent.
    Del,
    /// Verify an earlier ADD still holds.
    Check,
    /// Release everything not in the runtime's list of valid attachments (1.1).
    Gc,
    /// Report whether ADDs can succeed now (1.1).
    Status,
    /// Report the supported spec versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            other => {
                return Err(cni_err!(
                    InvalidEnvironment,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "expected one of ADD, DEL, CHECK, GC, STATUS, VERSION"
                ))
            }
        })
    }

    /// Whether the command acts on one container (needs `CNI_CONTAINERID` and `CNI_IFNAME`).
    pub fn is_per_container(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Every pair, in the order given.
    pub pairs: BTreeMap<String, String>,
    /// IPs requested with `IP=a,b` (host-local's convention).
    pub ips: Vec<IpAddr>,
}

/// Keys we understand; others are an error unless `IgnoreUnknown` is set, as in the reference
/// plugins, so a typo in a requested IP never silently becomes a random IP.
const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "IP",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

impl CniArgs {
    /// Parses the value of `CNI_ARGS`.
    pub fn parse(raw: &str) -> Result<Self> {
        let mut pairs = BTreeMap::new();
        for part in raw.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                cni_err!(
                    InvalidEnvironment,
                    "invalid CNI_ARGS",
                    "pair {part:?} is not of the form KEY=VALUE"
                )
            })?;
            if k.is_empty() {
                return Err(cni_err!(
                    InvalidEnvironment,
                    "invalid CNI_ARGS",
                    "empty key in {part:?}"
                ));
            }
            pairs.insert(k.to_string(), v.to_string());
        }
        let ignore_unknown = match pairs.get("IgnoreUnknown").map(String::as_str) {
            None => false,
            Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => true,
            Some(v) if v == "0" || v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(cni_err!(
                    InvalidEnvironment,
                    "invalid CNI_ARGS",
                    "IgnoreUnknown={v:?} is not a boolean"
                ))
            }
        };
        if !ignore_unknown {
            if let Some(k) = pairs.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str())) {
                return Err(cni_err!(
                    InvalidEnvironment,
                    "invalid CNI_ARGS",
                    "unknown key {k:?} (set IgnoreUnknown=1 to allow it)"
                ));
            }
        }
        let ips = match pairs.get("IP") {
            None => vec![],
            Some(v) => v
                .split(',')
                .map(|s| {
                    s.trim().parse::<IpAddr>().map_err(|_| {
                        cni_err!(
                            InvalidEnvironment,
                            "invalid CNI_ARGS",
                            "IP={s:?} is not an IP address"
                        )
                    })
                })
                .collect::<Result<_>>()?,
        };
        Ok(Self { pairs, ips })
    }
}

/// Everything the runtime passed in the environment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for GC, STATUS, VERSION).
    pub container_id: String,
    /// `CNI_NETNS`, if given (DEL may come without it).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (empty for GC, STATUS, VERSION).
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// `CNI_PATH`: where to find delegated plugins.
    pub cni_path: String,
}

impl CniEnv {
    /// Reads the environment through `get` (a closure so tests need not touch the process env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let command = Command::parse(
            &get("CNI_COMMAND")
                .ok_or_else(|| cni_err!(InvalidEnvironment, "CNI_COMMAND is not set"))?,
        )?;
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let required = |k: &str| {
            non_empty(k).ok_or_else(|| {
                cni_err!(
                    InvalidEnvironment,
                    format!("{k} is not set"),
                    "required for CNI_COMMAND={command:?}"
                )
            })
        };
        let (container_id, ifname) = if command.is_per_container() {
            let id = required("CNI_CONTAINERID")?;
            validate_container_id(&id)?;
            let ifname = required("CNI_IFNAME")?;
            validate_ifname(&ifname)?;
            (id, ifname)
        } else {
            (String::new(), String::new())
        };
        let netns = non_empty("CNI_NETNS");
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(cni_err!(
                InvalidEnvironment,
                "CNI_NETNS is not set",
                "required for CNI_COMMAND={command:?}"
            ));
        }
        let args = if command == Command::Version {
            CniArgs::default()
        } else {
            CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?
        };
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            cni_path: get("CNI_PATH").unwrap_or_default(),
        })
    }

    /// Reads the real process environment.
    pub fn from_process() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

/// Container IDs follow the spec's pattern `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`; they become file
/// contents and interface aliases, so nothing else may slip through.
pub fn validate_container_id(id: &str) -> Result<()> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(cni_err!(
            InvalidEnvironment,
            "invalid CNI_CONTAINERID",
            "{id:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        ))
    }
}

/// Interface names as the kernel accepts them: 1–15 bytes, no `/`, `:` or white space.
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(cni_err!(
            InvalidEnvironment,
            "invalid CNI_IFNAME",
            "{name:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_id_ifname_netns() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        let e = env(&base).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns.as_deref(), Some("/var/run/netns/x"));
        for skip in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let v: Vec<_> = base.iter().copied().filter(|(k, _)| *k != skip).collect();
            let err = env(&v).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnvironment, "without {skip}");
            assert!(err.msg.contains(skip), "{err}");
        }
    }

    #[test]
    fn del_without_netns_is_fine_and_gc_needs_no_container() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert!(e.netns.is_none());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "garbage")]).is_ok());
    }

    #[test]
    fn bad_ids_and_ifnames_are_code_4() {
        for id in ["-a", "a/b", "a b", "ä"] {
            assert_eq!(
                validate_container_id(id).unwrap_err().code,
                ErrorCode::InvalidEnvironment
            );
        }
        for n in ["", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(validate_ifname(n).is_err(), "{n:?}");
        }
        assert!(validate_ifname("eth0").is_ok());
    }

    #[test]
    fn cni_args_parse_known_unknown_and_ips() {
        let a = CniArgs::parse("K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns;IP=10.0.0.5").unwrap();
        assert_eq!(a.ips, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert!(CniArgs::parse("FOO=1").is_err());
        assert!(CniArgs::parse("FOO=1;IgnoreUnknown=1").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=maybe").is_err());
        assert!(CniArgs::parse("noequals").is_err());
        assert!(CniArgs::parse("=v").is_err());
        assert!(CniArgs::parse("IP=10.0.0.300").is_err());
        assert!(CniArgs::parse("").unwrap().pairs.is_empty());
        assert!(CniArgs::parse(";;").unwrap().pairs.is_empty());
    }

    #[test]
    fn unknown_command_is_code_4() {
        assert_eq!(
            env(&[("CNI_COMMAND", "ADDD")]).unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
    }
}
