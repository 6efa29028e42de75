//! Property tests: whatever the runtime sends, the plugin answers with CNI error JSON, never a
//! panic. They drive [`crate::plugin::invoke`] with generated configs, environments and
//! `CNI_ARGS` and commands that fail before touching the kernel.

use crate::env::CniArgs;
use crate::plugin::invoke;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Arbitrary JSON values, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("10.1.2.0/24")),
        Just(Value::from("1.1.0")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::hash_map(
                prop_oneof![
                    Just("cniVersion".to_string()),
                    Just("name".to_string()),
                    Just("ipam".to_string()),
                    Just("ranges".to_string()),
                    Just("subnet".to_string()),
                    Just("mtu".to_string()),
                    Just("prevResult".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Checks the protocol contract of a failed invocation: exit 1 and a spec error object.
fn assert_cni_error(stdout: &str, code: i32) -> Result<(), TestCaseError> {
    prop_assert_eq!(code, 1, "expected failure, got stdout {}", stdout);
    let v: Value = serde_json::from_str(stdout)
        .map_err(|e| TestCaseError::fail(format!("stdout is not JSON ({e}): {stdout}")))?;
    prop_assert!(
        v["code"].as_u64().is_some_and(|c| c > 0),
        "no code: {}",
        stdout
    );
    prop_assert!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "no msg: {}",
        stdout
    );
    prop_assert!(v["cniVersion"].is_string());
    Ok(())
}

fn run(stdin: &[u8], env: &HashMap<String, String>) -> (String, i32) {
    let o = invoke(stdin, |k| env.get(k).cloned());
    (o.stdout, o.code)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes on stdin: a decoding error or an env error, never a panic.
    #[test]
    fn garbage_stdin_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        // CHECK on a nonexistent netns: the environment is valid, so the bytes reach the config
        // parser, and even a config that parses fails without touching any namespace.
        let env: HashMap<_, _> = [("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "p"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/nonexistent/netns")]
            .iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (out, code) = run(&bytes, &env);
        assert_cni_error(&out, code)?;
    }

    /// Random JSON configs for CHECK without CNI_NETNS: always a spec error.
    #[test]
    fn random_configs_give_cni_errors(conf in any_json()) {
        let env: HashMap<_, _> = [("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "p"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/nonexistent/netns")]
            .iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (out, code) = run(conf.to_string().as_bytes(), &env);
        assert_cni_error(&out, code)?;
    }

    /// Random environments with a valid config: errors are code 4 or other spec errors.
    #[test]
    fn random_env_never_panics(
        cmd in prop_oneof![Just("ADD".to_string()), Just("DEL".to_string()), Just("CHECK".to_string()), ".{0,6}"],
        id in ".{0,20}",
        ifname in ".{0,20}",
        args in ".{0,40}",
    ) {
        let conf = json!({"cniVersion": "1.0.0", "name": "p", "logFile": "/dev/null",
            "ipam": {"type": "netlet", "ranges": [[{"subnet": "10.9.0.0/24"}]], "dataDir": "/nonexistent/netlet-proptest"}});
        let env: HashMap<_, _> = [("CNI_COMMAND", cmd), ("CNI_CONTAINERID", id), ("CNI_IFNAME", ifname),
            ("CNI_ARGS", args), ("CNI_NETNS", "/nonexistent/netns".to_string())]
            .into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let o = std::panic::catch_unwind(|| run(conf.to_string().as_bytes(), &env));
        prop_assert!(o.is_ok(), "panicked");
        let (out, code) = o.unwrap();
        // DEL of an unknown attachment may succeed; everything else here must fail cleanly.
        if code != 0 {
            assert_cni_error(&out, code)?;
        }
    }

    /// CNI_ARGS parsing is total: Ok or a code-4 error.
    #[test]
    fn cni_args_parse_is_total(raw in ".{0,64}") {
        if let Err(e) = CniArgs::parse(&raw) {
            prop_assert_eq!(e.code, crate::error::ErrorCode::InvalidEnvironment);
        }
    }

    /// Well-formed K=V lists with known keys always parse and keep every pair.
    #[test]
    fn cni_args_known_pairs_round_trip(name in "[a-z0-9-]{1,12}", ns in "[a-z0-9-]{1,12}") {
        let a = CniArgs::parse(&format!("K8S_POD_NAME={name};K8S_POD_NAMESPACE={ns};IgnoreUnknown=1;X=y")).unwrap();
        prop_assert_eq!(a.pairs.get("K8S_POD_NAME"), Some(&name));
        prop_assert_eq!(a.pairs.get("K8S_POD_NAMESPACE"), Some(&ns));
    }
}
