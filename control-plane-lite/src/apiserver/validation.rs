//! Object name validation (DNS-1123), with the apiserver's messages.

use super::error::FieldCause;

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// The causes why `name` is not a valid object name (empty when it is).
///
/// `label` selects DNS-1123 label rules (namespaces, services) over subdomain rules.
pub fn name_causes(name: &str, label: bool) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(FieldCause {
            field: "metadata.name".into(),
            reason: "FieldValueRequired",
            message: "Required value: name or generateName is required".into(),
        });
        return causes;
    }
    let (ok, msg, max) = if label {
        (is_label(name), LABEL_MSG, 63)
    } else {
        (is_subdomain(name), SUBDOMAIN_MSG, 253)
    };
    if name.len() > max {
        causes.push(FieldCause {
            field: "metadata.name".into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: \"{name}\": must be no more than {max} characters"),
        });
    } else if !ok {
        causes.push(FieldCause {
            field: "metadata.name".into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: \"{name}\": {msg}"),
        });
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(name_causes("abc-1", true).is_empty());
        assert!(!name_causes("a.b", true).is_empty());
        assert!(name_causes("a.b", false).is_empty());
        assert!(!name_causes("Bad_Name", false).is_empty());
        assert!(!name_causes("-a", false).is_empty());
        assert!(!name_causes("", false).is_empty());
        assert!(!name_causes(&"a".repeat(64), true).is_empty());
    }
}
