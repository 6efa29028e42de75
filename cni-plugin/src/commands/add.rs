//! ADD: bridge, veth pair, addresses, routes, hairpin, forwarding, masquerade.
//!
//! IPAM runs first (no kernel state yet), then links; if anything fails after the allocation,
//! [`rollback`] releases the address and deletes the veth, so a failed ADD leaves nothing behind.

use super::ipam::Ipam;
use crate::cni_err;
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::Result;
use crate::link::{self, Netlink};
use crate::result::{CniResult, Interface, Route};
use crate::{masq, naming, netns, sysctl};
use ipnetwork::IpNetwork;
use std::net::IpAddr;
use std::os::fd::AsFd;

/// Runs ADD and returns the result to print.
pub async fn run(conf: &NetConf, env: &CniEnv) -> Result<CniResult> {
    let netns_path = env.netns.as_deref().expect("validated: ADD has CNI_NETNS");
    let ns = netns::open(netns_path)?;
    let host = Netlink::connect()?;
    let cont = Netlink::connect_in(&ns, netns_path)?;
    let host_veth = naming::host_veth(&conf.name, &env.container_id, &env.ifname);
    // A second ADD of a live attachment must fail before touching anything: the rollback of a
    // later failure would otherwise release the live attachment's IP and veth. A detached pair
    // of this same attachment (DEL done, reaper not yet finished) is deleted now instead.
    if cont.link_by_name(&env.ifname).await?.is_some()
        && !remove_pending_reap(&host, &conf.name, env, &host_veth).await?
    {
        return Err(cni_err!(
            Internal,
            format!("interface {} already exists in the container", env.ifname),
            "container {} netns {netns_path}",
            env.container_id
        ));
    }
    let ipam = Ipam::select(conf)?;
    tracing::debug!("ADD: pre-checks done");
    let allocated = ipam.add(conf, env)?;
    tracing::debug!(ips = ?allocated.ips, "ADD: IPAM done");
    match attach(conf, env, &host, &cont, &ns, &host_veth, allocated).await {
        Ok(r) => Ok(r),
        Err(e) => {
            rollback(conf, env, &ipam, &host, &host_veth).await;
            Err(e)
        }
    }
}

