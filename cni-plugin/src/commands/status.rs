//! STATUS (1.1): can an ADD succeed right now?

use super::ipam::Ipam;
use crate::cni_err;
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::Result;

/// Runs STATUS: the IPAM must have a free address, and iptables must exist when `ipMasq` needs it.
pub fn run(conf: &NetConf, env: &CniEnv) -> Result<()> {
    Ipam::select(conf)?.status(conf, env)?;
    if conf.ip_masq && !on_path("iptables-restore") {
        return Err(cni_err!(
            PluginNotAvailable,
            "ipMasq is set but iptables-restore is not installed"
        ));
    }
    Ok(())
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}
