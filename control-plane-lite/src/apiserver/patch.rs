//! The PATCH engines: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and strategic merge
//! patch (the subset in `strategic.rs`).

use serde_json::Value;

use super::error::ApiError;

/// The patch flavours, by request `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/apply-patch+yaml`: server-side apply (`apply.rs`).
    Apply,
}

/// The media types PATCH accepts, for the 415 message.
pub const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml";

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch_obj) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let target_obj = target.as_object_mut().expect("just made an object");
    for (key, value) in patch_obj {
        if value.is_null() {
            target_obj.remove(key);
        } else {
            merge_patch(target_obj.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies `patch` (the request body) to `target`.
pub fn apply(kind: PatchType, target: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    match kind {
        PatchType::Merge | PatchType::StrategicMerge => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?;
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "merge patch must be a JSON object".into(),
                ));
            }
            if kind == PatchType::Merge {
                merge_patch(target, &patch);
            } else {
                super::strategic::apply(target, &patch);
            }
        }
        PatchType::Apply => {
            return Err(ApiError::BadRequest(
                "an apply patch is not a merge of the stored object".into(),
            ))
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| ApiError::BadRequest(format!("error decoding json patch: {e}")))?;
            json_patch::patch(target, &patch)
                .map_err(|e| ApiError::BadRequest(format!("the json patch failed: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a":"b","c":{"d":"e","f":"g"},"l":[1,2]});
        merge_patch(&mut t, &json!({"a":"z","c":{"f":null},"l":[3]}));
        assert_eq!(t, json!({"a":"z","c":{"d":"e"},"l":[3]}));
    }

    #[test]
    fn json_patch_ops_and_errors() {
        let mut t = json!({"metadata":{"labels":{"a":"b"}}});
        apply(
            PatchType::Json,
            &mut t,
            br#"[{"op":"add","path":"/metadata/labels/x","value":"y"},{"op":"remove","path":"/metadata/labels/a"}]"#,
        )
        .unwrap();
        assert_eq!(t, json!({"metadata":{"labels":{"x":"y"}}}));
        let err = apply(
            PatchType::Json,
            &mut t,
            br#"[{"op":"remove","path":"/nope"}]"#,
        );
        assert!(matches!(err, Err(ApiError::BadRequest(_))));
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
    }
}
