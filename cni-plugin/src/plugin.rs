//! One invocation of the plugin: environment + stdin in, stdout text + exit code out.
//!
//! This is the whole protocol edge. It never panics on input, always answers in the
//! `cniVersion` the runtime asked for (falling back to the newest for unparseable configs),
//! and keeps stdout for the protocol alone: logs go to a file.

use crate::cni_err;
use crate::commands::{add, check, del, gc, status};
use crate::config::{peek_version, NetConf};
use crate::env::{CniEnv, Command};
use crate::error::{CniError, Result};
use crate::version::{CniVersion, SUPPORTED};
use serde_json::json;

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Text for stdout (a result, an error object, or empty).
    pub stdout: String,
    /// Process exit code: 0 on success, 1 on error.
    pub code: i32,
}

/// Default log file when the config names none; failures to open it are ignored.
pub const DEFAULT_LOG: &str = "/var/log/netlet-cni.log";

/// Runs one invocation. `lookup` reads environment variables.
pub fn invoke(stdin: &[u8], lookup: impl Fn(&str) -> Option<String>) -> Outcome {
    let answer_version = peek_version(stdin)
        .and_then(|v| CniVersion::parse(&v).ok())
        .unwrap_or(CniVersion::LATEST);
    match dispatch(stdin, lookup) {
        Ok(out) => Outcome {
            stdout: out,
            code: 0,
        },
        Err(e) => {
            tracing::error!(code = e.code.as_u32(), "{e}");
            Outcome {
                stdout: e.to_json(answer_version.as_str()).to_string(),
                code: 1,
            }
        }
    }
}

fn version_answer(stdin: &[u8]) -> Result<String> {
    let v = match peek_version(stdin) {
        Some(v) => CniVersion::parse(&v)?,
        None => CniVersion::LATEST,
    };
    Ok(json!({
        "cniVersion": v.as_str(),
        "supportedVersions": SUPPORTED.map(|v| v.as_str()),
    })
    .to_string())
}

fn require(ok: bool, cmd: Command, v: CniVersion) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(cni_err!(
            IncompatibleVersion,
            format!("config version {v} does not allow {cmd:?}"),
            "use a newer cniVersion"
        ))
    }
}

fn dispatch(stdin: &[u8], lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let env = CniEnv::from_lookup(lookup)?;
    if env.command == Command::Version {
        return version_answer(stdin);
    }
    let conf = NetConf::parse(stdin)?;
    crate::logging::init(conf.log_file.as_deref().unwrap_or(DEFAULT_LOG));
    tracing::info!(command = ?env.command, container = %env.container_id, ifname = %env.ifname, network = %conf.name, "invoked");
    let v = conf.cni_version;
    match env.command {
        Command::Check => require(v.has_check(), env.command, v)?,
        Command::Gc | Command::Status => require(v.has_gc_status(), env.command, v)?,
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| cni_err!(Internal, "starting async runtime", "{e}"))?;
    rt.block_on(async {
        match env.command {
            Command::Add => {
                let r = add::run(&conf, &env).await?;
                Ok(r.to_json(v).to_string())
            }
            Command::Del => del::run(&conf, &env).await.map(|()| String::new()),
            Command::Check => check::run(&conf, &env).await.map(|()| String::new()),
            Command::Gc => gc::run(&conf, &env).await.map(|()| String::new()),
            Command::Status => status::run(&conf, &env).map(|()| String::new()),
            Command::Version => unreachable!("handled above"),
        }
    })
    .map_err(|e: CniError| e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::collections::HashMap;

    fn run(stdin: &str, env: &[(&str, &str)]) -> (serde_json::Value, i32) {
        let m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let o = invoke(stdin.as_bytes(), |k| m.get(k).cloned());
        (
            serde_json::from_str(&o.stdout).unwrap_or(serde_json::Value::Null),
            o.code,
        )
    }

    #[test]
    fn version_lists_supported_in_requested_version() {
        let (j, code) = run(r#"{"cniVersion":"0.4.0"}"#, &[("CNI_COMMAND", "VERSION")]);
        assert_eq!(code, 0);
        assert_eq!(j["cniVersion"], "0.4.0");
        assert_eq!(j["supportedVersions"].as_array().unwrap().len(), 5);
        let (j, _) = run("", &[("CNI_COMMAND", "VERSION")]);
        assert_eq!(j["cniVersion"], "1.1.0");
        let (j, code) = run(r#"{"cniVersion":"7.0.0"}"#, &[("CNI_COMMAND", "VERSION")]);
        assert_eq!((j["code"].as_u64(), code), (Some(1), 1));
    }

    #[test]
    fn errors_are_json_in_the_requested_version() {
        let (j, code) = run(
            r#"{"cniVersion":"0.3.1","name":"n","mtu":"x"}"#,
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ],
        );
        assert_eq!(code, 1);
        assert_eq!(j["cniVersion"], "0.3.1");
        assert_eq!(j["code"], ErrorCode::InvalidNetworkConfig.as_u32());
        let (j, _) = run("{}", &[]);
        assert_eq!(j["code"], ErrorCode::InvalidEnvironment.as_u32());
        assert_eq!(j["cniVersion"], "1.1.0");
    }

    #[test]
    fn check_gc_status_are_gated_by_version() {
        let env = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ];
        let (j, _) = run(
            r#"{"cniVersion":"0.3.1","name":"n","logFile":"/dev/null"}"#,
            &env,
        );
        assert_eq!(j["code"], 1);
        let (j, _) = run(
            r#"{"cniVersion":"1.0.0","name":"n","logFile":"/dev/null"}"#,
            &[("CNI_COMMAND", "GC")],
        );
        assert_eq!(j["code"], 1);
        let (j, _) = run(
            r#"{"cniVersion":"1.0.0","name":"n","logFile":"/dev/null"}"#,
            &[("CNI_COMMAND", "STATUS")],
        );
        assert_eq!(j["code"], 1);
    }
}
