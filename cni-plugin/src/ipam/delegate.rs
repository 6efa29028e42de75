//! Delegation to an external IPAM plugin (`ipam.type` other than the built-in one).
//!
//! The CNI spec says the main plugin runs the IPAM plugin found on `CNI_PATH` with its own
//! environment and the same network config on stdin, and relays its result or error. Relaying the
//! child's error code unchanged matters: the runtime decides whether to retry (code 11) or give up
//! from that number, and the message tells the user which plugin failed and why.

use crate::cni_err;
use crate::error::{CniError, ErrorCode, Result};
use crate::result::CniResult;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Finds the executable `plugin` in the `:`-separated `cni_path` directories (code 7 if absent).
pub fn find_plugin(plugin: &str, cni_path: &str) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(cni_err!(
            InvalidNetworkConfig,
            format!("invalid IPAM plugin name {plugin:?}")
        ));
    }
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            cni_err!(
                InvalidNetworkConfig,
                format!("IPAM plugin {plugin:?} not found in CNI_PATH ({cni_path})")
            )
        })
}

/// Maps a numeric CNI error code back to ours; codes we do not know become `Internal`.
pub fn error_code_from_u32(code: u64) -> ErrorCode {
    use ErrorCode::*;
    [
        IncompatibleVersion,
        UnsupportedField,
        UnknownContainer,
        InvalidEnvironment,
        IoFailure,
        DecodingFailure,
        InvalidNetworkConfig,
        TryAgainLater,
        PluginNotAvailable,
        LimitedConnectivity,
    ]
    .into_iter()
    .find(|c| u64::from(c.as_u32()) == code)
    .unwrap_or(Internal)
}

/// Turns a failed plugin's stdout (the spec's error JSON) into a [`CniError`] with its code.
fn child_error(plugin: &str, status: &str, stdout: &[u8], stderr: &[u8]) -> CniError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(stdout).ok();
    let obj = parsed.as_ref().and_then(|v| v.as_object());
    match obj.and_then(|o| o.get("code").and_then(|c| c.as_u64()).map(|c| (o, c))) {
        Some((o, code)) => {
            let text = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let mut details = text("details");
            if error_code_from_u32(code) == ErrorCode::Internal && code != 100 {
                details = format!("{details} (plugin error code {code})")
                    .trim()
                    .to_string();
            }
            CniError::new(error_code_from_u32(code), text("msg"), details)
                .context(format!("IPAM plugin {plugin}"))
        }
        None => cni_err!(
            Internal,
            format!("IPAM plugin {plugin} failed ({status})"),
            "stdout: {:?}, stderr: {:?}",
            String::from_utf8_lossy(stdout).trim(),
            String::from_utf8_lossy(stderr).trim()
        ),
    }
}

