//! HTTP plumbing shared by the handlers: the response body type, JSON and `Status` responses,
//! the bounded body reader, query parameters and `Accept` negotiation.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::error::ApiError;

/// The response body: a full buffer or a watch stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest accepted request body (the apiserver's 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A response with `body` as `application/json`.
pub fn json(code: u16, body: &Value) -> Response<Body> {
    json_bytes(code, serde_json::to_vec(body).unwrap_or_default())
}

/// A JSON response from already encoded bytes.
pub fn json_bytes(code: u16, bytes: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Whether `Accept` lists `media_type` (parameters aside).
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| m.split(';').next().is_some_and(|t| t.trim() == media_type))
}

/// A 200 response with a static body of type `content_type`.
pub fn bytes(body: &'static [u8], content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body)).boxed_unsync());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Whether `Accept` asks for aggregated discovery (`apidiscovery.k8s.io/v2`) before plain JSON.
pub fn wants_aggregated_discovery(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept.split(',').next().is_some_and(|first| {
        let params: Vec<&str> = first.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// A plain-text response (for `/healthz` and friends).
pub fn text(code: u16, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The `Status` response of `err`.
pub fn error(err: &ApiError) -> Response<Body> {
    json(err.code(), &err.status())
}

/// Reads the whole request body, refusing more than [`MAX_BODY`] bytes.
///
/// An oversized body is still read and discarded up to [`DRAIN_LIMIT`] bytes before the 413,
/// so that HTTP/2 clients (curl among them) see the error response rather than a reset stream.
pub async fn read_body(headers: &HeaderMap, mut body: Incoming) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut too_large = declared.is_some_and(|n| n > MAX_BODY);
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|err| ApiError::BadRequest(format!("reading the request body: {err}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        seen += data.len();
        if seen > MAX_BODY {
            too_large = true;
            buf = Vec::new();
        }
        if seen > DRAIN_LIMIT {
            break;
        }
        if !too_large {
            buf.extend_from_slice(data);
        }
    }
    if too_large {
        return Err(ApiError::TooLarge { limit: MAX_BODY });
    }
    Ok(Bytes::from(buf))
}

/// How much of an oversized body is read and discarded before answering 413.
const DRAIN_LIMIT: usize = 4 * MAX_BODY;

/// The request's `Content-Type` without parameters, lowercased (empty if absent).
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Parses the object body of a create or update: JSON, YAML (as `curl --data-binary @x.yaml
/// -H 'Content-Type: application/yaml'` sends it; one document), or protobuf for the few kinds
/// `protobuf.rs` knows.
pub fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = match content_type(headers).as_str() {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding the request body: {e}")))?,
        "application/yaml" => serde_saphyr::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("error decoding the YAML request body: {e}"))
        })?,
        super::protobuf::MEDIA_TYPE => return super::protobuf::decode(body),
        other => {
            tracing::debug!(content_type = other, "unsupported body media type");
            return Err(ApiError::UnsupportedMediaType {
                accepted: "application/json, application/yaml",
            });
        }
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

/// How the client wants list/get results rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    /// The object or list as JSON.
    Json,
    /// A `meta.k8s.io/v1 Table`.
    Table,
    /// `meta.k8s.io/v1 PartialObjectMetadata` (or its list): metadata only.
    Metadata,
}

/// Negotiates `Accept`: a `Table` when asked for `as=Table;v=v1;g=meta.k8s.io`, metadata only
/// for `as=PartialObjectMetadata[List];v=v1;g=meta.k8s.io`, JSON when
/// JSON or anything is acceptable, 406 otherwise (e.g. protobuf only).
pub fn negotiate(headers: &HeaderMap) -> Result<Rendering, ApiError> {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Rendering::Json);
    };
    let mut json_ok = false;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        let is_json = matches!(media.as_str(), "application/json" | "*/*" | "application/*");
        if !is_json {
            continue;
        }
        match params.get("as") {
            Some(&"Table")
                if params.get("v") == Some(&"v1") && params.get("g") == Some(&"meta.k8s.io") =>
            {
                return Ok(Rendering::Table)
            }
            Some(&("PartialObjectMetadata" | "PartialObjectMetadataList"))
                if params.get("v") == Some(&"v1") && params.get("g") == Some(&"meta.k8s.io") =>
            {
                return Ok(Rendering::Metadata)
            }
            Some(_) => {}
            None => json_ok = true,
        }
    }
    if json_ok {
        Ok(Rendering::Json)
    } else {
        Err(ApiError::NotAcceptable)
    }
}

/// Decoded query parameters (last value wins).
#[derive(Debug, Clone, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The value of `key`, if present and non-empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `key` as a boolean (`true`/`1`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    /// `key` as a number; a malformed number is a 400.
    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid {key}: {v:?}")))
            })
            .transpose()
    }
}

/// A response body as JSON, for tests.
#[cfg(test)]
pub(crate) async fn body_json(resp: Response<Body>) -> Value {
    use http_body_util::BodyExt;
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn negotiates_tables_json_and_406() {
        assert_eq!(
            negotiate(&accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")).unwrap(),
            Rendering::Table
        );
        assert_eq!(
            negotiate(&accept("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")).unwrap(),
            Rendering::Json
        );
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), Rendering::Json);
        assert_eq!(
            negotiate(&accept(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            ))
            .unwrap(),
            Rendering::Metadata
        );
        assert_eq!(
            negotiate(&accept(
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
            ))
            .unwrap(),
            Rendering::Metadata
        );
        assert!(negotiate(&accept("application/vnd.kubernetes.protobuf")).is_err());
    }

    #[test]
    fn query_values() {
        let q = Query::parse(Some("watch=true&limit=5&labelSelector=a%3Db&x="));
        assert!(q.flag("watch"));
        assert_eq!(q.number("limit").unwrap(), Some(5));
        assert_eq!(q.get("labelSelector"), Some("a=b"));
        assert_eq!(q.get("x"), None);
    }

    #[test]
    fn bodies_may_be_json_or_yaml() {
        let headers = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
            h
        };
        let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  n: \"3\"\n";
        let v = json_body(&headers("application/yaml"), yaml).unwrap();
        assert_eq!(v["metadata"]["name"], "c");
        assert_eq!(v["data"]["n"], "3");
        let json = br#"{"kind":"ConfigMap","metadata":{"name":"c"}}"#;
        assert_eq!(
            json_body(&headers("application/json"), json).unwrap()["kind"],
            "ConfigMap"
        );
        assert!(matches!(
            json_body(&headers("application/yaml"), b"metadata: [unclosed"),
            Err(ApiError::BadRequest(m)) if m.contains("YAML")
        ));
        assert!(matches!(
            json_body(&headers("application/yaml"), b"- a list\n"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            json_body(&headers("text/plain"), b"x"),
            Err(ApiError::UnsupportedMediaType { .. })
        ));
    }
}
