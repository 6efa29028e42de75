//! The TLS side of the apiserver's connections to node agents (port 10250): the client
//! certificate it authenticates with, and how it treats the agent's serving certificate.
//!
//! Agents serve with a certificate they sign themselves on first start, as kubelet does without
//! `--tls-cert-file`; nothing the apiserver holds can vouch for it. kube-apiserver in that setup
//! (no `--kubelet-certificate-authority`) does not verify the kubelet's certificate either, so
//! neither do we: the handshake signatures are still checked (the agent must hold the key of the
//! certificate it shows), the chain and name are not. The agent, in turn, admits only client
//! certificates signed by the cluster CA.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::tls::{Pki, TlsError};

/// Accepts any server certificate whose handshake signature verifies (see the module docs).
#[derive(Debug)]
struct AgentCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AgentCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client config for node agents: the kubelet client certificate of `pki`, HTTP/1.1 only
/// (exec, attach and port-forward switch protocols, which HTTP/2 cannot).
pub fn client_config(pki: &Pki) -> Result<rustls::ClientConfig, TlsError> {
    let pem = |what: &str| {
        let path = std::path::PathBuf::from(what);
        move |source| TlsError::Pem { path, source }
    };
    let chain = CertificateDer::pem_slice_iter(pki.kubelet_client_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("kubelet-client.crt"))?;
    let key = PrivateKeyDer::from_pem_slice(pki.kubelet_client_key.as_bytes())
        .map_err(pem("kubelet-client.key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AgentCertificate(provider)))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
