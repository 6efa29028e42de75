//! A full range: ADD fails with code 50 and leaves nothing behind, STATUS reports it, and one DEL
//! makes room again.

mod common;

use common::*;
use integration::NetNs;
use serde_json::json;

#[test]
fn range_exhaustion_is_a_clear_error() {
    let mut conf = bridge_conf("1.1.0", "t-full", "nlbr-full", "10.93.0.0/24");
    conf["ipam"]["ranges"] = json!([[{
        "subnet": "10.93.0.0/24", "rangeStart": "10.93.0.10", "rangeEnd": "10.93.0.11"
    }]]);
    let net = Net::new("full", conf);
    let a = NetNs::new("fulla");
    let b = NetNs::new("fullb");
    let c = NetNs::new("fullc");

    net.status().ok();
    let ra = net.add("ctr-a", &a);
    net.status().ok();
    let rb = net.add("ctr-b", &b);
    let mut got = vec![result_ip(&ra), result_ip(&rb)];
    got.sort();
    assert_eq!(got, ["10.93.0.10", "10.93.0.11"]);

    let fail = net.try_add("ctr-c", &c);
    let msg = fail.err(50);
    assert!(
        msg.contains("exhausted"),
        "message says why: {}",
        fail.stdout
    );
    assert_eq!(fail.json["cniVersion"], "1.1.0");
    assert!(!link_exists(&net.node, &net.host_veth("ctr-c")));
    assert!(!link_exists(&c, IFNAME), "no interface in the container");
    assert_eq!(net.allocations().len(), 2);
    assert_eq!(net.netlet_veths().len(), 2);

    let st = net.status();
    let msg = st.err(50);
    assert!(msg.contains("exhausted"), "{}", st.stdout);

    net.del("ctr-a", Some(&a.path())).ok();
    net.status().ok();
    let rc = net.add("ctr-c", &c);
    assert_eq!(
        result_ip(&rc),
        result_ip(&ra),
        "the freed address is reused"
    );
    ping(&c, &result_ip(&rb));
    net.status().err(50);

    net.del("ctr-b", None).ok();
    net.del("ctr-c", None).ok();
    assert!(net.allocations().is_empty());
    net.assert_no_veths_left();
}
