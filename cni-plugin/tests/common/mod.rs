//! Shared helpers for the `netlet-cni` integration tests: run the real binary the way a container
//! runtime does, inside a throw-away "node" network namespace, and inspect what it left behind.
//!
//! Safety: nothing here touches the host's root network namespace. Every test builds a [`Net`],
//! which owns a fresh node namespace (deleted on drop, also on panic) and a temporary directory
//! for the IPAM store and the plugin's log. Plugin processes are started with `setns` into the
//! node namespace before `exec`, so the bridge, veths, sysctls and iptables rules they create
//! exist only there. Container namespaces are separate [`NetNs`] guards owned by each test.

// The only unsafe code is `setns` in a `pre_exec` hook; see `command_in`.
#![allow(unsafe_code)]
// Every test crate includes this module but uses only part of it.
#![allow(dead_code)]

use integration::NetNs;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The plugin binary under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_netlet-cni");
/// Debian's reference plugins (host-local, portmap, tuning, ...), up to CNI 1.0.0.
pub const REF_PLUGINS: &str = "/usr/lib/cni";
/// Interface name used for every container attachment in these tests.
pub const IFNAME: &str = "eth0";
/// How long one plugin invocation may take before the test kills it and fails.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A command that runs `program` with its network namespace switched to `ns` before `exec`.
///
/// Unlike `ip netns exec`, this changes nothing but the network namespace, exactly as a runtime
/// that execs a plugin from the node namespace does.
pub fn command_in(ns: &NetNs, program: &str) -> Command {
    let f =
        File::open(ns.path()).unwrap_or_else(|e| panic!("opening {}: {e}", ns.path().display()));
    let mut c = Command::new(program);
    // SAFETY: the hook runs in the forked child before exec and only calls setns(2), a plain
    // system call that neither allocates nor takes locks. The file it reads the descriptor from
    // is owned by the closure, so the descriptor stays open until the Command is dropped.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// What one plugin invocation printed and how it exited.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Exit code (`-1` when killed by a signal).
    pub code: i32,
    /// Raw stdout.
    pub stdout: String,
    /// Raw stderr.
    pub stderr: String,
    /// stdout parsed as JSON; `Null` when empty or not JSON.
    pub json: Value,
}

impl Reply {
    fn from_output(out: std::process::Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        Reply {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr,
            json,
        }
    }

    /// Asserts success and returns the parsed stdout.
    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self.assert_no_panic();
        &self.json
    }

    /// Asserts the invocation failed with the spec's error JSON carrying `code`; returns `msg`.
    #[track_caller]
    pub fn err(&self, code: u64) -> String {
        assert_ne!(
            self.code, 0,
            "expected error {code}, got success: {}",
            self.stdout
        );
        self.assert_no_panic();
        assert!(
            self.json.is_object(),
            "error output is not JSON: stdout={:?} stderr={:?}",
            self.stdout,
            self.stderr
        );
        assert_eq!(
            self.json["code"].as_u64(),
            Some(code),
            "wrong error code: {}",
            self.stdout
        );
        let msg = self.json["msg"]
            .as_str()
            .unwrap_or_else(|| panic!("error JSON has no msg: {}", self.stdout));
        assert!(!msg.is_empty(), "empty msg: {}", self.stdout);
        msg.to_string()
    }

    /// Fails when the process panicked (a panic is never a valid CNI answer).
    #[track_caller]
    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "plugin panicked: {}",
            self.stderr
        );
    }
}

/// Starts `program` in `ns` with exactly `env` (plus `PATH`) and `stdin` fed and closed.
pub fn spawn_in(ns: &NetNs, program: &str, env: &[(&str, &str)], stdin: &[u8]) -> Child {
    let mut c = command_in(ns, program);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin piped");
    // A child killed early closes its end; EPIPE is then expected and harmless.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child
}

