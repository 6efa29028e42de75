//! CHECK: the attachment described by `prevResult` is still in place.

use super::ipam::Ipam;
use crate::cni_err;
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::Result;
use crate::link::Netlink;
use crate::{naming, netns};

/// Runs CHECK: IPAM still holds the IPs; bridge, host veth and container interface exist and
/// the container interface has the addresses and routes of `prevResult`.
pub async fn run(conf: &NetConf, env: &CniEnv) -> Result<()> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| cni_err!(InvalidNetworkConfig, "CHECK needs prevResult in the config"))?;
    let fail = |what: String| cni_err!(Internal, "CHECK failed", "{what}");
    Ipam::select(conf)?.check(conf, env, prev)?;
    let netns_path = env
        .netns
        .as_deref()
        .expect("validated: CHECK has CNI_NETNS");
    let ns = netns::open(netns_path)?;
    let host = Netlink::connect()?;
    let cont = Netlink::connect_in(&ns, netns_path)?;
    let br = host
        .link_by_name(&conf.bridge)
        .await?
        .ok_or_else(|| fail(format!("bridge {} does not exist", conf.bridge)))?;
    let host_veth = naming::host_veth(&conf.name, &env.container_id, &env.ifname);
    let hv = host
        .link_by_name(&host_veth)
        .await?
        .ok_or_else(|| fail(format!("host veth {host_veth} does not exist")))?;
    if hv.controller != Some(br.index) {
        return Err(fail(format!(
            "{host_veth} is not a port of bridge {}",
            conf.bridge
        )));
    }
    let c = cont
        .link_by_name(&env.ifname)
        .await?
        .ok_or_else(|| fail(format!("interface {} missing in {netns_path}", env.ifname)))?;
    if let Some(pi) = prev
        .interfaces
        .iter()
        .find(|i| i.name == env.ifname && !i.sandbox.is_empty())
    {
        if !pi.mac.is_empty() && !pi.mac.eq_ignore_ascii_case(&c.mac) {
            return Err(fail(format!(
                "{} has MAC {}, prevResult says {}",
                c.name, c.mac, pi.mac
            )));
        }
    }
    let addrs = cont.addresses(c.index).await?;
    for ip in &prev.ips {
        if !addrs.contains(&ip.address) {
            return Err(fail(format!(
                "address {} missing on {}",
                ip.address, c.name
            )));
        }
    }
    for r in &prev.routes {
        let have = cont.routes(c.index, r.dst.is_ipv4()).await?;
        let found = have.iter().any(|(dst, gw)| {
            dst.network() == r.dst.network()
                && dst.prefix() == r.dst.prefix()
                && (r.gw.is_none() || *gw == r.gw)
        });
        if !found {
            return Err(fail(format!(
                "route to {} via {:?} missing on {}",
                r.dst, r.gw, c.name
            )));
        }
    }
    Ok(())
}
