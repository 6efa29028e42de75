//! The Kubernetes REST API over [`crate::storage::Storage`], enough for stock `kubectl`.
//!
//! # Layout
//!
//! - `resources.rs`: the one table of served kinds; everything else reads it.
//! - `router.rs`: dispatch by path and verb; `path.rs` parses resource URLs into a [`Target`]
//!   and storage keys (`/registry/<resource>/[<namespace>/]<name>`).
//! - `discovery.rs`: `/version`, `/api`, `/apis`, legacy and aggregated discovery;
//!   `openapi.rs`: OpenAPI v3 with the kinds' schemas (from k8s-openapi via `schemars`, for
//!   `kubectl explain`) whose operations let kubectl leave validation to `strict.rs`
//!   (`fieldValidation=Strict`); `openapi_v2.rs`: the same as one Swagger 2.0 document, in
//!   JSON or gnostic protobuf (kubectl 1.27 and 1.28 need it for `apply`).
//! - `read.rs` (GET, LIST), `write.rs` (POST, PUT, PATCH, status/scale), `deletion.rs` (DELETE:
//!   graceful deletion of bound pods, finalizers), `deletecollection.rs` (DELETE of a
//!   collection by selectors), `watch.rs` (WATCH streams, sharing decoded objects and encoded
//!   lines through `event_cache.rs`).
//! - `binding.rs`: the `pods/binding` subresource and the `bindings` collection (schedulers).
//! - `eviction.rs`: the `pods/eviction` subresource (`kubectl drain`; no disruption budgets).
//! - `pod_logs.rs`: the `pods/log` subresource, proxied to the agent's node API: HTTPS to the
//!   Node's address and kubelet port, or the unix socket a Node may name instead
//!   (`node_api.rs`, with the client certificate and server check in `node_tls.rs`);
//!   `pod_stream.rs`: `pods/exec`, `pods/attach` and `pods/portforward`, upgraded connections
//!   relayed to the agent and on to the runtime's streaming server.
//! - `events.rs`: `events.k8s.io/v1` Events as a view of the stored core Events.
//! - `services.rs`: cluster IP and NodePort allocation of Service writes;
//!   `namespaces.rs`: namespace lifecycle (default ServiceAccount, no creates while
//!   Terminating, termination).
//! - Helpers of those: `object.rs` (stored form, type checks), `defaults.rs` (system metadata,
//!   per-kind defaults), `validation.rs` (names), `selector.rs` (label/field selectors),
//!   `patch.rs` (merge and JSON patch), `strategic.rs` (strategic merge patch), `table.rs`
//!   (`kubectl get` columns, with cell helpers in `printers.rs`), `protobuf.rs` (protobuf
//!   bodies of kubectl's typed creates).
//! - `http.rs`: bodies, `Accept` negotiation, query parameters; `error.rs`: [`ApiError`] and its
//!   `Status` rendering.
//! - `bootstrap.rs`: the system namespaces (with their default ServiceAccounts) created at
//!   startup, and the `kubernetes` Service with its Endpoints and EndpointSlice.
//! - `tls.rs`: the PKI (CA, serving, admin and kubelet client certificates, the service
//!   account key) and kubeconfig; `server.rs`: the HTTPS accept loop and periodic compaction.
//! - `tokens.rs`: service account tokens (signed JWTs); `token_request.rs`: the
//!   `serviceaccounts/token` subresource and bearer-token authentication;
//!   `service_account_admission.rs`: the token volume every pod gets; `identity.rs`: who a
//!   request comes from (certificate subject or token); `self_review.rs`: `kubectl auth
//!   whoami` and `can-i`.
//!
//! Not done yet: authorization (every authenticated client, service accounts included, may do
//! everything, as with `--authorization-mode=AlwaysAllow`), patch-strategy extensions in the OpenAPI schemas, PodDisruptionBudgets,
//! verifying agents' serving certificates (see `node_tls.rs`), protobuf bodies beyond what kubectl's
//! `create <kind>` commands send, schema-driven strategic merge (a table of merge keys stands
//! in), `propagationPolicy` on DELETE of a collection (it is honoured on single
//! DELETEs), IPv6 and dual-stack
//! Services, `healthCheckNodePort`.

mod apply;
mod binding;
mod bootstrap;
mod defaults;
mod deletecollection;
mod deletion;
mod discovery;
mod error;
mod event_cache;
mod events;
mod eviction;
mod http;
mod identity;
mod metadata;
mod namespaces;
mod node_api;
mod node_tls;
mod object;
mod openapi;
mod openapi_v2;
mod patch;
mod path;
mod pod_logs;
mod pod_stream;
mod printers;
mod protobuf;
mod read;
mod resources;
mod router;
mod selector;
mod self_review;
mod server;
mod service_account_admission;
mod services;
mod strategic;
mod strict;
mod table;
mod tls;
mod token_request;
mod tokens;
mod validation;
mod watch;
mod write;

pub use bootstrap::{ensure_kubernetes_service, ensure_system_namespaces, SYSTEM_NAMESPACES};
pub use error::{ApiError, FieldCause};
pub use node_api::NodeDialer;
pub use path::Target;
pub use resources::{Resource, RESOURCES};
pub use router::Router;
pub use server::{compact_periodically, serve};
pub use services::{CidrError, ServiceAllocator, ServiceCidr};
pub use tls::{Pki, TlsError, KUBELET_CLIENT_CN, MASTERS_GROUP};
pub use tokens::{TokenKeys, DEFAULT_ISSUER};
