//! The `serviceaccounts/token` subresource (TokenRequest: what an agent asks for to fill a
//! pod's projected token, and what `kubectl create token` sends) and bearer-token
//! authentication. A token is accepted only while its ServiceAccount and the object it is
//! bound to still exist with the uids it names, as in Kubernetes: deleting a pod revokes the
//! tokens bound to it, and a pod being deleted keeps its tokens until its deletion time (so
//! that preStop hooks can still reach the API).

use hyper::Response;
use serde_json::{json, Value};

use super::defaults;
use super::error::{ApiError, FieldCause};
use super::http::{self, Body};
use super::path::Target;
use super::read::{get_core, get_object};
use super::tokens::{Claims, KubernetesClaims, ObjectRef, TokenKeys};
use crate::storage::Storage;

/// The group and kind of the request, for errors.
const GROUP: &str = "authentication.k8s.io";
/// Token lifetime when the request names none, as in Kubernetes.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime Kubernetes hands out.
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime the TokenRequest validation allows (2^32 s).
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Issues and checks service account tokens.
#[derive(Debug)]
pub struct ServiceAccountTokens {
    keys: TokenKeys,
}

/// The kinds a token can be bound to, with their plural and whether they are namespaced.
fn bound_kind(kind: &str) -> Option<(&'static str, bool)> {
    match kind {
        "Pod" => Some(("pods", true)),
        "Secret" => Some(("secrets", true)),
        "Node" => Some(("nodes", false)),
        _ => None,
    }
}

fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}

fn invalid(name: &str, field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        group: GROUP,
        kind: "TokenRequest",
        name: name.to_string(),
        causes: vec![FieldCause {
            field: field.to_string(),
            reason: "FieldValueInvalid",
            message,
        }],
    }
}

impl ServiceAccountTokens {
    /// Tokens signed and checked with `keys`.
    pub fn new(keys: TokenKeys) -> Self {
        ServiceAccountTokens { keys }
    }

