//! DEL: release the addresses and delete the veth; idempotent and best-effort.
//!
//! Every step runs even if an earlier one failed (a missing netns must not keep the IP
//! allocated), and "already gone" is success. The host end's name is derived from the
//! attachment, so the container namespace is not needed at all. The veth is detached at once
//! and unregistered by a background reaper (see [`crate::reaper`]).

use super::ipam::Ipam;
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::Result;
use crate::link::Netlink;
use crate::naming;

/// Runs DEL.
pub async fn run(conf: &NetConf, env: &CniEnv) -> Result<()> {
    let mut first_err = None;
    let ipam_res = Ipam::select(conf).and_then(|ipam| ipam.del(conf, env));
    if let Err(e) = ipam_res {
        tracing::warn!(%e, "DEL: releasing IPs");
        first_err.get_or_insert(e);
    }
    let host_veth = naming::host_veth(&conf.name, &env.container_id, &env.ifname);
    let link_res = match Netlink::connect() {
        Ok(host) => match host.detach(&host_veth).await {
            Ok(true) => crate::reaper::reap_later(&host, &host_veth).await,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if let Err(e) = link_res {
        tracing::warn!(%e, "DEL: deleting {host_veth}");
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}
