//! The agent's only link to the container runtime: a CRI `runtime.v1` client over a unix socket.
//!
//! Everything else in the agent talks to [`CriClient`], never to tonic or the generated types'
//! services, so the runtime edge stays one file wide (and can get a fake behind a trait). The
//! request and response messages are re-exported as [`api`]; the methods take and return them
//! with the envelope stripped: ids as strings, statuses unwrapped, absent fields as errors.
//!
//! Each call carries a deadline ([`CriClient::with_timeout`], 2 minutes by default like the
//! kubelet's `--runtime-request-timeout`), so a wedged runtime turns into an error naming the
//! operation and the pod, container or image it was about, instead of a hung sync loop.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The CRI `runtime.v1` messages (generated from kubernetes/cri-api by the `k8s-cri` crate).
pub use k8s_cri::v1 as api;

/// The CRI API version this client speaks, as sent in `Version`.
pub const API_VERSION: &str = "v1";

/// Default deadline of one CRI call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a failed CRI call was about, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The runtime itself (`Version`, listings).
    Runtime,
    /// A pod sandbox: its id, or its `namespace/name` before it has one.
    Sandbox(String),
    /// A container: its id, or its name before it has one.
    Container(String),
    /// An image reference.
    Image(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Runtime => f.write_str("the runtime"),
            Subject::Sandbox(s) => write!(f, "pod sandbox {s}"),
            Subject::Container(c) => write!(f, "container {c}"),
            Subject::Image(i) => write!(f, "image {i}"),
        }
    }
}

/// Errors of the CRI client.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The runtime's socket could not be connected.
    #[error("connecting to the CRI socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why the connection failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered a call with an error status (or the deadline passed).
    #[error("CRI {op} for {subject}: {status}")]
    Call {
        /// The CRI method, e.g. `RunPodSandbox`.
        op: &'static str,
        /// What the call was about.
        subject: Subject,
        /// The gRPC status (boxed: it is large and errors travel far).
        #[source]
        status: Box<tonic::Status>,
    },
    /// The runtime answered successfully but left out a field the protocol requires.
    #[error("CRI {op} for {subject}: the response has no {field}")]
    MissingField {
        /// The CRI method.
        op: &'static str,
        /// What the call was about.
        subject: Subject,
        /// The missing field.
        field: &'static str,
    },
}

impl CriError {
    /// Whether the runtime said the object does not exist (gRPC `NotFound`): removing or
    /// stopping something already gone is success for a reconcile loop.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

/// Result of CRI calls.
pub type Result<T, E = CriError> = std::result::Result<T, E>;

/// A CRI client for one runtime endpoint (runtime and image services on the same socket).
///
/// Cheap to clone; calls take `&self` so several tasks can share one connection.
#[derive(Debug, Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

impl CriClient {
    /// Connects to the runtime listening on the unix socket `path` (e.g. containerd's
    /// `/run/containerd/containerd.sock`).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let socket = path.clone();
        // The URI is required by tonic but unused: the connector below ignores it.
        let channel = Endpoint::from_static("http://[::1]:0")
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { UnixStream::connect(socket).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|source| CriError::Connect { path, source })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with another per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Wraps `msg` in a request carrying the deadline `timeout`.
    fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        req
    }

    /// The runtime's name and versions (`Version`).
    pub async fn version(&self) -> Result<api::VersionResponse> {
        let req = self.request(
            api::VersionRequest {
                version: API_VERSION.into(),
            },
            self.timeout,
        );
        let resp = self.runtime.clone().version(req).await;
        call("Version", Subject::Runtime, resp)
    }

    /// The runtime's conditions (`Status`): `RuntimeReady`, and `NetworkReady` once the CNI
    /// config is loaded. A node is not ready for pods until both hold.
    pub async fn status(&self) -> Result<api::RuntimeStatus> {
        let req = self.request(api::StatusRequest { verbose: false }, self.timeout);
        let resp = self.runtime.clone().status(req).await;
        call("Status", Subject::Runtime, resp)?
            .status
            .ok_or(CriError::MissingField {
                op: "Status",
                subject: Subject::Runtime,
                field: "status",
            })
    }

