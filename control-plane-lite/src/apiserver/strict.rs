//! `fieldValidation=Strict`: rejecting bodies with fields the kind does not have.
//!
//! The typed round trip (`resources::DecodeFn`) drops unknown fields; comparing its output with
//! its input finds them. kubectl sends `fieldValidation=Strict` on create and update when the
//! OpenAPI document says the server supports it (`openapi.rs`), so typos in manifests are
//! reported as the apiserver reports them. `Warn` and `Ignore` accept the body (no warning
//! header yet). A PATCH is checked on the patched object (`write.rs`).

use serde_json::Value;

use super::error::ApiError;

/// The `fieldValidation` directive of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Reject unknown fields.
    Strict,
    /// Accept them (dropped by decoding).
    Lenient,
}

impl FieldValidation {
    /// Parses the query parameter (anything but `Strict` is lenient).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Strict") => FieldValidation::Strict,
            _ => FieldValidation::Lenient,
        }
    }
}

fn collect(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i.iter().filter(|(_, v)| !v.is_null()) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    None => out.push(p),
                    Some(ov) => collect(v, ov, &p, out),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (idx, (a, b)) in i.iter().zip(o).enumerate() {
                collect(a, b, &format!("{path}[{idx}]"), out);
            }
        }
        _ => {}
    }
}

/// The paths of fields in `input` that decoding dropped from `output`.
pub fn unknown_fields(input: &Value, output: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(input, output, "", &mut out);
    out
}

/// Fails with the apiserver's `strict decoding error` when `directive` is strict and `input`
/// had fields that `output` lacks.
pub fn check(directive: FieldValidation, input: &Value, output: &Value) -> Result<(), ApiError> {
    if directive != FieldValidation::Strict {
        return Ok(());
    }
    let unknown = unknown_fields(input, output);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::BadRequest(format!(
        "strict decoding error: {}",
        list.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_nested_unknown_fields_and_ignores_nulls() {
        let input = json!({"metadata":{"name":"a","creationTimestamp":null},"spec":{"containers":[{"name":"c","imagee":"x"}]},"extra":1});
        let output = json!({"metadata":{"name":"a"},"spec":{"containers":[{"name":"c"}]}});
        assert_eq!(
            unknown_fields(&input, &output),
            vec!["extra".to_string(), "spec.containers[0].imagee".to_string()]
        );
        let err = check(FieldValidation::Strict, &input, &output).unwrap_err();
        assert!(err.to_string().contains("unknown field \"extra\""));
        assert!(check(FieldValidation::Lenient, &input, &output).is_ok());
    }
}