/// Runs IPAM plugin `plugin` from `cni_path` with `CNI_COMMAND=command` and `stdin` (the full
/// network config). The child inherits this process's environment, then `env` on top.
///
/// Returns the parsed result for `ADD`, `None` for other commands. A failing plugin's error JSON
/// comes back as a [`CniError`] with the same code (unknown codes become `Internal`).
pub fn exec(
    plugin: &str,
    cni_path: &str,
    command: &str,
    env: &[(String, String)],
    stdin: &[u8],
) -> Result<Option<CniResult>> {
    let path = find_plugin(plugin, cni_path)?;
    let mut cmd = Command::new(&path);
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // ETXTBSY: a plugin binary just written (e.g. during an upgrade) may still be open for
    // writing in a process forked meanwhile; it clears as soon as that process execs.
    let mut attempts = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && attempts < 10 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => {
                break other.map_err(|e| {
                    cni_err!(
                        Internal,
                        format!("executing IPAM plugin {}", path.display()),
                        "{e}"
                    )
                })?
            }
        }
    };

    // Feed stdin from a thread so a child that writes before reading cannot deadlock us.
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || match pipe.write_all(&input) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other,
    });
    let out = child.wait_with_output().map_err(|e| {
        cni_err!(
            Internal,
            format!("waiting for IPAM plugin {}", path.display()),
            "{e}"
        )
    })?;
    let written = writer.join().unwrap_or(Ok(()));

    if !out.status.success() {
        return Err(child_error(
            plugin,
            &out.status.to_string(),
            &out.stdout,
            &out.stderr,
        ));
    }
    if let Err(e) = written {
        return Err(cni_err!(
            Internal,
            format!("writing config to IPAM plugin {plugin}"),
            "{e}"
        ));
    }
    if command != "ADD" {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        cni_err!(
            DecodingFailure,
            format!("IPAM plugin {plugin} printed an invalid result"),
            "{e}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    CniResult::from_json(&value)
        .map(Some)
        .map_err(|e| e.context(format!("IPAM plugin {plugin}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::store::Store;
    use std::path::Path;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn passes_command_and_stdin_and_parses_the_result() {
        let d = tempfile::tempdir().unwrap();
        // Echo back the command and the stdin's `name` so the test sees both arrived.
        script(
            d.path(),
            "fake",
            r#"cat > "$(dirname "$0")/stdin.json"
echo "$CNI_COMMAND $CNI_IFNAME" > "$(dirname "$0")/cmd"
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0","ips":[{"address":"10.7.0.5/16","gateway":"10.7.0.1"}],"dns":{"nameservers":["1.1.1.1"]}}'
exit 0"#,
        );
        let cni_path = format!("/nonexistent:{}", d.path().display());
        let env = [("CNI_IFNAME".to_string(), "eth3".to_string())];
        let conf = br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"fake"}}"#;
        let r = exec("fake", &cni_path, "ADD", &env, conf).unwrap().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.7.0.5/16");
        assert_eq!(r.dns.nameservers, ["1.1.1.1"]);
        assert_eq!(std::fs::read(d.path().join("stdin.json")).unwrap(), conf);
        assert_eq!(
            std::fs::read_to_string(d.path().join("cmd")).unwrap(),
            "ADD eth3\n"
        );
        assert_eq!(exec("fake", &cni_path, "DEL", &env, conf).unwrap(), None);
        assert_eq!(
            std::fs::read_to_string(d.path().join("cmd")).unwrap(),
            "DEL eth3\n"
        );
    }

    #[test]
    fn relays_the_child_error_code_and_message() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().display().to_string();
        script(
            d.path(),
            "busy",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"locked","details":"try later"}'; exit 1"#,
        );
        script(
            d.path(),
            "odd",
            r#"echo '{"code":142,"msg":"vendor thing"}'; exit 1"#,
        );
        script(d.path(), "junk", "echo not json; echo boom >&2; exit 3");
        script(d.path(), "badres", "echo '{\"ips\": 5}'");
        let e = exec("busy", &p, "ADD", &[], b"{}").unwrap_err();
        assert_eq!(e.code, ErrorCode::TryAgainLater);
        assert_eq!(e.msg, "IPAM plugin busy: locked");
        assert_eq!(e.details, "try later");
        let e = exec("odd", &p, "ADD", &[], b"{}").unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(
            e.to_string().contains("vendor thing") && e.details.contains("142"),
            "{e}"
        );
        let e = exec("junk", &p, "DEL", &[], b"{}").unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(
            exec("badres", &p, "ADD", &[], b"{}").unwrap_err().code,
            ErrorCode::DecodingFailure
        );
    }

    #[test]
    fn missing_or_non_executable_plugin_is_code_7() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("noexec"), "#!/bin/sh\n").unwrap();
        let p = d.path().display().to_string();
        for name in ["absent", "noexec", "../x", ""] {
            let e = exec(name, &p, "ADD", &[], b"{}").unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig, "{name}");
        }
        let e = find_plugin("absent", &p).unwrap_err();
        assert!(e.msg.contains(&format!(
            "IPAM plugin \"absent\" not found in CNI_PATH ({p})"
        )));
    }

    /// Runs Debian's real host-local and reads its files with our store: same layout.
    #[test]
    fn real_host_local_via_delegate_and_shared_store_layout() {
        let dir = "/usr/lib/cni";
        assert!(
            Path::new(dir).join("host-local").is_file(),
            "{dir}/host-local is missing: install the containernetworking-plugins package"
        );
        let data = tempfile::tempdir().unwrap();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "t",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                     "dataDir": data.path()}
        });
        let env: Vec<(String, String)> = [
            ("CNI_CONTAINERID", "ctr-hl-1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", dir),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let stdin = serde_json::to_vec(&conf).unwrap();
        let r = exec("host-local", dir, "ADD", &env, &stdin)
            .unwrap()
            .unwrap();
        assert_eq!(r.ips.len(), 1);
        let got = r.ips[0].address;
        assert_eq!(got.to_string(), "10.99.0.2/24");
        assert_eq!(r.ips[0].gateway, Some("10.99.0.1".parse().unwrap()));

        let store = Store::open(data.path(), "t").unwrap();
        let allocs = store.allocations().unwrap();
        assert_eq!(allocs.len(), 1);
        assert_eq!(allocs[0].ip, got.ip());
        assert_eq!(allocs[0].container_id, "ctr-hl-1");
        assert_eq!(allocs[0].ifname.as_deref(), Some("eth0"));
        assert_eq!(store.last_reserved(0), Some(got.ip()));
        // And the other way round: host-local sees an IP our store reserved as taken.
        assert!(store
            .reserve("ours", "eth0", "10.99.0.3".parse().unwrap(), 0)
            .unwrap());
        drop(store);
        let env2: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| match k.as_str() {
                "CNI_CONTAINERID" => (k.clone(), "ctr-hl-2".to_string()),
                _ => (k.clone(), v.clone()),
            })
            .collect();
        let r2 = exec("host-local", dir, "ADD", &env2, &stdin)
            .unwrap()
            .unwrap();
        assert_eq!(r2.ips[0].address.to_string(), "10.99.0.4/24");
        exec("host-local", dir, "DEL", &env, &stdin).unwrap();
        let store = Store::open(data.path(), "t").unwrap();
        let ips: Vec<String> = store
            .allocations()
            .unwrap()
            .iter()
            .map(|a| a.ip.to_string())
            .collect();
        assert_eq!(ips, ["10.99.0.3", "10.99.0.4"]);
    }
}