    /// Creates and starts a pod sandbox, network included (`RunPodSandbox`); returns its id.
    ///
    /// This is where the runtime invokes the CNI plugin, so network setup failures surface here.
    pub async fn run_pod_sandbox(
        &self,
        config: api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        let subject = Subject::Sandbox(sandbox_name(&config));
        let req = self.request(
            api::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: runtime_handler.into(),
            },
            self.timeout,
        );
        let resp = self.runtime.clone().run_pod_sandbox(req).await;
        Ok(call("RunPodSandbox", subject, resp)?.pod_sandbox_id)
    }

    /// Stops a sandbox's containers and tears down its network (`StopPodSandbox`).
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = self.request(
            api::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            },
            self.timeout,
        );
        let resp = self.runtime.clone().stop_pod_sandbox(req).await;
        call("StopPodSandbox", Subject::Sandbox(id.into()), resp)?;
        Ok(())
    }

    /// Removes a stopped sandbox and its containers (`RemovePodSandbox`).
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = self.request(
            api::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            },
            self.timeout,
        );
        let resp = self.runtime.clone().remove_pod_sandbox(req).await;
        call("RemovePodSandbox", Subject::Sandbox(id.into()), resp)?;
        Ok(())
    }

    /// A sandbox's state, network addresses and metadata (`PodSandboxStatus`).
    pub async fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus> {
        let subject = Subject::Sandbox(id.into());
        let req = self.request(
            api::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            },
            self.timeout,
        );
        let resp = self.runtime.clone().pod_sandbox_status(req).await;
        call("PodSandboxStatus", subject.clone(), resp)?
            .status
            .ok_or(CriError::MissingField {
                op: "PodSandboxStatus",
                subject,
                field: "status",
            })
    }

    /// The sandboxes matching `filter` (all of them with `None`) (`ListPodSandbox`).
    pub async fn list_pod_sandbox(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> Result<Vec<api::PodSandbox>> {
        let req = self.request(api::ListPodSandboxRequest { filter }, self.timeout);
        let resp = self.runtime.clone().list_pod_sandbox(req).await;
        Ok(call("ListPodSandbox", Subject::Runtime, resp)?.items)
    }

    /// Creates a container in sandbox `pod_sandbox_id` (`CreateContainer`); returns its id.
    ///
    /// `sandbox_config` must be the config the sandbox was run with (the runtime derives the
    /// container's cgroup parent, log directory and namespaces from it).
    pub async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map_or_else(String::new, |m| m.name.clone());
        let subject = Subject::Container(format!("{name} in sandbox {pod_sandbox_id}"));
        let req = self.request(
            api::CreateContainerRequest {
                pod_sandbox_id: pod_sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            },
            self.timeout,
        );
        let resp = self.runtime.clone().create_container(req).await;
        Ok(call("CreateContainer", subject, resp)?.container_id)
    }

    /// Starts a created container (`StartContainer`).
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let req = self.request(
            api::StartContainerRequest {
                container_id: id.into(),
            },
            self.timeout,
        );
        let resp = self.runtime.clone().start_container(req).await;
        call("StartContainer", Subject::Container(id.into()), resp)?;
        Ok(())
    }

    /// Stops a container: SIGTERM, then SIGKILL after `grace` (`StopContainer`).
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let req = self.request(
            api::StopContainerRequest {
                container_id: id.into(),
                timeout: secs(grace),
            },
            self.timeout + grace,
        );
        let resp = self.runtime.clone().stop_container(req).await;
        call("StopContainer", Subject::Container(id.into()), resp)?;
        Ok(())
    }

    /// Removes a container, stopping it first if needed (`RemoveContainer`).
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let req = self.request(
            api::RemoveContainerRequest {
                container_id: id.into(),
            },
            self.timeout,
        );
        let resp = self.runtime.clone().remove_container(req).await;
        call("RemoveContainer", Subject::Container(id.into()), resp)?;
        Ok(())
    }

    /// A container's state, exit code and timestamps (`ContainerStatus`).
    pub async fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let subject = Subject::Container(id.into());
        let req = self.request(
            api::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            },
            self.timeout,
        );
        let resp = self.runtime.clone().container_status(req).await;
        call("ContainerStatus", subject.clone(), resp)?
            .status
            .ok_or(CriError::MissingField {
                op: "ContainerStatus",
                subject,
                field: "status",
            })
    }

    /// The containers matching `filter` (all of them with `None`) (`ListContainers`).
    pub async fn list_containers(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> Result<Vec<api::Container>> {
        let req = self.request(api::ListContainersRequest { filter }, self.timeout);
        let resp = self.runtime.clone().list_containers(req).await;
        Ok(call("ListContainers", Subject::Runtime, resp)?.containers)
    }

    /// Runs `cmd` in a running container and collects its output (`ExecSync`), e.g. for exec
    /// probes. A non-zero exit is not an error: it is in the response's `exit_code`.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<api::ExecSyncResponse> {
        let req = self.request(
            api::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: secs(timeout),
            },
            self.timeout + timeout,
        );
        let resp = self.runtime.clone().exec_sync(req).await;
        call("ExecSync", Subject::Container(id.into()), resp)
    }

    /// A streaming URL for an interactive command in a running container (`Exec`): the runtime
    /// serves the SPDY or websocket session itself; the node API proxies the client to it.
    pub async fn exec(&self, req: api::ExecRequest) -> Result<String> {
        let subject = Subject::Container(req.container_id.clone());
        let resp = self
            .runtime
            .clone()
            .exec(self.request(req, self.timeout))
            .await;
        Ok(call("Exec", subject, resp)?.url)
    }

    /// A streaming URL attaching to a running container's main process (`Attach`).
    pub async fn attach(&self, req: api::AttachRequest) -> Result<String> {
        let subject = Subject::Container(req.container_id.clone());
        let resp = self
            .runtime
            .clone()
            .attach(self.request(req, self.timeout))
            .await;
        Ok(call("Attach", subject, resp)?.url)
    }

    /// A streaming URL forwarding ports into a pod sandbox's network namespace (`PortForward`);
    /// the ports are named by the client in the session, so none are given here.
    pub async fn port_forward(&self, sandbox_id: &str) -> Result<String> {
        let req = api::PortForwardRequest {
            pod_sandbox_id: sandbox_id.into(),
            port: Vec::new(),
        };
        let resp = self
            .runtime
            .clone()
            .port_forward(self.request(req, self.timeout))
            .await;
        Ok(call("PortForward", Subject::Sandbox(sandbox_id.into()), resp)?.url)
    }

    /// The image `reference` if the runtime has it, `None` if not (`ImageStatus`).
    pub async fn image_status(&self, reference: &str) -> Result<Option<api::Image>> {
        let req = self.request(
            api::ImageStatusRequest {
                image: Some(image_spec(reference)),
                verbose: false,
            },
            self.timeout,
        );
        let resp = self.images.clone().image_status(req).await;
        Ok(call("ImageStatus", Subject::Image(reference.into()), resp)?.image)
    }

    /// The images the runtime has, optionally only those matching `filter` (`ListImages`).
    pub async fn list_images(&self, filter: Option<&str>) -> Result<Vec<api::Image>> {
        let req = self.request(
            api::ListImagesRequest {
                filter: filter.map(|f| api::ImageFilter {
                    image: Some(image_spec(f)),
                }),
            },
            self.timeout,
        );
        let resp = self.images.clone().list_images(req).await;
        Ok(call("ListImages", Subject::Runtime, resp)?.images)
    }
}

