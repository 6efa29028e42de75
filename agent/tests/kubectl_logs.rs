//! `kubectl logs` end to end without containerd: our apiserver proxies `pods/log` to the agent's
//! log server on a unix socket, which serves a temp dir of CRI log files; the Node names the
//! socket in its `netlet.dev/kubelet-socket` annotation, as an agent started with
//! `--node-api-socket` does (`node_api_https.rs` covers the HTTPS path).

use integration::TestApiserver;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{LogParams, PostParams};
use kube::Api;
use netlet_agent::server::handler::Handler;
use netlet_agent::server::{unix, SOCKET_ANNOTATION};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

struct Cluster {
    api: TestApiserver,
    client: kube::Client,
    logs: PathBuf,
    _dir: tempfile::TempDir,
    cancel: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An apiserver, a node `n1` whose log server serves `ns: default, pod: web` (containers `app`
/// with two runs and `side`), and the pod bound to it.
async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("pods");
    let pod_dir = logs.join("default_web_7f00");
    std::fs::create_dir_all(pod_dir.join("app")).unwrap();
    std::fs::create_dir_all(pod_dir.join("side")).unwrap();
    std::fs::write(
        pod_dir.join("app/0.log"),
        "2026-11-23T18:00:00Z stdout F crashed once\n",
    )
    .unwrap();
    std::fs::write(
        pod_dir.join("app/1.log"),
        "2026-11-23T18:01:00Z stdout F hello\n\
         2026-11-23T18:01:05Z stderr P wor\n\
         2026-11-23T18:01:05Z stderr F ld\n",
    )
    .unwrap();
    std::fs::write(
        pod_dir.join("side/0.log"),
        "2026-11-23T18:01:00Z stdout F side car\n",
    )
    .unwrap();
    let socket = dir.path().join("state/kubelet.sock");
    let cancel = CancellationToken::new();
    tokio::spawn(unix::serve(
        unix::bind(&socket).unwrap(),
        Handler::new(logs.clone()),
        cancel.clone(),
    ));
    let api = TestApiserver::start();
    let client = api.client().await;
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1", "annotations": {SOCKET_ANNOTATION: socket.to_str().unwrap()}},
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"nodeName": "n1", "containers": [
            {"name": "app", "image": "busybox"},
            {"name": "side", "image": "busybox"},
        ]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    Cluster {
        api,
        client,
        logs,
        _dir: dir,
        cancel,
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// kubectl's stdout, or a panic with its stderr and the apiserver log.
async fn kubectl_ok(c: &Cluster, args: &[&str]) -> String {
    let out = kubectl(&c.api.kubeconfig(), args).output().await.unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.api.log()
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn kubectl_err(c: &Cluster, args: &[&str]) -> String {
    let out = kubectl(&c.api.kubeconfig(), args).output().await.unwrap();
    assert!(!out.status.success(), "kubectl {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn kubectl_logs_reads_through_the_node_socket() {
    let c = cluster().await;
    assert_eq!(
        kubectl_ok(&c, &["logs", "web", "-c", "app"]).await,
        "hello\nworld\n"
    );
    assert_eq!(
        kubectl_ok(&c, &["logs", "web", "-c", "side"]).await,
        "side car\n"
    );
    assert_eq!(
        kubectl_ok(&c, &["logs", "web", "-c", "app", "--previous"]).await,
        "crashed once\n"
    );
    assert_eq!(
        kubectl_ok(
            &c,
            &["logs", "web", "-c", "app", "--tail", "1", "--timestamps"]
        )
        .await,
        "2026-11-23T18:01:05Z world\n"
    );
    assert_eq!(
        kubectl_ok(
            &c,
            &[
                "logs",
                "web",
                "-c",
                "app",
                "--since-time",
                "2026-11-23T18:01:01Z"
            ]
        )
        .await,
        "world\n"
    );
    assert_eq!(
        kubectl_ok(&c, &["logs", "web", "-c", "app", "--limit-bytes", "3"]).await,
        "hel"
    );
    // kubectl picks the first container itself when there are several.
    assert_eq!(kubectl_ok(&c, &["logs", "web"]).await, "hello\nworld\n");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let lines = pods
        .logs(
            "web",
            &LogParams {
                container: Some("side".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(lines, "side car\n");
}

#[tokio::test]
async fn kubectl_logs_errors_are_statuses() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let kube::Error::Api(status) = pods.logs("web", &LogParams::default()).await.unwrap_err()
    else {
        panic!("not a Status error")
    };
    assert_eq!(status.code, 400);
    assert_eq!(
        status.message,
        "a container name must be specified for pod web, choose one of: [app side]"
    );
    let err = kubectl_err(&c, &["logs", "web", "-c", "nope"]).await;
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );
    let err = kubectl_err(&c, &["logs", "ghost"]).await;
    assert!(err.contains("pods \"ghost\" not found"), "{err}");
    let err = kubectl_err(&c, &["logs", "web", "-c", "side", "--previous"]).await;
    assert!(
        err.contains("previous terminated container \"side\" in pod \"web\" not found"),
        "{err}"
    );
    // A node whose agent cannot be reached.
    Api::<Node>::all(c.client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": "n2", "annotations": {SOCKET_ANNOTATION: "/nonexistent/kubelet.sock"}},
        })).unwrap())
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "far"},
        "spec": {"nodeName": "n2", "containers": [{"name": "app", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let err = kubectl_err(&c, &["logs", "far"]).await;
    assert!(
        err.contains("unable to reach the node API of node \"n2\": /nonexistent/kubelet.sock"),
        "{err}"
    );
}

/// The apiserver's own checks of `exec`, `attach` and `port-forward`, and an agent without a
/// runtime refusing them; the sessions themselves are in the e2e suite (they need containerd).
#[tokio::test]
async fn kubectl_exec_errors_are_statuses() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let err = kubectl_err(&c, &["exec", "web", "-c", "app", "--", "true"]).await;
    assert!(err.contains("this agent has no container runtime"), "{err}");
    let err = kubectl_err(&c, &["exec", "web", "-c", "nope", "--", "true"]).await;
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );
    // kubectl forwards ports only to a pod it sees Running.
    set_phase(&pods, "web", "Running").await;
    let err = kubectl_err(&c, &["port-forward", "pod/web", ":80"]).await;
    assert!(err.contains("this agent has no container runtime"), "{err}");
    let pending: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pending"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pending).await.unwrap();
    let err = kubectl_err(&c, &["exec", "pending", "--", "true"]).await;
    assert!(
        err.contains("pod pending does not have a host assigned"),
        "{err}"
    );
    set_phase(&pods, "web", "Succeeded").await;
    let err = kubectl_err(&c, &["attach", "web", "-c", "app"]).await;
    assert!(
        err.contains("cannot attach a container in a completed pod; current phase is Succeeded"),
        "{err}"
    );
}

async fn set_phase(pods: &Api<Pod>, name: &str, phase: &str) {
    let mut pod = pods.get_status(name).await.unwrap();
    pod.status.get_or_insert_default().phase = Some(phase.into());
    pods.replace_status(name, &PostParams::default(), &pod)
        .await
        .unwrap();
}

#[tokio::test]
async fn kubectl_logs_follow_streams_until_the_container_restarts() {
    let c = cluster().await;
    let mut child = kubectl(&c.api.kubeconfig(), &["logs", "-f", "web", "-c", "app"])
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut stdout, &mut seen, "hello\nworld\n").await;
    let app = c.logs.join("default_web_7f00/app");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(app.join("1.log"))
        .unwrap();
    std::io::Write::write_all(&mut file, b"2026-11-23T18:02:00Z stdout F again\n").unwrap();
    read_until(&mut stdout, &mut seen, "world\nagain\n").await;
    std::fs::write(app.join("2.log"), "").unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("kubectl logs -f ends when the next run starts")
        .unwrap();
    assert!(status.success(), "{}", c.api.log());
}

/// Reads kubectl's output until `seen` ends with `want`, or panics after a deadline.
async fn read_until(stdout: &mut tokio::process::ChildStdout, seen: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 1024];
    while !seen.ends_with(want) {
        let n = tokio::time::timeout_at(deadline, stdout.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in time; got {seen:?}"))
            .unwrap();
        assert!(n > 0, "kubectl ended before {want:?}; got {seen:?}");
        seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
}
