//! [`ApiError`]: every way a request fails, and its `meta/v1 Status` rendering.

use serde_json::{json, Value};

use crate::storage::StorageError;

/// One field error of an [`ApiError::Invalid`] (a `Status` cause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCause {
    /// The field path, e.g. `metadata.name`.
    pub field: String,
    /// The reason, e.g. `FieldValueInvalid`.
    pub reason: &'static str,
    /// The human-readable message.
    pub message: String,
}

/// A failed API request; rendered as a `Status` object with its HTTP code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The object (or namespace) does not exist.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// API group of the resource.
        group: &'static str,
        /// Resource plural, e.g. `configmaps`.
        resource: &'static str,
        /// Object name.
        name: String,
    },
    /// A create found the name taken.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// API group of the resource.
        group: &'static str,
        /// Resource plural.
        resource: &'static str,
        /// Object name.
        name: String,
    },
    /// The object changed since the client read it.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict {
        /// API group of the resource.
        group: &'static str,
        /// Resource plural.
        resource: &'static str,
        /// Object name.
        name: String,
    },
    /// A write refused because of the object's state, with the reason why (e.g. binding a pod
    /// that already has a node); a 409 like [`ApiError::Conflict`], but not to be retried.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {reason}")]
    Refused {
        /// API group of the resource.
        group: &'static str,
        /// Resource (or `resource/subresource`) as named in the message, e.g. `pods/binding`.
        resource: &'static str,
        /// Object name.
        name: String,
        /// Why, e.g. `pod p is already assigned to node "n1"`.
        reason: String,
    },
    /// The object failed validation.
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join(", "))]
    Invalid {
        /// API group of the kind.
        group: &'static str,
        /// The kind, e.g. `ConfigMap`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// The field errors.
        causes: Vec<FieldCause>,
    },
    /// A create in a namespace that is being deleted (the NamespaceLifecycle admission).
    #[error("{resource} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated")]
    NamespaceTerminating {
        /// API group of the resource.
        group: &'static str,
        /// Resource plural.
        resource: &'static str,
        /// Name of the refused object.
        name: String,
        /// The terminating namespace.
        namespace: String,
    },
    /// An admission check refused the request (e.g. a pod naming a missing ServiceAccount).
    #[error("{resource} \"{name}\" is forbidden: {reason}")]
    Forbidden {
        /// API group of the resource.
        group: &'static str,
        /// Resource plural.
        resource: &'static str,
        /// Name of the refused object.
        name: String,
        /// Why.
        reason: String,
    },
    /// The request could not be understood (bad body, wrong kind, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// The verb is not served on this path.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// No such path.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// A watch or list asked for compacted history.
    #[error("too old resource version: {requested} ({compacted})")]
    Expired {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision kept.
        compacted: u64,
    },
    /// A list asked for a revision not written yet.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// The revision asked for.
        requested: u64,
        /// The current revision.
        current: u64,
    },
    /// No client certificate signed by the cluster CA.
    #[error("Unauthorized")]
    Unauthorized,
    /// The body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body's content type is not accepted for this verb.
    #[error("the body of the request was in an unknown format - accepted media types include: {accepted}")]
    UnsupportedMediaType {
        /// The accepted media types.
        accepted: &'static str,
    },
    /// None of the `Accept` types can be produced.
    #[error("only the following media types are accepted: application/json, */*")]
    NotAcceptable,
    /// A node's agent cannot be reached (no known endpoint, connection or protocol failure).
    #[error("unable to reach the node API of node \"{node}\": {reason}")]
    NodeUnreachable {
        /// The node.
        node: String,
        /// What failed, naming the endpoint.
        reason: String,
    },
    /// A node's agent answered a proxied request with an error.
    #[error("{message}")]
    NodeRefused {
        /// The node.
        node: String,
        /// The agent's HTTP status code.
        code: u16,
        /// The agent's message.
        message: String,
    },
    /// Something on the server's side failed that no client can fix.
    #[error("{0}")]
    Internal(String),
    /// The storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::Refused { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::NamespaceTerminating { .. } | ApiError::Forbidden { .. } => 403,
            ApiError::BadRequest(_) => 400,
            ApiError::MethodNotAllowed => 405,
            ApiError::Expired { .. } => 410,
            ApiError::TooLargeResourceVersion { .. } => 504,
            ApiError::Unauthorized => 401,
            ApiError::TooLarge { .. } => 413,
            ApiError::UnsupportedMediaType { .. } => 415,
            ApiError::NotAcceptable => 406,
            ApiError::Storage(StorageError::Compacted { .. }) => 410,
            ApiError::Storage(_) | ApiError::NodeUnreachable { .. } | ApiError::Internal(_) => 500,
            ApiError::NodeRefused { code, .. } => match *code {
                400 | 404 => *code,
                _ => 500,
            },
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::Refused { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::NamespaceTerminating { .. } | ApiError::Forbidden { .. } => "Forbidden",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Expired { .. } | ApiError::Storage(StorageError::Compacted { .. }) => {
                "Expired"
            }
            ApiError::TooLargeResourceVersion { .. } => "Timeout",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::TooLarge { .. } => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::NotAcceptable => "NotAcceptable",
            ApiError::Storage(_) | ApiError::NodeUnreachable { .. } | ApiError::Internal(_) => {
                "InternalError"
            }
            ApiError::NodeRefused { code: 404, .. } => "NotFound",
            ApiError::NodeRefused { code: 400, .. } => "BadRequest",
            ApiError::NodeRefused { .. } => "InternalError",
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let details = match self {
            ApiError::NotFound {
                group,
                resource,
                name,
            }
            | ApiError::AlreadyExists {
                group,
                resource,
                name,
            }
            | ApiError::Conflict {
                group,
                resource,
                name,
            }
            | ApiError::Refused {
                group,
                resource,
                name,
                ..
            }
            | ApiError::Forbidden {
                group,
                resource,
                name,
                ..
            } => Some(json!({"name": name, "group": group, "kind": resource})),
            ApiError::Invalid {
                group,
                kind,
                name,
                causes,
            } => Some(json!({
                "name": name,
                "group": group,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::NamespaceTerminating {
                group,
                resource,
                name,
                namespace,
            } => Some(json!({
                "name": name,
                "group": group,
                "kind": resource,
                "causes": [{
                    "reason": "NamespaceTerminating",
                    "message": format!("namespace {namespace} is being terminated"),
                    "field": "metadata.namespace",
                }],
            })),
            _ => None,
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_status_names_the_object() {
        let err = ApiError::NotFound {
            group: "",
            resource: "configmaps",
            name: "cm1".into(),
        };
        let s = err.status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "configmaps \"cm1\" not found");
        assert_eq!(s["details"]["kind"], "configmaps");
    }

    #[test]
    fn invalid_lists_causes() {
        let err = ApiError::Invalid {
            group: "",
            kind: "ConfigMap",
            name: "A".into(),
            causes: vec![FieldCause {
                field: "metadata.name".into(),
                reason: "FieldValueInvalid",
                message: "Invalid value: \"A\"".into(),
            }],
        };
        assert_eq!(err.code(), 422);
        let s = err.status();
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
        assert!(s["message"]
            .as_str()
            .unwrap()
            .starts_with("ConfigMap \"A\" is invalid"));
    }
}
