//! Who a request comes from: the user of a client certificate (CN the username, each O a
//! group, as Kubernetes reads X.509 subjects) or of a service account token, with the groups
//! and extras Kubernetes gives each. Shown by `kubectl auth whoami` (`self_review.rs`); no
//! request is refused on it yet (there is no authorization).

use serde_json::{json, Value};

use super::tokens::Claims;

/// The group every authenticated user is in.
const AUTHENTICATED: &str = "system:authenticated";

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The username.
    pub username: String,
    /// The uid, for service accounts.
    pub uid: Option<String>,
    /// Groups, `system:authenticated` last.
    pub groups: Vec<String>,
    /// Extra attributes (the bound pod and node, the token id).
    pub extra: Vec<(&'static str, String)>,
}

impl Identity {
    /// The user of a client certificate whose chain the TLS layer has verified: the subject's
    /// CN and Os.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let username = subject
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let mut groups: Vec<String> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(String::from))
            .collect();
        groups.push(AUTHENTICATED.into());
        Some(Identity {
            username,
            uid: None,
            groups,
            extra: Vec::new(),
        })
    }

    /// The user of a verified service account token.
    pub fn from_claims(c: &Claims) -> Self {
        let k = &c.kubernetes;
        let mut extra = vec![(
            "authentication.kubernetes.io/credential-id",
            format!("JTI={}", c.jti),
        )];
        if let Some(p) = &k.pod {
            extra.push(("authentication.kubernetes.io/pod-name", p.name.clone()));
            extra.push(("authentication.kubernetes.io/pod-uid", p.uid.clone()));
        }
        if let Some(n) = &k.node {
            extra.push(("authentication.kubernetes.io/node-name", n.name.clone()));
            extra.push(("authentication.kubernetes.io/node-uid", n.uid.clone()));
        }
        Identity {
            username: c.sub.clone(),
            uid: Some(k.serviceaccount.uid.clone()),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", k.namespace),
                AUTHENTICATED.into(),
            ],
            extra,
        }
    }

    /// The `userInfo` of review objects.
    pub fn user_info(&self) -> Value {
        let mut v = json!({"username": self.username, "groups": self.groups});
        if let Some(uid) = &self.uid {
            v["uid"] = json!(uid);
        }
        if !self.extra.is_empty() {
            let extra: serde_json::Map<String, Value> = self
                .extra
                .iter()
                .map(|(k, val)| ((*k).to_string(), json!([val])))
                .collect();
            v["extra"] = Value::Object(extra);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn a_certificate_gives_cn_and_organizations() {
        let pki = crate::apiserver::Pki::generate().unwrap();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(pki.admin_cert.as_bytes()).unwrap();
        let id = Identity::from_certificate(&der).unwrap();
        assert_eq!(id.username, "admin");
        assert_eq!(id.groups, ["system:masters", "system:authenticated"]);
        assert_eq!(
            id.user_info(),
            json!({"username": "admin", "groups": ["system:masters", "system:authenticated"]})
        );
        assert!(Identity::from_certificate(b"junk").is_none());
    }

    #[test]
    fn a_token_gives_the_service_account_groups_and_its_pod() {
        let c = crate::apiserver::tokens::test_claims("ns", "robot");
        let info = Identity::from_claims(&c).user_info();
        assert_eq!(info["username"], "system:serviceaccount:ns:robot");
        assert_eq!(info["uid"], "u1");
        assert_eq!(
            info["groups"],
            json!([
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ])
        );
        assert_eq!(
            info["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["p"])
        );
        assert_eq!(
            info["extra"]["authentication.kubernetes.io/credential-id"],
            json!(["JTI=j1"])
        );
    }
}
