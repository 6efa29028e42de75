//! Every supported spec version: the ADD result has that version's shape, and the commands the
//! version lacks (CHECK before 0.4.0, GC/STATUS before 1.1.0) are refused with code 1.

mod common;

use common::*;
use integration::NetNs;
use serde_json::{json, Value};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn every_version_result_shape() {
    let mut template = bridge_conf("1.1.0", "t-ver", "nlbr-ver", "10.93.1.0/24");
    template["mtu"] = json!(1400);
    let net = Net::new("ver", template);
    let nss: Vec<NetNs> = VERSIONS.iter().map(|_| NetNs::new("verc")).collect();
    let ids: Vec<String> = VERSIONS
        .iter()
        .map(|v| format!("ctr-v{}", v.replace('.', "")))
        .collect();
    let all_valid: Vec<Value> = ids
        .iter()
        .map(|id| json!({"containerID": id, "ifname": IFNAME}))
        .collect();

    for ((v, id), ns) in VERSIONS.iter().zip(&ids).zip(&nss) {
        let conf = merged(&net.conf, json!({"cniVersion": v}));
        let r = net.call("ADD", id, Some(&ns.path()), &conf);
        let res = r.ok().clone();
        assert_eq!(res["cniVersion"], *v, "{res}");
        let old = *v < "1.0.0";
        for ip in res["ips"].as_array().expect("ips") {
            if old {
                assert_eq!(ip["version"], "4", "{v}: {res}");
            } else {
                assert!(ip.get("version").is_none(), "{v}: {res}");
            }
            assert_eq!(ip["interface"], 2, "{v}");
            assert_eq!(ip["gateway"], "10.93.1.1", "{v}");
        }
        let ifaces = res["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 3, "{v}");
        if *v == "1.1.0" {
            assert_eq!(ifaces[1]["mtu"], 1400, "{res}");
            assert_eq!(ifaces[2]["mtu"], 1400, "{res}");
        } else {
            assert!(
                ifaces.iter().all(|i| i.get("mtu").is_none()),
                "{v}: mtu is a 1.1.0 field: {res}"
            );
        }
        assert!(
            res["routes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == "0.0.0.0/0"),
            "{v}: {res}"
        );
        let link = ip_json(ns, &["link", "show", "dev", IFNAME]);
        assert_eq!(link[0]["mtu"], 1400, "{v}: container MTU");
        ping(ns, "10.93.1.1");

        let with_prev = merged(&conf, json!({"prevResult": res}));
        let chk = net.call("CHECK", id, Some(&ns.path()), &with_prev);
        if v.starts_with("0.3.") {
            chk.err(1);
            assert_eq!(chk.json["cniVersion"], *v, "error in the asked version");
        } else {
            chk.ok();
        }

        let gc_conf = merged(&conf, json!({"cni.dev/valid-attachments": all_valid}));
        let gc = net.invoke(PLUGIN, "GC", &[], &gc_conf);
        let st = net.invoke(PLUGIN, "STATUS", &[], &conf);
        if *v == "1.1.0" {
            gc.ok();
            st.ok();
        } else {
            gc.err(1);
            st.err(1);
            assert_eq!(gc.json["cniVersion"], *v);
            assert_eq!(st.json["cniVersion"], *v);
        }

        let ver = net.invoke(PLUGIN, "VERSION", &[], &json!({"cniVersion": v}));
        let ver = ver.ok();
        assert_eq!(ver["cniVersion"], *v);
        let supported: Vec<&str> = ver["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for want in VERSIONS {
            assert!(supported.contains(&want), "{want} missing from {ver}");
        }
    }
    // Nothing was released by the refused or the all-valid GCs.
    assert_eq!(net.allocations().len(), VERSIONS.len());
    assert_eq!(net.netlet_veths().len(), VERSIONS.len());

    for ((v, id), ns) in VERSIONS.iter().zip(&ids).zip(&nss) {
        let conf = merged(&net.conf, json!({"cniVersion": v}));
        net.call("DEL", id, Some(&ns.path()), &conf).ok();
    }
    assert!(net.allocations().is_empty());
    net.assert_no_veths_left();

    // VERSION with an empty stdin answers in the newest version.
    let empty = finish(spawn_in(
        &net.node,
        PLUGIN,
        &[("CNI_COMMAND", "VERSION")],
        b"",
    ));
    assert_eq!(empty.ok()["cniVersion"], "1.1.0");
    let unknown = net.invoke(PLUGIN, "VERSION", &[], &json!({"cniVersion": "0.2.0"}));
    unknown.err(1);
}
