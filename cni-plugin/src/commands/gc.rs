//! GC (1.1): release every allocation and host veth of this network whose attachment is not in
//! `cni.dev/valid-attachments` — what cleans leaks after a runtime or node crash.

use super::ipam::Ipam;
use crate::cni_err;
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::Result;
use crate::link::{LinkInfo, Netlink};
use crate::naming;

/// Whether a host link belongs to this network and to no valid attachment.
fn is_stale(
    l: &LinkInfo,
    conf: &NetConf,
    bridge: Option<u32>,
    valid: &[(String, String)],
    valid_names: &[String],
) -> bool {
    match l.alias.as_deref().and_then(naming::parse_alias) {
        Some((net, id, ifname)) => {
            net == conf.name && !valid.iter().any(|(v, f)| v == id && f == ifname)
        }
        // An ADD killed between creating the veth and labelling it leaves an unaliased port of
        // our name shape on our bridge; names derived from valid attachments are kept.
        None => {
            l.alias.is_none()
                && bridge.is_some()
                && l.controller == bridge
                && naming::is_host_veth_name(&l.name)
                && !valid_names.contains(&l.name)
        }
    }
}

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
    let links = host.links().await?;
    let bridge = links
        .iter()
        .find(|l| l.name == conf.bridge)
        .map(|l| l.index);
    let valid_names: Vec<String> = valid
        .iter()
        .map(|(id, ifname)| naming::host_veth(&conf.name, id, ifname))
        .collect();
    for l in &links {
        if is_stale(l, conf, bridge, valid, &valid_names) {
            tracing::info!("GC: deleting {} (alias {:?})", l.name, l.alias);
            if let Err(e) = host.delete_link(&l.name).await {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
