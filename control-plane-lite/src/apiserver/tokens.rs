//! Service account tokens: ES256 JWTs signed with the apiserver's service-account key, carrying
//! the claims of Kubernetes' bound tokens (`sub: system:serviceaccount:<ns>:<name>`, and under
//! `kubernetes.io` the ServiceAccount and the pod, secret or node the token is bound to), so
//! that in-cluster clients (client-go's `InClusterConfig`, kube-rs' `Config::incluster`) and
//! other tools reading those claims work unchanged.
//!
//! This file only signs and checks the JWT itself (signature, issuer, audience, lifetime);
//! whether the ServiceAccount and the bound object still exist is `token_request.rs`'s part.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The issuer, and the audience of tokens that name none, as in kubeadm clusters.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Clock skew allowed when checking `exp` and `nbf`, in seconds (upstream allows 60 s too).
const LEEWAY_SECONDS: u64 = 60;

/// A failure to load the key, sign a token, or accept one.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The service-account key did not load.
    #[error("loading the service-account signing key: {0}")]
    Key(String),
    /// Signing failed.
    #[error("signing a service account token for {subject}: {source}")]
    Sign {
        /// The token's subject.
        subject: String,
        /// The JWT library's error.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The token is not one this apiserver issued, or is no longer valid.
    #[error("invalid bearer token: {0}")]
    Invalid(String),
}

/// A name and uid, the way bound-token claims refer to objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: ObjectRef,
    /// The pod the token is bound to: the token dies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The Secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    /// The Node the token is bound to (or the node of the bound pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// The claims of a service account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// A unique id of this token.
    pub jti: String,
    /// What the token is for.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

impl Claims {
    /// The username a token of `namespace`/`name` authenticates as.
    pub fn subject(namespace: &str, name: &str) -> String {
        format!("system:serviceaccount:{namespace}:{name}")
    }
}

/// The service-account signing key with the issuer and the audiences this apiserver accepts.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audiences: Vec<String>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys from a PKCS#8 PEM P-256 private key (`pki/sa.key`); tokens carry `issuer`, and
    /// are accepted when one of their audiences is in `audiences`.
    pub fn from_pem(
        private_pem: &str,
        issuer: &str,
        audiences: Vec<String>,
    ) -> Result<Self, TokenError> {
        let key = |e: &dyn std::fmt::Display| TokenError::Key(e.to_string());
        let pair = rcgen::KeyPair::from_pem(private_pem).map_err(|e| key(&e))?;
        let encoding = EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| key(&e))?;
        let decoding =
            DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes()).map_err(|e| key(&e))?;
        Ok(TokenKeys {
            encoding,
            decoding,
            issuer: issuer.to_string(),
            audiences,
        })
    }

    /// The issuer written into tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences of a token request that names none.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding).map_err(
            |source| TokenError::Sign {
                subject: claims.sub.clone(),
                source,
            },
        )
    }

    /// The claims of `token` when its signature, issuer, audience and lifetime are good.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = LEEWAY_SECONDS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

/// Claims of ServiceAccount `ns`/`sa` (uid `u1`) bound to pod `p` (uid `u2`), for tests.
#[cfg(test)]
pub fn test_claims(ns: &str, sa: &str) -> Claims {
    Claims {
        iss: DEFAULT_ISSUER.into(),
        sub: Claims::subject(ns, sa),
        aud: vec![DEFAULT_ISSUER.into()],
        exp: 0,
        iat: 0,
        nbf: 0,
        jti: "j1".into(),
        kubernetes: KubernetesClaims {
            namespace: ns.into(),
            serviceaccount: ObjectRef {
                name: sa.into(),
                uid: "u1".into(),
            },
            pod: Some(ObjectRef {
                name: "p".into(),
                uid: "u2".into(),
            }),
            secret: None,
            node: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        TokenKeys::from_pem(&pem, DEFAULT_ISSUER, vec![DEFAULT_ISSUER.into()]).unwrap()
    }

    fn claims(aud: &str, iat: i64, exp: i64) -> Claims {
        let mut c = test_claims("ns", "sa");
        (c.aud, c.iat, c.nbf, c.exp) = (vec![aud.into()], iat, iat, exp);
        c
    }

    fn now() -> i64 {
        super::super::defaults::now_seconds()
    }

    #[test]
    fn a_signed_token_verifies_with_its_claims() {
        let k = keys();
        let c = claims(DEFAULT_ISSUER, now(), now() + 600);
        let token = k.sign(&c).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(k.verify(&token).unwrap(), c);
        // The claim names other tools read.
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["kubernetes.io"]["pod"]["uid"], "u2");
        assert_eq!(v["sub"], "system:serviceaccount:ns:sa");
        assert!(v["kubernetes.io"].get("secret").is_none());
    }

    #[test]
    fn foreign_expired_and_wrong_audience_tokens_are_refused() {
        let (k, other) = (keys(), keys());
        let good = claims(DEFAULT_ISSUER, now(), now() + 600);
        assert!(k.verify(&other.sign(&good).unwrap()).is_err(), "other key");
        let expired = claims(DEFAULT_ISSUER, now() - 4000, now() - 3600);
        assert!(k.verify(&k.sign(&expired).unwrap()).is_err(), "expired");
        let vault = claims("vault", now(), now() + 600);
        assert!(k.verify(&k.sign(&vault).unwrap()).is_err(), "audience");
        let future = claims(DEFAULT_ISSUER, now() + 3600, now() + 7200);
        assert!(
            k.verify(&k.sign(&future).unwrap()).is_err(),
            "not yet valid"
        );
        let mut tampered = k.sign(&good).unwrap();
        tampered.insert(tampered.len() / 2, 'x');
        assert!(k.verify(&tampered).is_err(), "tampered");
        assert!(k.verify("not-a-jwt").is_err());
    }
}
