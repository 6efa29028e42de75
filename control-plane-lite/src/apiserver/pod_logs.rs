//! The `pods/log` subresource: picks the container, finds the agent of the pod's node and proxies
//! its `/containerLogs` stream back to the client.
//!
//! How a node is reached: its agent serves the node API on a unix socket and names it in the
//! Node annotation `netlet.dev/kubelet-socket`. A socket file is reachable across network
//! namespaces (the `cargo xtask up` nodes live in namespaces the apiserver cannot route to) and
//! its 0600 mode is the authentication. Nodes without the annotation (HTTPS to
//! `InternalIP:10250`) are not supported yet and get a 500 saying so.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::error::ApiError;
use super::http::Body;
use super::path::Target;
use super::read::get_object;
use super::resources::find;
use crate::storage::Storage;

/// The Node annotation naming the agent's node API socket (an absolute path).
pub const SOCKET_ANNOTATION: &str = "netlet.dev/kubelet-socket";

/// GET `pods/<name>/log`: `query` is the request's query string, forwarded to the agent.
pub async fn get(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (_, pod) = get_object(storage, t, name).await?;
    let namespace = t.namespace.as_deref().unwrap_or("default");
    let (container, forwarded) = split_query(query);
    let container = pick_container(&pod, name, container)?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let socket = node_socket(storage, node).await?;
    let uri = format!("/containerLogs/{namespace}/{name}/{container}?{forwarded}");
    proxy(node, &socket, &uri).await
}

/// The `container` parameter and the rest of the query, re-encoded for the agent.
fn split_query(query: Option<&str>) -> (Option<String>, String) {
    let mut forwarded = form_urlencoded::Serializer::new(String::new());
    let mut container = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "container" {
            container = Some(v.into_owned());
        } else {
            forwarded.append_pair(&k, &v);
        }
    }
    (container, forwarded.finish())
}

/// The container a log request is for: the one named, or the pod's only container.
fn pick_container(pod: &Value, pod_name: &str, asked: Option<String>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            let known = containers.contains(&c)
                || names("initContainers").contains(&c)
                || names("ephemeralContainers").contains(&c);
            if known {
                Ok(c)
            } else {
                Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {pod_name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// The node API socket of `node`, from its annotation.
async fn node_socket(storage: &dyn Storage, node: &str) -> Result<String, ApiError> {
    let nodes = find("", "v1", "nodes").expect("nodes are in the resource table");
    let t = Target {
        resource: nodes,
        namespace: None,
        name: Some(node.to_string()),
        subresource: None,
        watch_path: false,
    };
    let (_, obj) = get_object(storage, &t, node).await?;
    obj["metadata"]["annotations"][SOCKET_ANNOTATION]
        .as_str()
        .filter(|s| s.starts_with('/'))
        .map(str::to_string)
        .ok_or_else(|| ApiError::NodeUnreachable {
            node: node.to_string(),
            reason: format!(
                "the Node has no {SOCKET_ANNOTATION} annotation (HTTPS to the node address is not \
                 supported)"
            ),
        })
}

/// Sends `GET uri` to the agent on `socket` and streams its answer back; agent errors become
/// `Status` errors with the agent's message.
async fn proxy(node: &str, socket: &str, uri: &str) -> Result<Response<Body>, ApiError> {
    let unreachable = |reason: String| ApiError::NodeUnreachable {
        node: node.to_string(),
        reason: format!("{socket}: {reason}"),
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(format!("connecting: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(%err, "node API connection ended with an error");
        }
    });
    let req = Request::get(uri)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(format!("building the request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(format!("GET {uri}: {e}")))?;
    let (parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        let message = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(ApiError::NodeRefused {
            node: node.to_string(),
            code: parts.status.as_u16(),
            message,
        });
    }
    let chunks = futures::stream::unfold(body, |mut body| async move {
        loop {
            match body.frame().await? {
                Err(err) => {
                    tracing::debug!(%err, "node API log stream broke off");
                    return None;
                }
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        let frame = hyper::body::Frame::data(data);
                        return Some((Ok::<_, std::convert::Infallible>(frame), body));
                    }
                }
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn picks_the_only_container_or_the_named_one() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "app");
        let two = json!({"spec": {
            "containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "init"}],
        }});
        assert_eq!(
            pick_container(&two, "p", None).unwrap_err().to_string(),
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(
            pick_container(&two, "p", Some("init".into())).unwrap(),
            "init"
        );
        assert_eq!(
            pick_container(&two, "p", Some("c".into()))
                .unwrap_err()
                .to_string(),
            "container c is not valid for pod p"
        );
    }
}