/// The conditions of `status` that do not hold, as `type: reason message`; empty when the
/// runtime is ready (both `RuntimeReady` and `NetworkReady` reported true).
pub fn unready_conditions(status: &api::RuntimeStatus) -> Vec<String> {
    let mut problems: Vec<String> = status
        .conditions
        .iter()
        .filter(|c| !c.status)
        .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message))
        .collect();
    for required in ["RuntimeReady", "NetworkReady"] {
        if !status.conditions.iter().any(|c| c.r#type == required) {
            problems.push(format!("{required}: not reported"));
        }
    }
    problems
}

/// Unwraps a tonic response, naming the operation and its subject on error.
fn call<T>(
    op: &'static str,
    subject: Subject,
    resp: std::result::Result<tonic::Response<T>, tonic::Status>,
) -> Result<T> {
    resp.map(tonic::Response::into_inner)
        .map_err(|status| CriError::Call {
            op,
            subject,
            status: Box::new(status),
        })
}

/// `namespace/name` of a sandbox config, for errors before the sandbox has an id.
fn sandbox_name(config: &api::PodSandboxConfig) -> String {
    config
        .metadata
        .as_ref()
        .map_or_else(String::new, |m| format!("{}/{}", m.namespace, m.name))
}

/// An image spec naming just `reference`.
fn image_spec(reference: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: reference.into(),
        ..Default::default()
    }
}

/// Whole seconds of `d` for CRI's `int64` second fields, rounded up so a sub-second grace
/// period does not become "no grace" (0).
fn secs(d: Duration) -> i64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(s).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(secs(Duration::ZERO), 0);
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn errors_name_the_operation_and_object() {
        let err = call::<()>(
            "StopPodSandbox",
            Subject::Sandbox("abc123".into()),
            Err(tonic::Status::not_found("no such sandbox")),
        )
        .unwrap_err();
        assert!(err.is_not_found());
        let msg = err.to_string();
        assert!(msg.contains("StopPodSandbox"), "{msg}");
        assert!(msg.contains("pod sandbox abc123"), "{msg}");
    }

    #[test]
    fn sandbox_subject_is_namespace_and_name() {
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(sandbox_name(&config), "default/web");
    }

    #[test]
    fn readiness_needs_both_conditions_true() {
        let cond = |t: &str, ok: bool| api::RuntimeCondition {
            r#type: t.into(),
            status: ok,
            reason: if ok { "" } else { "NetworkPluginNotReady" }.into(),
            message: String::new(),
        };
        let ready = api::RuntimeStatus {
            conditions: vec![cond("RuntimeReady", true), cond("NetworkReady", true)],
        };
        assert!(unready_conditions(&ready).is_empty());
        let no_cni = api::RuntimeStatus {
            conditions: vec![cond("RuntimeReady", true), cond("NetworkReady", false)],
        };
        assert_eq!(unready_conditions(&no_cni).len(), 1);
        let silent = api::RuntimeStatus { conditions: vec![] };
        assert_eq!(unready_conditions(&silent).len(), 2);
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let err = CriClient::connect(&path).await.unwrap_err();
        assert!(err.to_string().contains("nope.sock"), "{err}");
    }
}