/// Waits for `child` (killing it by PID after [`PLUGIN_TIMEOUT`]) and collects its output.
pub fn finish(mut child: Child) -> Reply {
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("reaping");
                panic!(
                    "plugin timed out after {PLUGIN_TIMEOUT:?}: stdout={} stderr={}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Err(e) => panic!("waiting for plugin: {e}"),
        }
    }
    Reply::from_output(child.wait_with_output().expect("collecting output"))
}

/// Runs `program` in `ns` to completion; see [`spawn_in`].
pub fn exec_in(ns: &NetNs, program: &str, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
    finish(spawn_in(ns, program, env, stdin))
}

/// A reference plugin from [`REF_PLUGINS`].
pub fn ref_plugin(name: &str) -> String {
    format!("{REF_PLUGINS}/{name}")
}

/// `a` with the keys of `b` set on it (shallow merge of two JSON objects).
pub fn merged(a: &Value, b: Value) -> Value {
    let mut out = a.clone();
    let o = out.as_object_mut().expect("config is an object");
    for (k, v) in b.as_object().expect("overlay is an object") {
        o.insert(k.clone(), v.clone());
    }
    out
}

/// The usual bridge config with the built-in IPAM over one subnet.
pub fn bridge_conf(version: &str, name: &str, bridge: &str, subnet: &str) -> Value {
    assert!(bridge.len() <= 15, "bridge name {bridge} too long");
    json!({
        "cniVersion": version,
        "name": name,
        "type": "netlet",
        "bridge": bridge,
        "isDefaultGateway": true,
        "hairpinMode": true,
        "ipam": {"type": "netlet", "ranges": [[{"subnet": subnet}]]},
    })
}

/// One host-side veth as `ip -d link` reports it in the node namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVeth {
    /// Interface name.
    pub name: String,
    /// `ifalias`, where netlet records the attachment.
    pub alias: Option<String>,
    /// Bridge it is a port of.
    pub master: Option<String>,
    /// Bridge port hairpin flag.
    pub hairpin: Option<bool>,
}

/// Parses `ip -j ...` output.
#[track_caller]
pub fn ip_json(ns: &NetNs, args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ns.run_ok("ip", &full);
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {full:?} printed bad JSON {out}: {e}"))
}

/// Every veth link in `ns`.
pub fn veths(ns: &NetNs) -> Vec<HostVeth> {
    let v = ip_json(ns, &["-d", "link", "show", "type", "veth"]);
    v.as_array()
        .expect("array")
        .iter()
        .map(|l| HostVeth {
            name: l["ifname"].as_str().unwrap_or_default().to_string(),
            alias: l["ifalias"].as_str().map(str::to_string),
            master: l["master"].as_str().map(str::to_string),
            hairpin: l["linkinfo"]["info_slave_data"]["hairpin"].as_bool(),
        })
        .collect()
}

/// Whether a link named `name` exists in `ns`.
pub fn link_exists(ns: &NetNs, name: &str) -> bool {
    ns.run("ip", &["link", "show", "dev", name])
        .status
        .success()
}

