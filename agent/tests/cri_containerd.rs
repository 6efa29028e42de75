//! The CRI client against a real containerd that invokes netlet-cni.
//!
//! containerd runs inside the test's own `nlt-` node namespace with every path in a temp dir
//! (see `support/containerd.rs`); the images are the locally built ones of `cargo xtask
//! images`. One pod: a pause sandbox whose network netlet-cni sets up (called by containerd,
//! not by us), an httpd container in it, traffic from the node to the pod, then teardown, after
//! which nothing of the test may be left: no sandbox, no allocation, no mount, no process.

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use netlet_agent::cri::{api, CriClient};
use serde_json::json;
use support::containerd::{Containerd, PAUSE_IMAGE, TESTAPP_IMAGE};

/// The CNI network's name: also the IPAM data dir's subdirectory.
const NETWORK: &str = "nlt-cri";

/// The pod subnet netlet-cni allocates from.
const SUBNET: &str = "10.88.7.0/24";

/// The bridge's address: the pods' gateway, an address of the node.
const GATEWAY: &str = "10.88.7.1";

/// The node port mapped to the pod's 8080 (containerd hands it to portmap as runtimeConfig).
const HOST_PORT: i32 = 18080;

fn conflist(dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "netlet",
                "bridge": "nltcri0",
                "isDefaultGateway": true,
                "logFile": dir.join("netlet-cni.log"),
                "ipam": {
                    "type": "netlet",
                    "ranges": [[{ "subnet": SUBNET }]],
                    "dataDir": dir.join("ipam"),
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
}

fn sandbox_config(dir: &Path, cgroup_parent: &str) -> api::PodSandboxConfig {
    let logs = dir.join("pods/web");
    std::fs::create_dir_all(&logs).unwrap();
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "web".into(),
            uid: format!("uid-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: logs.to_string_lossy().into_owned(),
        port_mappings: vec![api::PortMapping {
            protocol: api::Protocol::Tcp.into(),
            container_port: 8080,
            host_port: HOST_PORT,
            host_ip: String::new(),
        }],
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn httpd_config() -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "httpd".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: TESTAPP_IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into()],
        args: vec![
            "echo hello-from-pod > /var/www/index.html && exec httpd -f -p 8080 -h /var/www".into(),
        ],
        log_path: "httpd.log".into(),
        ..Default::default()
    }
}