    /// POST `serviceaccounts/<name>/token`: a signed token for the ServiceAccount, bound to
    /// the object the request names (a Pod, Secret or Node), answered as the TokenRequest with
    /// its status filled in.
    pub async fn create(
        &self,
        storage: &dyn Storage,
        t: &Target,
        name: &str,
        body: Value,
    ) -> Result<Response<Body>, ApiError> {
        if body["kind"].as_str().is_some_and(|k| k != "TokenRequest") {
            return Err(ApiError::BadRequest(format!(
                "the body of serviceaccounts/token must be a TokenRequest, not {}",
                body["kind"]
            )));
        }
        let ns = t.namespace.as_deref().unwrap_or_default();
        let sa = get_object(storage, t, name).await?.1;
        let spec = &body["spec"];
        let expiration = match &spec["expirationSeconds"] {
            Value::Null => DEFAULT_EXPIRATION_SECONDS,
            v => v.as_i64().ok_or_else(|| {
                invalid(
                    name,
                    "spec.expirationSeconds",
                    format!("Invalid value: {v}: must be an integer"),
                )
            })?,
        };
        if expiration < MIN_EXPIRATION_SECONDS {
            return Err(invalid(
                name,
                "spec.expirationSeconds",
                format!(
                    "Invalid value: {expiration}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        if expiration > MAX_EXPIRATION_SECONDS {
            return Err(invalid(
                name,
                "spec.expirationSeconds",
                format!("Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"),
            ));
        }
        let mut audiences: Vec<String> = spec["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        if audiences.is_empty() {
            audiences = self.keys.audiences().to_vec();
        }
        let mut claims = KubernetesClaims {
            namespace: ns.to_string(),
            serviceaccount: ObjectRef {
                name: name.to_string(),
                uid: uid_of(&sa).to_string(),
            },
            pod: None,
            secret: None,
            node: None,
        };
        let bound = &spec["boundObjectRef"];
        if bound.is_object() {
            let kind = bound["kind"].as_str().unwrap_or_default();
            let Some((plural, namespaced)) = bound_kind(kind) else {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token for serviceaccount {name:?} to object of kind {kind:?}"
                )));
            };
            let object_name = bound["name"].as_str().unwrap_or_default();
            if object_name.is_empty() {
                return Err(invalid(
                    name,
                    "spec.boundObjectRef.name",
                    "Required value".into(),
                ));
            }
            let object = get_core(storage, plural, namespaced.then_some(ns), object_name).await?;
            let uid = uid_of(&object).to_string();
            if bound["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty() && u != uid)
            {
                return Err(ApiError::Refused {
                    group: "",
                    resource: plural,
                    name: object_name.to_string(),
                    reason: "the UID in the bound object reference does not match the UID in record. The object might have been deleted and then recreated".into(),
                });
            }
            if kind == "Pod" && object["spec"]["serviceAccountName"].as_str() != Some(name) {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token for serviceaccount {name:?} to pod {object_name:?}: the pod runs as service account {}",
                    object["spec"]["serviceAccountName"]
                )));
            }
            let r = Some(ObjectRef {
                name: object_name.to_string(),
                uid,
            });
            match kind {
                "Pod" => claims.pod = r,
                "Secret" => claims.secret = r,
                _ => claims.node = r,
            }
        }
        let now = defaults::now_seconds();
        let token = self.keys.sign(&Claims {
            iss: self.keys.issuer().to_string(),
            sub: Claims::subject(ns, name),
            aud: audiences.clone(),
            exp: now + expiration,
            iat: now,
            nbf: now,
            jti: defaults::uid(),
            kubernetes: claims,
        });
        let token = token.map_err(|e| ApiError::Internal(e.to_string()))?;
        let expires = k8s_openapi::jiff::Timestamp::from_second(now + expiration)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut out_spec = json!({"audiences": audiences, "expirationSeconds": expiration});
        if bound.is_object() {
            out_spec["boundObjectRef"] = bound.clone();
        }
        Ok(http::json(
            201,
            &json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
                "spec": out_spec,
                "status": {"token": token, "expirationTimestamp": expires},
            }),
        ))
    }

    /// The claims of a bearer token this apiserver issued whose ServiceAccount and bound
    /// object still exist; anything else is 401 Unauthorized (the reason is only logged, as
    /// upstream does, so that probing clients learn nothing).
    pub async fn authenticate(
        &self,
        storage: &dyn Storage,
        token: &str,
    ) -> Result<Claims, ApiError> {
        let claims = self.keys.verify(token).map_err(|e| {
            tracing::debug!(%e, "bearer token refused");
            ApiError::Unauthorized
        })?;
        match self.still_valid(storage, &claims).await {
            Ok(()) => Ok(claims),
            Err(why) => {
                tracing::debug!(subject = %claims.sub, %why, "bearer token refused");
                Err(ApiError::Unauthorized)
            }
        }
    }

    /// Whether the objects `claims` name still exist as they were when it was issued.
    async fn still_valid(&self, storage: &dyn Storage, claims: &Claims) -> Result<(), String> {
        let k = &claims.kubernetes;
        let ns = k.namespace.as_str();
        let refs = [
            ("serviceaccounts", Some(ns), Some(&k.serviceaccount)),
            ("pods", Some(ns), k.pod.as_ref()),
            ("secrets", Some(ns), k.secret.as_ref()),
            ("nodes", None, k.node.as_ref()),
        ];
        let now = defaults::now_seconds();
        for (plural, namespace, r) in refs {
            let Some(r) = r else { continue };
            let object = get_core(storage, plural, namespace, &r.name)
                .await
                .map_err(|e| format!("{plural} {:?}: {e}", r.name))?;
            if uid_of(&object) != r.uid {
                return Err(format!(
                    "{plural} {:?} was recreated (uid {})",
                    r.name,
                    uid_of(&object)
                ));
            }
            let deleted_at = object["metadata"]["deletionTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
            if deleted_at.is_some_and(|t| t.as_second() <= now) {
                return Err(format!("{plural} {:?} is being deleted", r.name));
            }
        }
        Ok(())
    }
}