/// The IPv4 addresses (with prefix) on `dev` in `ns`.
pub fn addrs_v4(ns: &NetNs, dev: &str) -> Vec<String> {
    let v = ip_json(ns, &["-4", "addr", "show", "dev", dev]);
    v.as_array()
        .expect("array")
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Pings `ip` from inside `ns`, up to three tries of one packet with a 2 s timeout.
#[track_caller]
pub fn ping(ns: &NetNs, ip: &str) {
    let mut last = String::new();
    for _ in 0..3 {
        let out = ns.run("ping", &["-c1", "-W2", ip]);
        if out.status.success() {
            return;
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    panic!("ping {ip} from {} failed 3 times: {last}", ns.name());
}

/// Whether one ping of `ip` from `ns` gets an answer within 1 s.
pub fn ping_once(ns: &NetNs, ip: &str) -> bool {
    ns.run("ping", &["-c1", "-W1", ip]).status.success()
}

/// The IP of the first entry of a result's `ips` (without the prefix).
#[track_caller]
pub fn result_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no ips[0].address: {result}"));
    a.split('/').next().unwrap().to_string()
}

/// A network under test: a node namespace, a temp dir for the IPAM store and log, and a config.
pub struct Net {
    /// The "node" namespace where the plugin runs (bridge, host veths, iptables live here).
    pub node: NetNs,
    /// Holds `ipam/` (the `dataDir`) and `plugin.log`; removed on drop.
    pub dir: TempDir,
    /// The network config template (`logFile` and `ipam.dataDir` filled in).
    pub conf: Value,
}

impl Net {
    /// Creates the node namespace and temp dir and completes `conf` with `logFile` and, when
    /// the config has an `ipam` section without one, `ipam.dataDir`.
    pub fn new(tag: &str, mut conf: Value) -> Self {
        let node = NetNs::new(tag);
        let dir = tempfile::Builder::new()
            .prefix("netlet-cni-test-")
            .tempdir()
            .expect("tempdir");
        let o = conf.as_object_mut().expect("config object");
        o.insert(
            "logFile".into(),
            json!(dir.path().join("plugin.log").display().to_string()),
        );
        if let Some(ipam) = o.get_mut("ipam").and_then(Value::as_object_mut) {
            ipam.entry("dataDir")
                .or_insert_with(|| json!(dir.path().join("ipam").display().to_string()));
        }
        Net { node, dir, conf }
    }

    /// The network name.
    pub fn name(&self) -> &str {
        self.conf["name"].as_str().expect("name")
    }

    /// The `ipam.dataDir` of the config.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.conf["ipam"]["dataDir"].as_str().expect("dataDir"))
    }

    /// `<dataDir>/<network>`, where allocation files live.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir().join(self.name())
    }

    /// The allocation files: IP → file content.
    pub fn allocations(&self) -> BTreeMap<IpAddr, String> {
        let mut out = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(self.store_dir()) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(ip) = name.parse::<IpAddr>() {
                out.insert(ip, std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Names in the store directory that are neither allocations nor `lock`/`last_reserved_ip.*`.
    pub fn stray_store_files(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.store_dir()) else {
            return vec![];
        };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n != "lock" && !n.starts_with("last_reserved_ip.") && n.parse::<IpAddr>().is_err()
            })
            .collect()
    }

    /// The plugin's log file content (empty if none was written).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugin.log")).unwrap_or_default()
    }

    /// The host veth name netlet derives for container `id` on [`IFNAME`].
    pub fn host_veth(&self, id: &str) -> String {
        netlet_cni::naming::host_veth(self.name(), id, IFNAME)
    }

    /// The alias netlet puts on that host veth.
    pub fn alias(&self, id: &str) -> String {
        netlet_cni::naming::alias(self.name(), id, IFNAME)
    }

    /// Host veths in the node namespace carrying a netlet alias of this network.
    pub fn netlet_veths(&self) -> Vec<HostVeth> {
        let prefix = format!("netlet:{}:", self.name());
        veths(&self.node)
            .into_iter()
            .filter(|v| v.alias.as_deref().is_some_and(|a| a.starts_with(&prefix)))
            .collect()
    }

    /// Runs `program` in the node namespace with `CNI_COMMAND=cmd`, `CNI_PATH`, `env` and
    /// `conf` on stdin.
    pub fn invoke(&self, program: &str, cmd: &str, env: &[(&str, &str)], conf: &Value) -> Reply {
        finish(self.spawn(program, cmd, env, conf))
    }

    /// Like [`Net::invoke`] but returns the running child.
    pub fn spawn(&self, program: &str, cmd: &str, env: &[(&str, &str)], conf: &Value) -> Child {
        let mut full = vec![("CNI_COMMAND", cmd), ("CNI_PATH", REF_PLUGINS)];
        full.extend_from_slice(env);
        spawn_in(&self.node, program, &full, conf.to_string().as_bytes())
    }

    /// Our plugin, `cmd` for container `id` in `ns` (or no `CNI_NETNS`), with `conf`.
    pub fn call(&self, cmd: &str, id: &str, netns: Option<&Path>, conf: &Value) -> Reply {
        let ns = netns.map(|p| p.display().to_string());
        let mut env = vec![("CNI_CONTAINERID", id), ("CNI_IFNAME", IFNAME)];
        if let Some(p) = ns.as_deref() {
            env.push(("CNI_NETNS", p));
        }
        self.invoke(PLUGIN, cmd, &env, conf)
    }

    /// Starts an ADD of container `id` into `ns` without waiting for it.
    pub fn spawn_add(&self, id: &str, ns: &NetNs) -> Child {
        let p = ns.path().display().to_string();
        self.spawn(
            PLUGIN,
            "ADD",
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", IFNAME),
                ("CNI_NETNS", &p),
            ],
            &self.conf,
        )
    }

    /// ADD with the template config.
    pub fn try_add(&self, id: &str, ns: &NetNs) -> Reply {
        self.call("ADD", id, Some(&ns.path()), &self.conf)
    }

    /// ADD that must succeed; returns the result.
    #[track_caller]
    pub fn add(&self, id: &str, ns: &NetNs) -> Value {
        let r = self.try_add(id, ns);
        r.ok().clone()
    }

    /// DEL of container `id` with the template config.
    pub fn del(&self, id: &str, netns: Option<&Path>) -> Reply {
        self.call("DEL", id, netns, &self.conf)
    }

    /// CHECK of container `id` in `ns` with `prev` as `prevResult`.
    pub fn check(&self, id: &str, ns: &NetNs, prev: &Value) -> Reply {
        let conf = merged(&self.conf, json!({"prevResult": prev}));
        self.call("CHECK", id, Some(&ns.path()), &conf)
    }

    /// GC keeping only the attachments of containers `valid` (on [`IFNAME`]).
    pub fn gc(&self, valid: &[&str]) -> Reply {
        let list: Vec<Value> = valid
            .iter()
            .map(|id| json!({"containerID": id, "ifname": IFNAME}))
            .collect();
        let conf = merged(&self.conf, json!({"cni.dev/valid-attachments": list}));
        self.invoke(PLUGIN, "GC", &[], &conf)
    }

    /// STATUS with the template config.
    pub fn status(&self) -> Reply {
        self.invoke(PLUGIN, "STATUS", &[], &self.conf)
    }
}

