//! GC (1.1): release every allocation and host veth of this network whose attachment is not in
//! `cni.dev/valid-attachments` — what cleans leaks after a runtime or node crash.

use super::ipam::Ipam;
use crate::cni_err;
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::Result;
use crate::link::Netlink;
use crate::naming;

/// Runs GC.
pub async fn run(conf: &NetConf, env: &CniEnv) -> Result<()> {
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        cni_err!(
            InvalidNetworkConfig,
            "GC needs cni.dev/valid-attachments in the config"
        )
    })?;
    let mut first_err = Ipam::select(conf)
        .and_then(|i| i.gc(conf, env, valid))
        .err();
    let host = Netlink::connect()?;
    for l in host.links().await? {
        let Some((net, id, ifname)) = l.alias.as_deref().and_then(naming::parse_alias) else {
            continue;
        };
        let is_valid = valid
            .iter()
            .any(|(v_id, v_if)| v_id == id && v_if == ifname);
        if net == conf.name && !is_valid {
            tracing::info!("GC: deleting {} of stale attachment {id}/{ifname}", l.name);
            if let Err(e) = host.delete_link(&l.name).await {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
