//! Registration, status, Lease and CNI config loops in-process against our apiserver.
//!
//! No runtime here (the registration gets no CRI probe, so readiness is the CNI config's and
//! the plugins' alone) and no kernel state: the CNI conf dir is a temp dir. The loops run with a 1 s
//! heartbeat so renewals are observable quickly.

mod node_support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::DeleteParams;
use kube::Api;
use netlet_agent::node::cni_config::{self, CniSettings, CONFLIST_NAME};
use netlet_agent::node::lease::{NodeLease, LEASE_DURATION_SECS, LEASE_NAMESPACE};
use netlet_agent::node::registration::Registration;
use netlet_agent::node::sysinfo::SystemInfo;
use node_support::{ready, set_pod_cidr, wait_for};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_reports_readiness_renews_lease_and_writes_cni_config() {
    let server = integration::TestApiserver::start_with(&["--disable-controllers"]);
    // The test plays the control plane's node IPAM (it sets podCIDRs itself); serve's own
    // controllers would assign one first.
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("net.d");
    // The plugins the conflist names, as installed executables (readiness checks for them).
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    for plugin in ["netlet", "portmap"] {
        std::os::unix::fs::symlink("/bin/true", bin_dir.join(plugin)).unwrap();
    }
    let log = || server.log();

    let cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = watch::channel(false);
    let heartbeat = Duration::from_secs(1);
    let tasks = [
        tokio::spawn(cni_config::run(
            nodes.clone(),
            "n1".into(),
            CniSettings {
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                ipam_dir: dir.path().join("ipam"),
                conf_dir: conf_dir.clone(),
            },
            ready_tx,
            cancel.clone(),
        )),
        tokio::spawn(
            Registration {
                api: nodes.clone(),
                node_name: "n1".into(),
                node_ip: "192.0.2.10".parse().unwrap(),
                sys: SystemInfo::gather(dir.path()).unwrap(),
                runtime: None,
                cni_ready: ready_rx,
                cni_bin_dir: bin_dir.clone(),
                heartbeat,
                report_interval: Duration::from_secs(300),
                annotations: [(
                    "netlet.dev/kubelet-socket".to_string(),
                    Some("/var/lib/netlet/kubelet.sock".to_string()),
                )]
                .into(),
            }
            .run(cancel.clone()),
        ),
        tokio::spawn(NodeLease::new(client.clone(), "n1").run(heartbeat, cancel.clone())),
    ];

    // Registered, labelled, with status — and not ready: no pod CIDR, so no CNI config.
    let node = wait_for("Node n1 with a status", WAIT, log, || async {
        nodes
            .get_opt("n1")
            .await
            .unwrap()
            .filter(|n| ready(n).is_some())
    })
    .await;
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "n1");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert!(labels.contains_key("kubernetes.io/arch"));
    let annotations = node.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations["netlet.dev/kubelet-socket"],
        "/var/lib/netlet/kubelet.sock"
    );
    assert_eq!(ready(&node).as_deref(), Some("False"));
    let status = node.status.clone().unwrap();
    let addrs = status.addresses.unwrap();
    assert!(addrs
        .iter()
        .any(|a| a.type_ == "InternalIP" && a.address == "192.0.2.10"));
    assert!(addrs
        .iter()
        .any(|a| a.type_ == "Hostname" && a.address == "n1"));
    assert_eq!(status.capacity.unwrap()["pods"].0, "110");
    assert_eq!(status.node_info.unwrap().kubelet_version, "v1.32.0-netlet");
    assert!(!conf_dir.join(CONFLIST_NAME).exists());

    // The control plane assigns a pod CIDR: the conflist appears and the node turns Ready.
    set_pod_cidr(&nodes, "n1", "10.244.5.0/24").await;
    let conf = wait_for("the conflist", WAIT, log, || async {
        std::fs::read(conf_dir.join(CONFLIST_NAME)).ok()
    })
    .await;
    let conf: serde_json::Value = serde_json::from_slice(&conf).unwrap();
    assert_eq!(
        conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.244.5.0/24"
    );
    let node = wait_for("Node n1 Ready", WAIT, log, || async {
        let n = nodes.get("n1").await.unwrap();
        (ready(&n).as_deref() == Some("True")).then_some(n)
    })
    .await;
    let cond = node
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(cond.reason.as_deref(), Some("KubeletReady"));

    // The Lease exists, is owned by the Node (it may have been created before the Node; the
    // next renewal adds the owner) and its renewTime advances.
    let lease = wait_for("Lease n1 owned by Node n1", WAIT, log, || async {
        leases
            .get_opt("n1")
            .await
            .unwrap()
            .filter(|l| l.metadata.owner_references.is_some())
    })
    .await;
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
    assert_eq!(spec.lease_duration_seconds, Some(LEASE_DURATION_SECS));
    let owner = &lease.metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "n1"));
    assert_eq!(Some(&owner.uid), node.metadata.uid.as_ref());
    let first = spec.renew_time.unwrap().0;
    wait_for("the Lease renewTime to advance", WAIT, log, || async {
        let l = leases.get("n1").await.unwrap();
        (l.spec.unwrap().renew_time.unwrap().0 > first).then_some(())
    })
    .await;

    // A deleted Lease is created again.
    let old_uid = lease.metadata.uid.clone();
    leases.delete("n1", &DeleteParams::default()).await.unwrap();
    wait_for("the Lease to be recreated", WAIT, log, || async {
        leases
            .get_opt("n1")
            .await
            .unwrap()
            .filter(|l| l.metadata.uid != old_uid)
    })
    .await;

    // A deleted Node is registered again, with status.
    let old_uid = node.metadata.uid.clone();
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    wait_for("Node n1 to be registered again", WAIT, log, || async {
        nodes
            .get_opt("n1")
            .await
            .unwrap()
            .filter(|n| n.metadata.uid != old_uid && ready(n).is_some())
    })
    .await;

    cancel.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("loop stops on cancel")
            .unwrap();
    }
}

