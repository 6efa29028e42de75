//! The `pods/log` subresource: picks the container, finds the agent of the pod's node and proxies
//! its `/containerLogs` stream back to the client.
//!
//! How a node is reached is [`node_api`]'s business.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::{Request, Response};
use serde_json::Value;

use super::error::ApiError;
use super::http::Body;
use super::node_api::{self, NodeDialer, NodeEndpoint};
use super::path::Target;
use super::read::get_object;
use crate::storage::Storage;

/// GET `pods/<name>/log`: `query` is the request's query string, forwarded to the agent.
pub async fn get(
    storage: &dyn Storage,
    dialer: &NodeDialer,
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
    let endpoint = node_api::node_endpoint(storage, node).await?;
    let uri = format!("/containerLogs/{namespace}/{name}/{container}?{forwarded}");
    proxy(dialer, node, &endpoint, &uri).await
}

/// The `container` parameter and the rest of the query, re-encoded for the agent.
pub(super) fn split_query(query: Option<&str>) -> (Option<String>, String) {
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

/// The container a log (or exec, attach) request is for: the one named, or the pod's only container.
pub(super) fn pick_container(
    pod: &Value,
    pod_name: &str,
    asked: Option<String>,
) -> Result<String, ApiError> {
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

/// Sends `GET uri` to the agent at `endpoint` and streams its answer back; agent errors become
/// `Status` errors with the agent's message.
async fn proxy(
    dialer: &NodeDialer,
    node: &str,
    endpoint: &NodeEndpoint,
    uri: &str,
) -> Result<Response<Body>, ApiError> {
    let unreachable = |reason: String| node_api::unreachable(node, endpoint, reason);
    let mut sender = dialer.connect(node, endpoint).await?;
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
        return Err(node_api::refused(node, parts.status, body).await);
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
