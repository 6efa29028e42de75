//! Which IPAM serves a network: none, the built-in allocator, or a delegated plugin.
//!
//! The bridge commands never care which one runs; they call these four functions.

use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::Result;
use crate::ipam::{self, IpamConfig, IpamRequest};
use crate::result::CniResult;

/// The IPAM choice for one invocation.
pub enum Ipam {
    /// No `ipam` section: an L2-only attachment without addresses.
    None,
    /// `"type": "netlet"`: the built-in host-local compatible allocator.
    Builtin(IpamConfig),
    /// Any other type: the plugin of that name on `CNI_PATH`.
    Delegated(String),
}

/// The `ipam.type` that selects the built-in allocator.
pub const BUILTIN: &str = "netlet";

impl Ipam {
    /// Picks the IPAM from the config.
    pub fn select(conf: &NetConf) -> Result<Self> {
        Ok(match (conf.ipam_type()?, &conf.ipam) {
            (None, _) | (_, None) => Self::None,
            (Some(BUILTIN), Some(v)) => Self::Builtin(IpamConfig::from_json(v)?),
            (Some(other), _) => Self::Delegated(other.to_string()),
        })
    }

    fn delegate(&self, conf: &NetConf, env: &CniEnv, command: &str) -> Result<Option<CniResult>> {
        let Self::Delegated(plugin) = self else {
            return Ok(None);
        };
        ipam::delegate::exec(plugin, &env.cni_path, command, &[], &conf.raw)
            .map_err(|e| e.context(format!("IPAM plugin {plugin} {command}")))
    }

    /// Allocates addresses for the attachment.
    pub fn add(&self, conf: &NetConf, env: &CniEnv) -> Result<CniResult> {
        match self {
            Self::None => Ok(CniResult::default()),
            Self::Builtin(cfg) => {
                let mut requested = conf.requested_ips.clone();
                requested.extend(env.args.ips.iter().copied());
                ipam::add(
                    cfg,
                    &IpamRequest {
                        network: &conf.name,
                        container_id: &env.container_id,
                        ifname: &env.ifname,
                        requested_ips: &requested,
                    },
                )
            }
            Self::Delegated(_) => Ok(self.delegate(conf, env, "ADD")?.unwrap_or_default()),
        }
    }

    /// Releases the attachment's addresses; nothing allocated is success.
    pub fn del(&self, conf: &NetConf, env: &CniEnv) -> Result<()> {
        match self {
            Self::None => Ok(()),
            Self::Builtin(cfg) => ipam::del(cfg, &conf.name, &env.container_id, &env.ifname),
            Self::Delegated(_) => self.delegate(conf, env, "DEL").map(drop),
        }
    }

    /// Verifies the attachment still owns the addresses of `prev`.
    pub fn check(&self, conf: &NetConf, env: &CniEnv, prev: &CniResult) -> Result<()> {
        match self {
            Self::None => Ok(()),
            Self::Builtin(cfg) => {
                let mine: Vec<_> = ipam::allocations(cfg, &conf.name)?
                    .into_iter()
                    .filter(|a| a.belongs_to(&env.container_id, &env.ifname))
                    .map(|a| a.ip)
                    .collect();
                for ip in &prev.ips {
                    if !mine.contains(&ip.address.ip()) {
                        return Err(crate::cni_err!(
                            Internal,
                            "CHECK failed",
                            "address {} is not allocated to container {} ({}) in network {}",
                            ip.address.ip(),
                            env.container_id,
                            env.ifname,
                            conf.name
                        ));
                    }
                }
                Ok(())
            }
            Self::Delegated(_) => self.delegate(conf, env, "CHECK").map(drop),
        }
    }

    /// Releases everything not in `valid`.
    pub fn gc(&self, conf: &NetConf, env: &CniEnv, valid: &[(String, String)]) -> Result<()> {
        match self {
            Self::None => Ok(()),
            Self::Builtin(cfg) => ipam::gc(cfg, &conf.name, valid).map(drop),
            Self::Delegated(_) => self.delegate(conf, env, "GC").map(drop),
        }
    }

    /// Whether an ADD could get an address now.
    pub fn status(&self, conf: &NetConf, env: &CniEnv) -> Result<()> {
        match self {
            Self::None => Ok(()),
            Self::Builtin(cfg) => ipam::status(cfg, &conf.name),
            Self::Delegated(_) => self.delegate(conf, env, "STATUS").map(drop),
        }
    }
}