/// Polls `check` every 200 ms until it returns `Ok`, failing with `what` and the last error
/// after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn exec(cri: &CriClient, id: &str, cmd: &[&str]) -> Result<String, String> {
    let r = cri
        .exec_sync(id, cmd, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    if r.exit_code != 0 {
        return Err(format!(
            "{cmd:?} exited {}: {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&r.stdout).into_owned())
}

#[tokio::test]
async fn pod_on_containerd_gets_netlet_network_and_serves_the_node() {
    integration::require_root();
    let started = Instant::now();
    let mut ctrd = Containerd::start("cri", conflist).await;
    ctrd.import_images();
    let cri = ctrd.client().await;
    let dir = ctrd.dir().to_path_buf();

    let version = cri.version().await.unwrap();
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");
    for image in [PAUSE_IMAGE, TESTAPP_IMAGE] {
        let found = cri.image_status(image).await.unwrap();
        assert!(found.is_some(), "{image} not in containerd after import");
    }
    let listed = cri.list_images(None).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.repo_tags.iter().any(|t| t == TESTAPP_IMAGE)),
        "ListImages lacks {TESTAPP_IMAGE}: {listed:?}"
    );

    // The sandbox: containerd creates the pod netns and runs netlet-cni ADD in the node ns.
    let sandbox_cfg = sandbox_config(&dir, &ctrd.cgroup_parent);
    let sandbox = cri
        .run_pod_sandbox(sandbox_cfg.clone(), "")
        .await
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", ctrd.log_tail()));
    let status = cri.pod_sandbox_status(&sandbox).await.unwrap();
    assert_eq!(status.state(), api::PodSandboxState::SandboxReady);
    let ip: Ipv4Addr = status
        .network
        .as_ref()
        .map(|n| n.ip.as_str())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("sandbox has no IPv4 address ({e}): {status:?}"));
    assert_eq!(
        ip.octets()[..3],
        [10, 88, 7],
        "pod IP {ip} not from {SUBNET}"
    );
    let allocation = dir.join("ipam").join(NETWORK).join(ip.to_string());
    assert!(
        allocation.is_file(),
        "netlet-cni did not record {ip} in {}",
        allocation.display()
    );
    let listed = cri.list_pod_sandbox(None).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    // The bridge is in the node namespace, not on the host (a read-only look at the host).
    ctrd.node.run_ok("ip", &["link", "show", "nltcri0"]);
    let on_host = std::process::Command::new("ip")
        .args(["link", "show", "nltcri0"])
        .output()
        .unwrap();
    assert!(!on_host.status.success(), "nltcri0 leaked into the host");

    // A container in it, serving HTTP.
    let ctr = cri
        .create_container(&sandbox, httpd_config(), sandbox_cfg)
        .await
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", ctrd.log_tail()));
    cri.start_container(&ctr).await.unwrap();
    wait_for(
        "the httpd container to run",
        Duration::from_secs(10),
        || {
            let cri = cri.clone();
            let ctr = ctr.clone();
            async move {
                let s = cri
                    .container_status(&ctr)
                    .await
                    .map_err(|e| e.to_string())?;
                match s.state() {
                    api::ContainerState::ContainerRunning => Ok(()),
                    other => Err(format!("{other:?} (exit {}, {})", s.exit_code, s.message)),
                }
            }
        },
    )
    .await;
    let containers = cri.list_containers(None).await.unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");

    // Inside the pod: eth0 carries the IP, httpd answers on loopback.
    let addrs = exec(&cri, &ctr, &["ip", "-4", "addr", "show", "eth0"])
        .await
        .unwrap();
    assert!(addrs.contains(&ip.to_string()), "{addrs}");
    let body = wait_for("httpd inside the pod", Duration::from_secs(10), || {
        exec(&cri, &ctr, &["wget", "-qO-", "http://127.0.0.1:8080/"])
    })
    .await;
    assert_eq!(body.trim(), "hello-from-pod");

    // From the node: over the bridge to the pod IP.
    let url = format!("http://{ip}:8080/");
    let from_node = ctrd.node.run_ok("curl", &["-sS", "--max-time", "5", &url]);
    assert_eq!(from_node.trim(), "hello-from-pod");
    // And through the host port, which portmap DNATs in the node namespace's iptables.
    let mapped = format!("http://{GATEWAY}:{HOST_PORT}/");
    let via_port = ctrd
        .node
        .run_ok("curl", &["-sS", "--max-time", "5", &mapped]);
    assert_eq!(via_port.trim(), "hello-from-pod");

    // Teardown through CRI: netlet-cni DEL frees the address.
    cri.stop_container(&ctr, Duration::from_secs(2))
        .await
        .unwrap();
    cri.remove_container(&ctr).await.unwrap();
    let gone = cri.container_status(&ctr).await.unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    cri.stop_pod_sandbox(&sandbox).await.unwrap();
    assert!(
        !allocation.exists(),
        "netlet-cni DEL did not free {ip}\ncontainerd log:\n{}",
        ctrd.log_tail()
    );
    cri.remove_pod_sandbox(&sandbox).await.unwrap();
    assert!(cri.list_pod_sandbox(None).await.unwrap().is_empty());
    let log = std::fs::read_to_string(dir.join("netlet-cni.log")).unwrap_or_default();
    assert!(!log.is_empty(), "netlet-cni wrote no log: was it invoked?");
    assert_eq!(
        ctrd.leftover_mounts(),
        Vec::<String>::new(),
        "mounts left after RemovePodSandbox"
    );

    // containerd down: nothing of ours may remain.
    let socket = ctrd.socket();
    let shim_socket = ctrd.shim_socket(&sandbox);
    let cgroup_parent = ctrd.cgroup_parent.clone();
    let forced = ctrd.shutdown();
    assert!(forced.is_empty(), "cleanup needed force: {forced:?}");
    assert!(!dir.exists(), "{} not removed", dir.display());
    assert!(!shim_socket.exists(), "{} left", shim_socket.display());
    assert_eq!(
        support::containerd::processes_mentioning(&socket.to_string_lossy()),
        Vec::<u32>::new(),
        "processes of our containerd left"
    );
    assert_eq!(
        support::containerd::leftover_cgroups(&cgroup_parent),
        Vec::<std::path::PathBuf>::new()
    );
    let node_ns = ctrd.node.path();
    drop(ctrd);
    assert!(!node_ns.exists(), "{} left", node_ns.display());
    eprintln!("pod lifecycle on containerd took {:?}", started.elapsed());
}
