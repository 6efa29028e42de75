//! The node API's TLS: a serving certificate the agent signs itself on first start (kept in its
//! state directory, as kubelet keeps `pki/kubelet.crt` when not given `--tls-cert-file`), and a
//! server config that asks every client for a certificate chaining to the cluster CA.
//!
//! Nothing vouches for the self-signed certificate, so the apiserver does not verify it (as
//! kube-apiserver does not without `--kubelet-certificate-authority`); what guards the node API
//! is the client certificate, checked here and authorised in `https.rs`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Why the node API's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NodeTlsError {
    /// Reading or writing a certificate or key failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating the serving certificate failed.
    #[error("generating the node API's serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file did not parse.
    #[error("parsing {path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// There is no CA to check client certificates against.
    #[error(
        "the node API needs the cluster CA to authenticate the apiserver: the kubeconfig has no \
         certificate-authority and no --client-ca-file was given"
    )]
    NoClientCa,
    /// rustls refused the configuration.
    #[error("building the node API's TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("building the node API's client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The certificate file in the agent's `pki` directory.
pub const CERT_FILE: &str = "kubelet.crt";
/// The key file beside it (mode 0600).
pub const KEY_FILE: &str = "kubelet.key";

/// The serving certificate and key: loaded from `dir`, or created there (self-signed, for
/// `node_name` and `node_ip`) when either file is missing.
pub fn load_or_create_serving(
    dir: &Path,
    node_name: &str,
    node_ip: IpAddr,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), NodeTlsError> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| NodeTlsError::Io { op, path, source }
    };
    if !(cert_path.exists() && key_path.exists()) {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node_name.to_string()])?;
        params.subject_alt_names.push(SanType::IpAddress(node_ip));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{node_name}@netlet-agent"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.self_signed(&key)?;
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        write_private(&key_path, &key.serialize_pem()).map_err(io("writing", &key_path))?;
        std::fs::write(&cert_path, cert.pem()).map_err(io("writing", &cert_path))?;
    }
    let pem = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NodeTlsError::Pem { path, source }
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(pem(&cert_path))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(pem(&key_path))?;
    Ok((chain, key))
}

/// Writes `content` to a new file only the owner can read.
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(content.as_bytes())
}

/// The CA certificates of a PEM file (kubelet's `--client-ca-file`).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, NodeTlsError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| NodeTlsError::Pem {
            path: path.to_path_buf(),
            source,
        })
}

/// The server config: `chain`/`key` as the serving identity; client certificates must chain to
/// one of `client_cas`. Clients without a certificate complete the handshake and are answered
/// 401 by `https.rs`, so they learn why. HTTP/1.1 only: streaming requests switch protocols.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
) -> Result<rustls::ServerConfig, NodeTlsError> {
    if client_cas.is_empty() {
        return Err(NodeTlsError::NoClientCa);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_cas {
        roots.add(ca)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_is_created_once_and_its_key_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.200.0.11".parse().unwrap();
        let (chain, _) = load_or_create_serving(dir.path(), "node-1", ip).unwrap();
        let (again, _) = load_or_create_serving(dir.path(), "node-1", ip).unwrap();
        assert_eq!(chain, again, "an existing certificate is reused");
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let names = format!("{:?}", sans.value.general_names);
        assert!(names.contains("node-1"), "{names}");
        assert!(
            names.contains("10.200.0.11") || names.contains("[10, 200, 0, 11]"),
            "{names}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_server_config_needs_a_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) =
            load_or_create_serving(dir.path(), "n", "127.0.0.1".parse().unwrap()).unwrap();
        let err = server_config(chain, key, Vec::new()).unwrap_err();
        assert!(matches!(err, NodeTlsError::NoClientCa), "{err}");
    }
}
