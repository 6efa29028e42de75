//! Malformed configs and environments: each gets the spec's error JSON with the right code, no
//! panic, and no kernel or IPAM state is created.

mod common;

use common::*;
use integration::NetNs;
use serde_json::json;

/// (what, environment, stdin, expected error code)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64);

#[test]
fn bad_input_gives_cni_errors_and_leaves_nothing() {
    let net = Net::new(
        "bad",
        bridge_conf("1.1.0", "t-bad", "nlbr-bad", "10.93.2.0/24"),
    );
    let cont = NetNs::new("badc");
    let ns_path = cont.path().display().to_string();
    let good = net.conf.clone();
    let good_text = good.to_string();
    let data_dir = net.data_dir().display().to_string();
    let log_file = net.dir.path().join("plugin.log").display().to_string();
    let base_env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-bad"),
        ("CNI_IFNAME", IFNAME),
        ("CNI_NETNS", ns_path.as_str()),
        ("CNI_PATH", REF_PLUGINS),
    ];
    let env_with = |k: &'static str, v: Option<&'static str>| -> Vec<(&str, &str)> {
        let mut e: Vec<(&str, &str)> = base_env.iter().copied().filter(|(n, _)| *n != k).collect();
        if let Some(v) = v {
            e.push((k, v));
        }
        e
    };
    let no_name = {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("name");
        c.to_string()
    };
    let bad_cidr = merged(
        &good,
        json!({"ipam": {"type": "netlet", "dataDir": data_dir,
            "ranges": [[{"subnet": "10.93.2.300/24"}]]}}),
    )
    .to_string();
    let bad_version = merged(&good, json!({"cniVersion": "9.9.9"})).to_string();
    let vlan = merged(&good, json!({"vlan": 5})).to_string();
    let missing_ns = format!("/var/run/netns/nlt-missing-{}", std::process::id());

    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            base_env.to_vec(),
            format!(r#"{{"cniVersion":"1.1.0","logFile":"{log_file}","name":"#),
            6,
        ),
        ("empty stdin", base_env.to_vec(), String::new(), 6),
        ("missing name", base_env.to_vec(), no_name, 7),
        ("bad CIDR in ipam", base_env.to_vec(), bad_cidr, 7),
        ("unsupported cniVersion", base_env.to_vec(), bad_version, 1),
        ("vlan", base_env.to_vec(), vlan, 2),
        (
            "garbage CNI_ARGS",
            env_with("CNI_ARGS", Some("a;b")),
            good_text.clone(),
            4,
        ),
        (
            "unknown CNI_ARGS key",
            env_with("CNI_ARGS", Some("FOO=bar")),
            good_text.clone(),
            4,
        ),
        (
            "missing CNI_CONTAINERID",
            env_with("CNI_CONTAINERID", None),
            good_text.clone(),
            4,
        ),
        (
            "invalid CNI_CONTAINERID",
            env_with("CNI_CONTAINERID", Some("../etc")),
            good_text.clone(),
            4,
        ),
        (
            "ifname too long",
            env_with("CNI_IFNAME", Some("a-very-long-ifname")),
            good_text.clone(),
            4,
        ),
        (
            "missing CNI_NETNS on ADD",
            env_with("CNI_NETNS", None),
            good_text.clone(),
            4,
        ),
        (
            "unknown CNI_COMMAND",
            env_with("CNI_COMMAND", Some("ATTACH")),
            good_text.clone(),
            4,
        ),
        (
            "nonexistent CNI_NETNS on ADD",
            {
                let mut e = env_with("CNI_NETNS", None);
                e.push(("CNI_NETNS", missing_ns.as_str()));
                e
            },
            good_text.clone(),
            3,
        ),
    ];

    for (what, env, stdin, code) in &cases {
        let r = finish(spawn_in(&net.node, PLUGIN, env, stdin.as_bytes()));
        assert_ne!(r.code, 0, "{what}: succeeded: {}", r.stdout);
        assert!(
            !r.stderr.contains("panicked"),
            "{what}: panicked: {}",
            r.stderr
        );
        assert!(
            r.json.is_object(),
            "{what}: stdout is not error JSON: {:?}",
            r.stdout
        );
        assert_eq!(
            r.json["code"].as_u64(),
            Some(*code),
            "{what}: wrong code: {}",
            r.stdout
        );
        assert!(
            r.json["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no msg: {}",
            r.stdout
        );
        assert!(
            r.json["cniVersion"].is_string(),
            "{what}: error JSON carries cniVersion: {}",
            r.stdout
        );
        assert!(
            net.allocations().is_empty(),
            "{what}: allocation left: {:?}",
            net.allocations()
        );
        assert!(
            veths(&net.node).is_empty(),
            "{what}: veth left: {:?}",
            veths(&net.node)
        );
        assert!(!link_exists(&cont, IFNAME), "{what}: container interface");
    }
    assert!(!std::path::Path::new(&missing_ns).exists());

    // After all that, the same container attaches fine.
    let r = net.add("ctr-bad", &cont);
    ping(&cont, "10.93.2.1");
    // A second ADD of the live attachment fails and must not tear down the first.
    let again = net.try_add("ctr-bad", &cont);
    assert_ne!(again.code, 0);
    again.assert_no_panic();
    assert!(again.json["code"].is_u64(), "{}", again.stdout);
    assert_eq!(net.allocations().len(), 1);
    assert!(link_exists(&net.node, &net.host_veth("ctr-bad")));
    ping(&cont, "10.93.2.1");
    net.check("ctr-bad", &cont, &r).ok();
    net.del("ctr-bad", None).ok();
    assert!(net.allocations().is_empty());
}
