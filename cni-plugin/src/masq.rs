//! Masquerade for pod traffic leaving the cluster (`ipMasq`), with iptables in the node namespace.
//!
//! Unlike the reference plugin's chain per container, netlet installs one chain per network
//! matching the whole pod subnet: ADD then costs one `iptables -C` once the rules exist, and DEL
//! costs nothing. Traffic to the pod subnet and to `clusterCIDRs` is never NATed, so pods on other
//! nodes see the client pod's real IP.

use crate::cni_err;
use crate::error::Result;
use crate::naming::masq_chain;
use ipnetwork::IpNetwork;
use std::io::Write;
use std::process::{Command, Stdio};

fn tools(v4: bool) -> (&'static str, &'static str) {
    if v4 {
        ("iptables", "iptables-restore")
    } else {
        ("ip6tables", "ip6tables-restore")
    }
}

fn jump_rule(network: &str, pod: IpNetwork, chain: &str) -> Vec<String> {
    vec![
        "-s".into(),
        pod.to_string(),
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        format!("netlet masquerade for network {network}"),
        "-j".into(),
        chain.into(),
    ]
}

/// Serialises first-time installs across concurrent plugin processes, so two ADDs racing on a
/// fresh node cannot both append the POSTROUTING jump.
const LOCK_PATH: &str = "/run/netlet-cni-masq.lock";

/// The iptables-restore input that (re)writes the network's chain and its POSTROUTING jump.
pub fn restore_script(network: &str, subnet: IpNetwork, exclude: &[IpNetwork]) -> String {
    let chain = masq_chain(network);
    let multicast = if subnet.is_ipv4() {
        "224.0.0.0/4"
    } else {
        "ff00::/8"
    };
    let mut s = format!("*nat\n:{chain} - [0:0]\n");
    let pod = IpNetwork::new(subnet.network(), subnet.prefix()).expect("valid prefix");
    for dst in
        std::iter::once(&pod).chain(exclude.iter().filter(|e| e.is_ipv4() == subnet.is_ipv4()))
    {
        s += &format!("-A {chain} -d {dst} -j RETURN\n");
    }
    s += &format!("-A {chain} ! -d {multicast} -j MASQUERADE\n");
    let jump = jump_rule(network, pod, &chain)
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    s += &format!("-A POSTROUTING {jump}\nCOMMIT\n");
    s
}

/// Makes sure traffic from `subnet` leaving `exclude` is masqueraded; idempotent.
pub fn ensure(network: &str, subnet: IpNetwork, exclude: &[IpNetwork]) -> Result<()> {
    let (tables, restore) = tools(subnet.is_ipv4());
    let pod = IpNetwork::new(subnet.network(), subnet.prefix()).expect("valid prefix");
    let chain = masq_chain(network);
    let installed = || -> Result<bool> {
        Command::new(tables)
            .args(["-w", "-t", "nat", "-C", "POSTROUTING"])
            .args(jump_rule(network, pod, &chain))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .map_err(|e| cni_err!(Internal, format!("running {tables} for ipMasq"), "{e}"))
    };
    if installed()? {
        return Ok(());
    }
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(|e| cni_err!(IoFailure, "opening masquerade lock", "{LOCK_PATH}: {e}"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| cni_err!(IoFailure, "locking masquerade lock", "{LOCK_PATH}: {e}"))?;
    if installed()? {
        return Ok(());
    }
    let mut child = Command::new(restore)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cni_err!(Internal, format!("running {restore} for ipMasq"), "{e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(restore_script(network, subnet, exclude).as_bytes())
        .map_err(|e| cni_err!(Internal, format!("writing rules to {restore}"), "{e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| cni_err!(Internal, format!("waiting for {restore}"), "{e}"))?;
    if !out.status.success() {
        return Err(cni_err!(
            Internal,
            format!("installing masquerade rules for {subnet}"),
            "{restore}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_excludes_pod_subnet_and_cluster_cidrs() {
        let s = restore_script(
            "net",
            "10.244.1.7/24".parse().unwrap(),
            &[
                "10.244.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
        );
        let chain = masq_chain("net");
        assert!(
            s.contains(&format!("-A {chain} -d 10.244.1.0/24 -j RETURN")),
            "{s}"
        );
        assert!(
            s.contains(&format!("-A {chain} -d 10.244.0.0/16 -j RETURN")),
            "{s}"
        );
        assert!(!s.contains("fd00"), "other family excluded: {s}");
        assert!(s.contains(&format!("-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE")));
        assert!(s.contains("-A POSTROUTING -s 10.244.1.0/24 -m comment --comment \"netlet masquerade for network net\""));
        assert!(s.ends_with("COMMIT\n"));
    }
}