/// An existing Node (made by an admin, or left by a previous agent) is adopted: our labels are
/// merged in, its own labels, spec and annotations stay, but for a node API socket an earlier
/// run named and this one does not serve. Then, with nothing changing, the
/// status is not rewritten every heartbeat: the Lease alone shows liveness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_an_existing_node_and_writes_status_only_on_change() {
    let server = integration::TestApiserver::start_with(&["--disable-controllers"]);
    // The test plays the control plane's node IPAM (it sets podCIDRs itself); serve's own
    // controllers would assign one first.
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let log = || server.log();
    let existing: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n2", "labels": {"team": "a"},
                     "annotations": {"note": "keep", "netlet.dev/kubelet-socket": "/gone.sock"}},
        "spec": {"podCIDR": "10.244.2.0/24",
                 "taints": [{"key": "dedicated", "value": "a", "effect": "NoSchedule"}]},
    }))
    .unwrap();
    let created = nodes
        .create(&kube::api::PostParams::default(), &existing)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    for plugin in ["netlet", "portmap"] {
        std::os::unix::fs::symlink("/bin/true", bin_dir.join(plugin)).unwrap();
    }
    let cancel = CancellationToken::new();
    // CNI config taken as in place: this test is about the Node object alone.
    let (_ready_tx, ready_rx) = watch::channel(true);
    let heartbeat = Duration::from_secs(1);
    let tasks = [
        tokio::spawn(
            Registration {
                api: nodes.clone(),
                node_name: "n2".into(),
                node_ip: "192.0.2.20".parse().unwrap(),
                sys: SystemInfo::gather(dir.path()).unwrap(),
                runtime: None,
                cni_ready: ready_rx,
                cni_bin_dir: bin_dir,
                heartbeat,
                report_interval: Duration::from_secs(300),
                annotations: [("netlet.dev/kubelet-socket".to_string(), None)].into(),
            }
            .run(cancel.clone()),
        ),
        tokio::spawn(NodeLease::new(client.clone(), "n2").run(heartbeat, cancel.clone())),
    ];

    let node = wait_for("Node n2 Ready", WAIT, log, || async {
        let n = nodes.get("n2").await.unwrap();
        (ready(&n).as_deref() == Some("True")).then_some(n)
    })
    .await;
    assert_eq!(
        node.metadata.uid, created.metadata.uid,
        "adopted, not recreated"
    );
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["team"], "a");
    assert_eq!(labels["kubernetes.io/hostname"], "n2");
    let annotations = node.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["note"], "keep");
    assert!(
        !annotations.contains_key("netlet.dev/kubelet-socket"),
        "the stale socket annotation is removed: {annotations:?}"
    );
    assert_eq!(node.spec, created.spec);

    // Several heartbeats pass (counted by Lease renewals, not by sleeping) without a change:
    // the status, heartbeat times included, is as first written.
    let heartbeat_of = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.clone())
    };
    let written = heartbeat_of(&node).expect("Ready has a heartbeat time");
    let renew = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let start = wait_for("a Lease renewal", WAIT, log, || async {
        renew(leases.get_opt("n2").await.unwrap()?)
    })
    .await;
    wait_for("three more Lease renewals", WAIT, log, || async {
        let t = renew(leases.get("n2").await.unwrap())?;
        (t.duration_since(start).as_secs_f64() >= 3.0).then_some(())
    })
    .await;
    let later = nodes.get("n2").await.unwrap();
    assert_eq!(
        heartbeat_of(&later),
        Some(written),
        "status rewritten without a change"
    );

    cancel.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("loop stops on cancel")
            .unwrap();
    }
}
