//! Request dispatch: authentication verdict, non-resource paths (health, version, discovery,
//! OpenAPI), then resource paths to the read, write and watch handlers by verb.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::deletion::{self, DeleteOptions};
use super::discovery;
use super::error::ApiError;
use super::event_cache::EventCache;
use super::http::{self, Body, Query, Rendering};
use super::identity::Identity;
use super::node_api::NodeDialer;
use super::patch::{self, PatchType};
use super::path::{self, Parsed, Subresource, Target};
use super::services::ServiceAllocator;
use super::strict::FieldValidation;
use super::token_request::ServiceAccountTokens;
use super::tokens::TokenKeys;
use super::{
    binding, deletecollection, eviction, openapi, openapi_v2, pod_logs, pod_stream, protobuf, read,
    self_review, watch, write,
};
use crate::storage::Storage;

/// The apiserver's request handler, shared by all connections.
#[derive(Clone)]
pub struct Router {
    storage: Arc<dyn Storage>,
    services: Arc<ServiceAllocator>,
    nodes: NodeDialer,
    events: Arc<EventCache>,
    tokens: Arc<ServiceAccountTokens>,
    root_ca: Arc<str>,
}

impl Router {
    /// A router over `storage`; Service writes allocate through `services`; `pods/log`, `exec`
    /// and the like reach node agents through `nodes`; service account tokens are issued and
    /// checked with `tokens`; new namespaces get the cluster CA `root_ca` (PEM) published.
    pub fn new(
        storage: Arc<dyn Storage>,
        services: Arc<ServiceAllocator>,
        nodes: NodeDialer,
        tokens: TokenKeys,
        root_ca: &str,
    ) -> Self {
        Router {
            storage,
            services,
            nodes,
            events: Arc::default(),
            tokens: Arc::new(ServiceAccountTokens::new(tokens)),
            root_ca: Arc::from(root_ca),
        }
    }