/// Polls `cond` every 50 ms for up to 10 s; panics naming `what` if it never holds.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Net {
    /// After DEL or GC of `id`: its host veth is off the bridge at once and gone soon after
    /// (DEL may hand the unregistering of the link to a background reaper), and so is the
    /// container end when `container` is given.
    #[track_caller]
    pub fn assert_veth_released(&self, id: &str, container: Option<&NetNs>) {
        let name = self.host_veth(id);
        if let Some(v) = veths(&self.node).into_iter().find(|v| v.name == name) {
            assert_eq!(v.master, None, "{id}: {name} still a bridge port: {v:?}");
        }
        wait_until(&format!("{id}: host veth {name} removed"), || {
            !link_exists(&self.node, &name)
        });
        if let Some(c) = container {
            wait_until(&format!("{id}: {IFNAME} removed from {}", c.name()), || {
                !link_exists(c, IFNAME)
            });
        }
    }

    /// No host veth of this network is a bridge port any more, and soon none exists at all.
    #[track_caller]
    pub fn assert_no_veths_left(&self) {
        let attached: Vec<_> = self
            .netlet_veths()
            .into_iter()
            .filter(|v| v.master.is_some())
            .collect();
        assert!(attached.is_empty(), "still bridge ports: {attached:?}");
        wait_until("every host veth of the network removed", || {
            self.netlet_veths().is_empty()
        });
    }
}
