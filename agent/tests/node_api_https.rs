//! The node API on HTTPS, as kube-apiserver reaches kubelet: our apiserver proxies `pods/log` to
//! the agent's HTTPS server at the Node's InternalIP and kubelet port, authenticating with its
//! kubelet client certificate; the agent admits only certificates of the cluster CA in group
//! `system:masters`. Everything listens on 127.0.0.1 in the test's own namespace.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use integration::TestApiserver;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{LogParams, PostParams};
use kube::Api;
use netlet_agent::server::handler::Handler;
use netlet_agent::server::{https, tls};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// An apiserver, an agent node API on 127.0.0.1 serving one pod's logs, Node `n1` pointing at
/// it, and pod `web` bound to `n1`.
struct Cluster {
    api: TestApiserver,
    client: kube::Client,
    port: u16,
    /// The agent's serving certificate, which direct clients in this test trust.
    serving: CertificateDer<'static>,
    _dir: tempfile::TempDir,
    cancel: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    tls::read_ca_file(path).unwrap()
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("pods");
    std::fs::create_dir_all(logs.join("default_web_7f00/app")).unwrap();
    std::fs::write(
        logs.join("default_web_7f00/app/0.log"),
        "2026-12-07T18:00:00Z stdout F over https\n",
    )
    .unwrap();
    let api = TestApiserver::start();
    let client = api.client().await;

    let (chain, key) =
        tls::load_or_create_serving(&dir.path().join("pki"), "n1", "127.0.0.1".parse().unwrap())
            .unwrap();
    let serving = chain[0].clone();
    let cluster_ca = pem_certs(&api.dir().join("pki/ca.crt"));
    let config = tls::server_config(chain, key, cluster_ca).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cancel = CancellationToken::new();
    tokio::spawn(https::serve(
        listener,
        Arc::new(config),
        Handler::new(logs),
        cancel.clone(),
    ));

    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
    }});
    nodes
        .patch_status(
            "n1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(status),
        )
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "busybox"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    Cluster {
        api,
        client,
        port,
        serving,
        _dir: dir,
        cancel,
    }
}

/// A client certificate `CN=<cn>, O=<org>` signed by the CA in `pki` (a data dir's `pki/`).
fn client_cert(
    pki: &Path,
    cn: &str,
    org: &str,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    (cert.der().clone(), key)
}

/// `GET path` on the agent directly, as `identity` (none: anonymous): (status, body), or the
/// connection error.
async fn get(
    c: &Cluster,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    path: &str,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.serving.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

#[tokio::test]
async fn pod_logs_reach_the_agent_over_https_with_the_kubelet_client_certificate() {
    let c = cluster().await;
    let pods = Api::<Pod>::namespaced(c.client.clone(), "default");
    let logs = pods.logs("web", &LogParams::default()).await;
    assert_eq!(
        logs.as_deref().map_err(|e| format!("{e}\n{}", c.api.log())),
        Ok("over https\n")
    );
    // Stock kubectl, through the same path.
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.api.kubeconfig())
        .args(["logs", "web"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over https\n");
}

#[tokio::test]
async fn the_agent_admits_only_the_cluster_ca_and_system_masters() {
    let c = cluster().await;
    let pki = c.api.dir().join("pki");
    let path = "/containerLogs/default/web/app";

    let masters = client_cert(&pki, "someone", "system:masters");
    assert_eq!(
        get(&c, Some(masters), path).await,
        Ok((200, "over https\n".to_string()))
    );

    let (code, body) = get(&c, None, path).await.unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("client certificate"), "{body}");

    let node = client_cert(&pki, "system:node:n1", "system:nodes");
    let (code, body) = get(&c, Some(node), path).await.unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("user=system:node:n1"), "{body}");

    // Same names (even the CA's), another CA: the handshake itself fails.
    let other = tempfile::tempdir().unwrap();
    let other_pki = foreign_ca(other.path());
    let stranger = client_cert(&other_pki, "admin", "system:masters");
    let refused = get(&c, Some(stranger), path).await;
    assert!(
        refused.is_err(),
        "a foreign CA's certificate was admitted: {refused:?}"
    );
}

/// A CA of its own in `dir` (`ca.crt`, `ca.key`), unrelated to the cluster's.
fn foreign_ca(dir: &Path) -> std::path::PathBuf {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "netlet-ca");
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
    dir.to_path_buf()
}