    /// Answers one request. `certificate_user` is the user of the connection's client
    /// certificate, which the TLS layer checked against the cluster CA; without one, a request
    /// needs a valid service account bearer token. Everything but health checks requires one
    /// or the other. Any authenticated client may do anything: there is no authorization
    /// (RBAC) yet.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        certificate_user: Option<Arc<Identity>>,
    ) -> Response<Body> {
        let method = req.method().clone();
        let uri_path = req.uri().path().to_string();
        let result = self.dispatch(req, certificate_user).await;
        let resp = result.unwrap_or_else(|err| {
            if err.code() >= 500 {
                tracing::warn!(%method, path = %uri_path, %err, "request failed");
            }
            http::error(&err)
        });
        tracing::debug!(%method, path = %uri_path, status = resp.status().as_u16(), "request");
        resp
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        certificate_user: Option<Arc<Identity>>,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
            return Ok(http::text(200, "ok"));
        }
        let user = match certificate_user {
            Some(user) => user,
            None => {
                let bearer = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or(ApiError::Unauthorized)?;
                let claims = self
                    .tokens
                    .authenticate(self.storage.as_ref(), bearer)
                    .await?;
                Arc::new(Identity::from_claims(&claims))
            }
        };
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let get_only = |doc: Option<serde_json::Value>| -> Result<Response<Body>, ApiError> {
            if req.method() != Method::GET {
                return Err(ApiError::MethodNotAllowed);
            }
            doc.map(|d| http::json(200, &d)).ok_or(ApiError::NoRoute)
        };
        match segments.as_slice() {
            ["version"] => get_only(Some(discovery::version())),
            ["api"] | ["apis"] if http::wants_aggregated_discovery(req.headers()) => {
                get_only(Some(discovery::aggregated(segments == ["api"]))).map(|mut resp| {
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(discovery::AGGREGATED_MEDIA_TYPE),
                    );
                    resp
                })
            }
            ["api"] => get_only(Some(discovery::api_versions())),
            ["apis"] => get_only(Some(discovery::api_group_list())),
            ["api", "v1"] => get_only(discovery::resource_list("", "v1")),
            ["openapi", "v2"] if req.method() == Method::GET => {
                let headers = req.headers();
                let protobuf = http::accepts(headers, openapi_v2::PROTOBUF_ACCEPT)
                    || http::accepts(headers, openapi_v2::PROTOBUF);
                Ok(if protobuf {
                    http::bytes(openapi_v2::protobuf(), openapi_v2::PROTOBUF)
                } else {
                    http::json(200, openapi_v2::document())
                })
            }
            ["openapi", "v3"] => get_only(Some(openapi::index())),
            ["openapi", "v3", rest @ ..] => get_only(openapi::document(&rest.join("/"))),
            ["apis", group @ ("authentication.k8s.io" | "authorization.k8s.io"), version, plural]
                if req.method() == Method::POST =>
            {
                let (group, version, plural) =
                    (group.to_string(), version.to_string(), plural.to_string());
                let (parts, body) = req.into_parts();
                let bytes = http::read_body(&parts.headers, body).await?;
                // kubectl sends these in protobuf; only their spec is echoed back, so one we
                // do not decode is answered without it.
                let body = if http::content_type(&parts.headers) == protobuf::MEDIA_TYPE {
                    serde_json::json!({})
                } else {
                    http::json_body(&parts.headers, &bytes)?
                };
                match self_review::review(&group, &version, &plural, &body, &user) {
                    Some(answer) => answer.map(|v| http::json(201, &v)),
                    None => Err(ApiError::NoRoute),
                }
            }
            ["apis", group] => get_only(discovery::api_group_doc(group)),
            ["apis", group, version] => get_only(discovery::resource_list(group, version)),
            ["api", "v1", rest @ ..] => {
                let parsed = path::parse("", "v1", rest);
                self.resource(req, parsed).await
            }
            ["apis", group, version, rest @ ..] => {
                let parsed = path::parse(group, version, rest);
                self.resource(req, parsed).await
            }
            _ => Err(ApiError::NoRoute),
        }
    }

    async fn resource(
        &self,
        req: Request<Incoming>,
        parsed: Parsed,
    ) -> Result<Response<Body>, ApiError> {
        let Parsed::Target(t) = parsed else {
            return Err(ApiError::NoRoute);
        };
        let query = Query::parse(req.uri().query());
        let storage = self.storage.as_ref();
        let method = req.method().clone();
        if t.subresource == Some(Subresource::Log) {
            let Some(name) = t.name.as_deref().filter(|_| req.method() == Method::GET) else {
                return Err(not_allowed(&t));
            };
            return pod_logs::get(storage, &self.nodes, &t, name, req.uri().query()).await;
        }
        if matches!(
            t.subresource,
            Some(Subresource::Exec | Subresource::Attach | Subresource::PortForward)
        ) {
            let streaming = req.method() == Method::GET || req.method() == Method::POST;
            let Some(name) = t.name.clone().filter(|_| streaming) else {
                return Err(not_allowed(&t));
            };
            return pod_stream::serve(storage, &self.nodes, &t, &name, req).await;
        }
        let (parts, body) = req.into_parts();
        let headers = parts.headers;
        // The body is read before any verdict so that errors reach HTTP/2 clients intact.
        let bytes = if method == Method::GET {
            bytes::Bytes::new()
        } else {
            http::read_body(&headers, body).await?
        };
        let name = t.name.clone();
        let dry_run = match query.get("dryRun") {
            None => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported dryRun value {other:?}; only All is supported"
                )))
            }
        };
        let opts = write::WriteOptions {
            validation: FieldValidation::parse(query.get("fieldValidation")),
            dry_run,
            services: Some(self.services.as_ref()),
            root_ca: Some(&self.root_ca),
        };
        let rendering = if method == Method::GET {
            http::negotiate(&headers)?
        } else {
            Rendering::Json
        };
        if t.watch_path || (method == Method::GET && query.flag("watch")) {
            if method != Method::GET || t.subresource.is_some() {
                return Err(ApiError::MethodNotAllowed);
            }
            return watch::watch(
                Arc::clone(&self.storage),
                Arc::clone(&self.events),
                &t,
                rendering,
                &query,
            );
        }
        // Subresources that only take a POST of their own kind.
        if t.subresource == Some(Subresource::Binding) {
            if method != Method::POST {
                return Err(not_allowed(&t));
            }
            let body = http::json_body(&headers, &bytes)?;
            return binding::create(storage, &t, body, dry_run).await;
        }
        if t.subresource == Some(Subresource::Token) {
            let Some(name) = name.as_deref().filter(|_| method == Method::POST) else {
                return Err(not_allowed(&t));
            };
            let body = http::json_body(&headers, &bytes)?;
            return self.tokens.create(storage, &t, name, body).await;
        }
        if t.subresource == Some(Subresource::Eviction) {
            let Some(name) = name.as_deref().filter(|_| method == Method::POST) else {
                return Err(not_allowed(&t));
            };
            let body = http::json_body(&headers, &bytes)?;
            return eviction::create(storage, &t, name, body, dry_run).await;
        }
        match (method, name) {
            (Method::GET, None) if t.subresource.is_none() => {
                read::list(storage, &t, rendering, &query).await
            }
            (Method::GET, Some(name)) => read::get(storage, &t, &name, rendering, &query).await,
            (Method::POST, None) if t.subresource.is_none() => {
                let object = http::json_body(&headers, &bytes)?;
                write::create(storage, &t, object, opts).await
            }
            (Method::PUT, Some(name)) => {
                let object = http::json_body(&headers, &bytes)?;
                write::update(storage, &t, &name, object, opts).await
            }
            (Method::PATCH, Some(name)) => match patch_type(&headers)? {
                PatchType::Apply => {
                    let manager = query.get("fieldManager").ok_or_else(|| {
                        ApiError::BadRequest(
                            "PATCH with application/apply-patch+yaml requires fieldManager to be set"
                                .into(),
                        )
                    })?;
                    let force = query.flag("force");
                    write::server_side_apply(storage, &t, &name, &bytes, (manager, force), opts)
                        .await
                }
                kind => write::patch(storage, &t, &name, kind, &bytes, opts).await,
            },
            (Method::DELETE, None) if t.subresource.is_none() => {
                let options = DeleteOptions::parse(&bytes, query.get("gracePeriodSeconds"))?;
                deletecollection::delete_collection(storage, &t, &query, &options, dry_run).await
            }
            (Method::DELETE, Some(name)) if t.subresource.is_none() => {
                let options = DeleteOptions::parse(&bytes, query.get("gracePeriodSeconds"))?;
                deletion::delete(storage, &t, &name, &options, dry_run).await
            }
            _ => Err(not_allowed(&t)),
        }
    }
}

fn patch_type(headers: &hyper::HeaderMap) -> Result<PatchType, ApiError> {
    let ct = http::content_type(headers);
    PatchType::from_content_type(&ct).ok_or(ApiError::UnsupportedMediaType {
        accepted: patch::ACCEPTED,
    })
}

fn not_allowed(t: &Target) -> ApiError {
    tracing::debug!(resource = t.resource.plural, "method not allowed");
    ApiError::MethodNotAllowed
}
