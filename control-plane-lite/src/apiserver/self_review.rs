//! The review APIs clients ask about themselves: `SelfSubjectReview` (`kubectl auth whoami`)
//! answers with the caller's identity; `SelfSubjectAccessReview` and `SelfSubjectRulesReview`
//! (`kubectl auth can-i [--list]`) answer what this apiserver enforces, which is everything
//! allowed to every authenticated user (no authorization yet), rather than a 404 that tools
//! take for a broken cluster. Nothing is stored.

use serde_json::{json, Value};

use super::error::ApiError;
use super::identity::Identity;

/// Why every access review is allowed.
const ALLOWED_REASON: &str =
    "netlet-control-plane has no authorization: every authenticated user may do everything";

fn check_kind(body: &Value, kind: &str) -> Result<(), ApiError> {
    match body["kind"].as_str() {
        Some(k) if k != kind => Err(ApiError::BadRequest(format!(
            "the body must be a {kind}, not a {k}"
        ))),
        _ => Ok(()),
    }
}

/// The answer to a POST of `kind` in `group`/`version`, for `who`; `None` for kinds that are
/// not reviews.
pub fn review(
    group: &str,
    version: &str,
    kind_plural: &str,
    body: &Value,
    who: &Identity,
) -> Option<Result<Value, ApiError>> {
    let (kind, status) = match (group, kind_plural) {
        ("authentication.k8s.io", "selfsubjectreviews") => {
            ("SelfSubjectReview", json!({"userInfo": who.user_info()}))
        }
        ("authorization.k8s.io", "selfsubjectaccessreviews") => (
            "SelfSubjectAccessReview",
            json!({"allowed": true, "reason": ALLOWED_REASON}),
        ),
        ("authorization.k8s.io", "selfsubjectrulesreviews") => (
            "SelfSubjectRulesReview",
            json!({
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": false,
            }),
        ),
        _ => return None,
    };
    Some(check_kind(body, kind).map(|()| {
        let mut out = json!({
            "kind": kind,
            "apiVersion": format!("{group}/{version}"),
            "metadata": {"creationTimestamp": null},
            "status": status,
        });
        if body["spec"].is_object() {
            out["spec"] = body["spec"].clone();
        }
        out
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Identity {
        Identity {
            username: "admin".into(),
            uid: None,
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: vec![],
        }
    }

    #[test]
    fn whoami_and_can_i() {
        let who = review(
            "authentication.k8s.io",
            "v1",
            "selfsubjectreviews",
            &json!({}),
            &admin(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(who["kind"], "SelfSubjectReview");
        assert_eq!(who["status"]["userInfo"]["username"], "admin");
        let body = json!({"kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"verb": "create", "resource": "pods"}}});
        let can = review(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            &body,
            &admin(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(can["status"]["allowed"], true);
        assert_eq!(can["spec"]["resourceAttributes"]["verb"], "create");
        let wrong = json!({"kind": "Pod"});
        let err = review(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            &wrong,
            &admin(),
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(review(
            "authorization.k8s.io",
            "v1",
            "subjectaccessreviews",
            &body,
            &admin()
        )
        .is_none());
    }
}