/// Deletes `host_veth` if it is a detached (DEL'd, awaiting the reaper) link of this very
/// attachment; `Ok(false)` if it is live or not ours.
async fn remove_pending_reap(
    host: &Netlink,
    network: &str,
    env: &CniEnv,
    host_veth: &str,
) -> Result<bool> {
    let Some(l) = host.link_by_name(host_veth).await? else {
        return Ok(false);
    };
    let ours =
        l.alias.as_deref() == Some(naming::alias(network, &env.container_id, &env.ifname).as_str());
    if ours && l.controller.is_none() && !l.up {
        host.delete_link(host_veth).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Best-effort undo of a failed ADD; the original error is what the runtime needs to see.
async fn rollback(conf: &NetConf, env: &CniEnv, ipam: &Ipam, host: &Netlink, host_veth: &str) {
    if let Err(e) = host.delete_link(host_veth).await {
        tracing::warn!(%e, "rollback: deleting {host_veth}");
    }
    if let Err(e) = ipam.del(conf, env) {
        tracing::warn!(%e, "rollback: releasing IPs of {}", env.container_id);
    }
}

/// The gateway of an allocated address: the IPAM's, or the subnet's first address.
fn gateway_of(addr: IpNetwork, gw: Option<IpAddr>) -> IpAddr {
    gw.unwrap_or_else(|| {
        let net = IpNetwork::new(addr.network(), addr.prefix()).expect("valid prefix");
        match net.network() {
            IpAddr::V4(v) => IpAddr::V4((u32::from(v) + 1).into()),
            IpAddr::V6(v) => IpAddr::V6((u128::from(v) + 1).into()),
        }
    })
}

#[allow(clippy::too_many_arguments)]
async fn attach(
    conf: &NetConf,
    env: &CniEnv,
    host: &Netlink,
    cont: &Netlink,
    ns: &std::fs::File,
    host_veth: &str,
    mut res: CniResult,
) -> Result<CniResult> {
    let br = host
        .ensure_bridge(&conf.bridge, conf.mtu, conf.promisc_mode)
        .await?;
    tracing::debug!("ADD: bridge ready");
    if conf.is_gateway {
        for ip in &res.ips {
            let gw = gateway_of(ip.address, ip.gateway);
            let gw_net = IpNetwork::new(gw, ip.address.prefix())
                .map_err(|e| cni_err!(InvalidNetworkConfig, "invalid gateway", "{gw}: {e}"))?;
            if conf.force_address {
                host.replace_bridge_address(br.index, &br.name, gw_net)
                    .await?;
            } else {
                host.add_address(br.index, &br.name, gw_net).await?;
            }
        }
    }
    let host_mac = link::random_mac();
    let cont_mac = match &conf.requested_mac {
        Some(m) => link::parse_mac(m)?,
        None => link::random_mac(),
    };
    let alias = naming::alias(&conf.name, &env.container_id, &env.ifname);
    let mtu = conf.mtu;
    let create = || {
        host.create_veth(
            host_veth,
            &host_mac,
            br.index,
            mtu,
            &env.ifname,
            &cont_mac,
            ns.as_fd(),
        )
    };
    if !create().await? {
        // The container name was free a moment ago, so the host name is taken: a stale host
        // end from an interrupted ADD of this same attachment (the name is derived from it).
        host.delete_link(host_veth).await?;
        if !create().await? {
            return Err(cni_err!(
                Internal,
                format!("creating veth {host_veth}: name still taken")
            ));
        }
    }
    tracing::debug!("ADD: veth created");
    host.set_port_attrs(host_veth, &alias, conf.hairpin_mode)
        .await?;
    let c = cont.link_by_name(&env.ifname).await?.ok_or_else(|| {
        cni_err!(
            Internal,
            format!("container interface {} vanished after creation", env.ifname)
        )
    })?;
    for ip in &res.ips {
        cont.add_address(c.index, &c.name, ip.address).await?;
    }
    cont.set_up(c.index, &c.name).await?;
    let mut routes: Vec<Route> = vec![];
    if conf.is_default_gateway {
        for ip in &res.ips {
            let any = if ip.address.is_ipv4() {
                "0.0.0.0/0"
            } else {
                "::/0"
            };
            let gw = gateway_of(ip.address, ip.gateway);
            routes.push(Route::via(any.parse().expect("valid"), Some(gw)));
        }
    }
    for r in &res.routes {
        let mut r = r.clone();
        if r.gw.is_none() {
            r.gw = res
                .ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == r.dst.is_ipv4())
                .map(|ip| gateway_of(ip.address, ip.gateway));
        }
        if !routes.iter().any(|x| x.dst == r.dst) {
            routes.push(r);
        }
    }
    for r in &routes {
        cont.add_route(c.index, &c.name, r).await?;
    }
    tracing::debug!("ADD: container side configured");
    for v4 in [true, false] {
        if res.ips.iter().any(|ip| ip.address.is_ipv4() == v4) {
            sysctl::enable_forwarding(v4)?;
        }
    }
    if conf.ip_masq {
        for ip in &res.ips {
            masq::ensure(&conf.name, ip.address, &conf.cluster_cidrs)?;
        }
    }
    res.interfaces = vec![
        Interface {
            name: br.name.clone(),
            mac: br.mac.clone(),
            ..Default::default()
        },
        Interface {
            name: host_veth.to_string(),
            mac: link::format_mac(&host_mac),
            mtu,
            ..Default::default()
        },
        Interface {
            name: env.ifname.clone(),
            mac: c.mac.clone(),
            sandbox: env.netns.clone().unwrap_or_default(),
            mtu: c.mtu,
        },
    ];
    for ip in &mut res.ips {
        ip.interface = Some(2);
        if ip.gateway.is_none() && conf.is_gateway {
            ip.gateway = Some(gateway_of(ip.address, None));
        }
    }
    res.routes = routes;
    if res.dns.is_empty() {
        res.dns = conf.dns.clone();
    }
    Ok(res)
}
