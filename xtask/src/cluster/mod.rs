//! `cargo xtask up` / `down`: a whole netlet cluster on this machine, every piece of it inside
//! network namespaces this task creates (all named `nlt-up-…`).
//!
//! Layout (see `underlay.rs`): namespace `nlt-up-lan` holds the LAN bridge; each node `K` is a
//! namespace `nlt-up-node-K` with `eth0` = `10.200.0.(10+K)/24` on that bridge, running its own
//! containerd (all state under the cluster dir) and `netlet-agent`; `nlt-up-outside` is a host
//! outside the cluster (`10.200.0.250`) for masquerade checks. The control plane runs in
//! namespace `nlt-up-cp` (`10.200.0.2` on the LAN), its apiserver listening on 127.0.0.1:6443
//! there; it reaches each agent's node API (`kubectl logs`, `exec`) at the node's address on
//! port 10250, as kube-apiserver reaches kubelets. One forwarder process opens `127.0.0.1:6443`
//! inside every node namespace and a free port on the host's 127.0.0.1 (a listening socket,
//! not an address or route) and relays them to the apiserver, so agents and the host's
//! `kubectl` reach the API without the host namespace gaining any address, route or rule.
//!
//! Everything the cluster writes lives in `target/netlet-up/`; `state.json` there records the
//! PIDs to stop, so `down` works after `up` crashed halfway and is idempotent.

mod down;
pub mod forward;
pub mod restart;
mod state;
pub mod underlay;
mod up;

use std::path::PathBuf;

use crate::util;

pub use down::down;
pub use up::up;

/// Options of `cargo xtask up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=MAX_NODES as i64))]
    pub nodes: u8,
    /// Build and run release binaries (slower to build, faster to run).
    #[arg(long)]
    pub release: bool,
    /// Extra argument for every node's netlet-agent, repeatable
    /// (e.g. `--agent-arg=--proxy-backend=ebpf`).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

/// The directory holding everything of the cluster.
pub fn cluster_dir() -> PathBuf {
    util::target_dir().join("netlet-up")
}

/// Node `k`'s static pod manifest directory (the agent's `--pod-manifest-path`).
pub fn manifests_dir(k: u8) -> PathBuf {
    cluster_dir().join(format!("node-{k}")).join("manifests")
}

/// The cgroup node `k`'s pods live under (removed by `down`).
pub fn cgroup_parent(k: u8) -> String {
    format!("/{}node-{k}", ns_prefix())
}

/// The most nodes `up` starts (node IPs are `10.200.0.11` upwards on a /24).
pub const MAX_NODES: u8 = 20;

/// The environment variable that renames the cluster's namespaces (`nlt-<word>-`), so that two
/// checkouts (or a developer's cluster and a CI run) can each run a cluster on one machine.
pub const NS_PREFIX_ENV: &str = "NETLET_UP_PREFIX";
/// The default prefix of every namespace the cluster creates.
pub const DEFAULT_NS_PREFIX: &str = "nlt-up-";

/// The prefix of every namespace (and cgroup) the cluster creates: `$NETLET_UP_PREFIX` if it is
/// a valid `nlt-<letters/digits>-`, else the default. One word between the dashes so that one
/// cluster's prefix is never a prefix of another's.
pub fn ns_prefix() -> String {
    std::env::var(NS_PREFIX_ENV)
        .ok()
        .filter(|p| valid_prefix(p))
        .unwrap_or_else(|| DEFAULT_NS_PREFIX.to_string())
}

/// Whether `p` is `nlt-<word>-` with a non-empty alphanumeric lowercase word.
fn valid_prefix(p: &str) -> bool {
    p.strip_prefix("nlt-")
        .and_then(|r| r.strip_suffix('-'))
        .is_some_and(|w| {
            !w.is_empty()
                && w.len() <= 8
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}
/// The apiserver's port in the control plane's namespace, and the port the forwarder listens on
/// inside each node namespace (127.0.0.1).
pub const APISERVER_PORT: u16 = 6443;

/// The PID of the running cluster's process with `role` (e.g. `agent node-1`), if it is alive.
pub fn pid_of(role: &str) -> Option<u32> {
    let state = state::State::load(&cluster_dir().join("state.json")).ok()?;
    state
        .processes
        .iter()
        .find(|p| p.role == role && state::is_ours(p.pid, &p.marker))
        .map(|p| p.pid)
}

#[cfg(test)]
mod tests {
    use super::valid_prefix;

    #[test]
    fn prefix_must_be_one_nlt_word() {
        assert!(valid_prefix("nlt-up-"));
        assert!(valid_prefix("nlt-ci2-"));
        assert!(!valid_prefix("nlt-up-a-"), "would overlap nlt-up-");
        assert!(!valid_prefix("nlt--"));
        assert!(!valid_prefix("up-"));
        assert!(!valid_prefix("nlt-UP-"));
        assert!(!valid_prefix("nlt-up"));
    }
}
