//! [`NetNs`]: a named network namespace that exists exactly as long as its guard.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace `nlt-<tag>-<pid>-<n>` created with `ip netns add` and deleted on drop.
///
/// Names carry the PID and a counter so tests run in parallel (and in parallel processes)
/// without colliding, and leftovers of a crashed run are recognisable by the `nlt-` prefix.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace with its loopback up. Panics (failing the test) on error.
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        let name = format!("nlt-{tag}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.run_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, the form `CNI_NETNS` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args` inside the namespace and returns its output, whatever the exit code.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    /// Runs `program args` inside the namespace, panicking with its stderr if it fails.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        run_ok(self.command(program).args(args))
    }

    /// Sets a sysctl inside the namespace (`/proc/sys/net` is per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run_ok("sysctl", &["-qw", &format!("{key}={value}")]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!(
                    "warning: deleting netns {}: {}",
                    self.name,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

/// Runs a prepared command, panicking with its stderr if it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair joining two namespaces, e.g. an "underlay" link between two test hosts.
/// Both ends disappear with their namespaces, so no separate guard is needed.
pub fn veth_between(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    a.run_ok(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    );
    a.run_ok("ip", &["link", "set", a_if, "up"]);
    b.run_ok("ip", &["link", "set", b_if, "up"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_exists_while_guard_lives() {
        let path;
        {
            let ns = NetNs::new("guard");
            path = ns.path();
            assert!(path.exists());
            let out = ns.run_ok("ip", &["-o", "link", "show", "lo"]);
            assert!(out.contains("UP") || out.contains("UNKNOWN"), "{out}");
        }
        assert!(!path.exists(), "{} still exists after drop", path.display());
    }

    #[test]
    fn veth_between_connects_two_namespaces() {
        let a = NetNs::new("va");
        let b = NetNs::new("vb");
        veth_between(&a, "x0", &b, "y0");
        a.run_ok("ip", &["addr", "add", "192.0.2.1/30", "dev", "x0"]);
        b.run_ok("ip", &["addr", "add", "192.0.2.2/30", "dev", "y0"]);
        a.run_ok("ping", &["-c1", "-W2", "192.0.2.2"]);
    }
}
