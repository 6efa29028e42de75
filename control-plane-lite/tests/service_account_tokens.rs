//! Service account tokens against the real `netlet-control-plane serve`: a pod's token volume
//! and CA ConfigMap, TokenRequest bound to a pod, bearer authentication with that token, and
//! its revocation when the pod goes.

use integration::{create_namespace as namespace, status_code as code, TestApiserver};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::{json, Value};

/// A client that authenticates only with `token` (no client certificate).
async fn bearer_client(server: &TestApiserver, token: &str) -> Client {
    let kc = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

async fn token_for(client: &Client, ns: &str, body: Value) -> Result<Value, kube::Error> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create_subresource("token", "default", &PostParams::default(), &body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_bound_token_authenticates_until_the_pod_is_gone() {
    let server = TestApiserver::start();
    let client = server.client().await;
    namespace(&client, "sat").await;

    // Every namespace publishes the cluster CA for in-cluster clients.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "sat");
    let cm = cms.get("kube-root-ca.crt").await.unwrap();
    let ca = cm.data.unwrap()["ca.crt"].clone();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let pki_ca = std::fs::read_to_string(server.dir().join("pki/ca.crt")).unwrap();
    assert_eq!(ca, pki_ca);

    // A new pod gets the token volume mounted where in-cluster clients look.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sat");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let spec = pod.spec.clone().unwrap();
    let volume = spec.volumes.unwrap().pop().unwrap();
    assert!(volume.name.starts_with("kube-api-access-"));
    let mounts = spec.containers[0].volume_mounts.clone().unwrap();
    assert_eq!(
        mounts[0].mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(mounts[0].name, volume.name);

    // A token bound to the pod, as an agent asks for it.
    let uid = pod.metadata.uid.clone().unwrap();
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3607, "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": uid}},
    });
    let tr = token_for(&client, "sat", request).await.unwrap();
    assert_eq!(tr["kind"], "TokenRequest");
    assert_eq!(
        tr["spec"]["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert!(tr["status"]["expirationTimestamp"].is_string());
    let token = tr["status"]["token"].as_str().unwrap().to_string();
    assert_eq!(token.split('.').count(), 3);

    // The token alone authenticates.
    let as_pod = bearer_client(&server, &token).await;
    let seen = Api::<Pod>::namespaced(as_pod.clone(), "sat")
        .get("p")
        .await
        .unwrap();
    assert_eq!(seen.metadata.uid, pod.metadata.uid);

    // Anything else is 401: no token, a forged one, a token for another audience.
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let anonymous = bearer_client(&server, &forged).await;
    let err = Api::<Pod>::namespaced(anonymous, "sat")
        .get("p")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(401), "{err}");
    let vault = json!({"spec": {"audiences": ["vault"]}});
    let vault = token_for(&client, "sat", vault).await.unwrap();
    let vault = bearer_client(&server, vault["status"]["token"].as_str().unwrap()).await;
    let err = Api::<Pod>::namespaced(vault, "sat")
        .get("p")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(401), "{err}");

    // Deleting the pod revokes the tokens bound to it.
    pods.delete("p", &DeleteParams::default()).await.unwrap();
    let err = Api::<Pod>::namespaced(as_pod, "sat")
        .list(&Default::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(401), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_requests_and_pods_get_clear_errors() {
    let server = TestApiserver::start();
    let client = server.client().await;
    namespace(&client, "sat2").await;
    let short = json!({"spec": {"expirationSeconds": 60}});
    let err = token_for(&client, "sat2", short).await.unwrap_err();
    assert_eq!(code(&err), Some(422), "{err}");
    assert!(err.to_string().contains("less than 10 minutes"), "{err}");
    let missing =
        json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "nope"}}});
    let err = token_for(&client, "sat2", missing).await.unwrap_err();
    assert_eq!(code(&err), Some(404), "{err}");
    let kind =
        json!({"spec": {"boundObjectRef": {"kind": "ConfigMap", "apiVersion": "v1", "name": "x"}}});
    let err = token_for(&client, "sat2", kind).await.unwrap_err();
    assert_eq!(code(&err), Some(400), "{err}");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "sat2");
    let err = sas
        .create_subresource::<Value, Value>("token", "robot", &PostParams::default(), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(404), "{err}");

    // A pod naming a ServiceAccount that does not exist is refused, as upstream does.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sat2");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "x"}]},
    }))
    .unwrap();
    let err = pods.create(&PostParams::default(), &pod).await.unwrap_err();
    assert_eq!(code(&err), Some(403), "{err}");
    assert!(
        err.to_string()
            .contains("serviceaccount \"robot\" not found"),
        "{err}"
    );
}
