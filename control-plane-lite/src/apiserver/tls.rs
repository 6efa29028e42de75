//! The cluster PKI: a self-signed CA, the serving certificate (SAN `127.0.0.1`, `localhost`),
//! the admin client certificate (`CN=admin, O=system:masters`) and the apiserver's client
//! certificate for the node agents (`CN=kube-apiserver-kubelet-client, O=system:masters`, as
//! kubeadm issues it), created on first start in `<data-dir>/pki/`; the rustls server config
//! that requires CA-signed client certificates; and the admin kubeconfig.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// A failure to create, load or use the PKI.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a PKI file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Generating a key or certificate failed.
    #[error("generating {what}: {source}")]
    Generate {
        /// The certificate or key.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM file did not parse.
    #[error("parsing {path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The serving certificate on disk could not be parsed.
    #[error("reading the serving certificate's names: {0}")]
    Unreadable(String),
    /// rustls refused the configuration.
    #[error("building the TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("building the client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The PEM files of the cluster PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca_cert: String,
    /// The CA key, kept (mode 0600) so that later slices can sign node and component
    /// certificates.
    pub ca_key: String,
    /// The serving certificate.
    pub server_cert: String,
    /// The serving key.
    pub server_key: String,
    /// The admin client certificate.
    pub admin_cert: String,
    /// The admin client key.
    pub admin_key: String,
    /// The certificate the apiserver presents to node agents (`pods/log`, `exec`, …).
    pub kubelet_client_cert: String,
    /// Its key.
    pub kubelet_client_key: String,
    /// The key that signs service account tokens (`sa.key`, PKCS#8 P-256).
    pub service_account_key: String,
}

/// The subject of the apiserver's client certificate towards node agents.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
/// The group that agents authorise for their node API (kubeadm gives the apiserver's kubelet
/// client certificate the same one).
pub const MASTERS_GROUP: &str = "system:masters";

/// The files of a PKI created before the kubelet client certificate existed.
const FILES: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "admin.crt",
    "admin.key",
];
/// The kubelet client certificate and key: added to a PKI that lacks them, signed by its CA,
/// rather than replacing the CA (which would invalidate every kubeconfig handed out).
const KUBELET_CLIENT_FILES: [&str; 2] = ["kubelet-client.crt", "kubelet-client.key"];
/// The service-account signing key, likewise added to an older PKI.
const SERVICE_ACCOUNT_KEY: &str = "sa.key";

/// The names in-cluster clients reach the apiserver by (the `kubernetes` Service's DNS names),
/// besides `127.0.0.1` and `localhost`; the service IP and advertised address are added by the
/// caller of [`Pki::ensure_serving_names`].
const IN_CLUSTER_NAMES: [&str; 4] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Writes `content` to `path`, readable only by the owner when it is a key or kubeconfig.
fn write_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let secret = name.ends_with(".key") || name.contains("kubeconfig");
    let mode = if secret { 0o600 } else { 0o644 };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?
        .write_all(content.as_bytes())
}

fn gen(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Generate { what, source }
}

/// A client certificate `CN=<cn>, O=system:masters` signed by `issuer`: (cert, key) in PEM.
fn client_cert(issuer: &Issuer<'_, KeyPair>, cn: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(gen("client key"))?;
    let mut params = CertificateParams::new(Vec::new()).map_err(gen("client"))?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, MASTERS_GROUP);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, issuer)
        .map_err(gen("client certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The DNS names and IP addresses a PEM certificate is valid for.
fn subject_alt_names(pem: &str) -> Result<Vec<String>, TlsError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Pem {
        path: PathBuf::from("server.crt"),
        source,
    })?;
    let unreadable = |e: &dyn std::fmt::Display| TlsError::Unreadable(e.to_string());
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| unreadable(&e))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| unreadable(&e))?
    else {
        return Ok(Vec::new());
    };
    use x509_parser::extensions::GeneralName;
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// Every name the serving certificate needs: loopback, [`IN_CLUSTER_NAMES`] and `extra`, once
/// each.
fn serving_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["127.0.0.1", "localhost"]
        .into_iter()
        .chain(IN_CLUSTER_NAMES)
        .map(String::from)
        .collect();
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// The issuer of a loaded PKI, to sign leaf certificates added to it later.
fn loaded_issuer(ca_cert: &str, ca_key: &str) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let key = KeyPair::from_pem(ca_key).map_err(gen("the loaded CA key"))?;
    Issuer::from_ca_cert_pem(ca_cert, key).map_err(gen("the loaded CA certificate"))
}

/// Writes `content` to `file` in the PKI directory `dir`.
fn write_in(dir: &Path, file: &str, content: &str) -> Result<(), TlsError> {
    let path = dir.join(file);
    write_file(&path, content).map_err(|source| TlsError::Io {
        op: "write",
        path,
        source,
    })
}

/// A serving certificate for `names` signed by `issuer`: (cert, key) in PEM.
fn server_cert(
    issuer: &Issuer<'_, KeyPair>,
    names: Vec<String>,
) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(gen("server key"))?;
    let mut params = CertificateParams::new(names).map_err(gen("server"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "netlet-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, issuer)
        .map_err(gen("server certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Pki {
    /// Loads the PKI from `dir`, creating all of it when any of the original files is missing,
    /// and the kubelet client certificate when only that is.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { op, path, source }
        };
        let write = |file: &str, content: &str| write_in(dir, file, content);
        if FILES.iter().all(|f| dir.join(f).exists()) {
            let read = |f: &str| {
                let path = dir.join(f);
                std::fs::read_to_string(&path).map_err(io("read", &path))
            };
            let (ca_cert, ca_key) = (read("ca.crt")?, read("ca.key")?);
            let (kubelet_client_cert, kubelet_client_key) =
                if KUBELET_CLIENT_FILES.iter().all(|f| dir.join(f).exists()) {
                    (
                        read(KUBELET_CLIENT_FILES[0])?,
                        read(KUBELET_CLIENT_FILES[1])?,
                    )
                } else {
                    let issuer = loaded_issuer(&ca_cert, &ca_key)?;
                    let (cert, key) = client_cert(&issuer, KUBELET_CLIENT_CN)?;
                    write(KUBELET_CLIENT_FILES[1], &key)?;
                    write(KUBELET_CLIENT_FILES[0], &cert)?;
                    (cert, key)
                };
            let sa_path = dir.join(SERVICE_ACCOUNT_KEY);
            let service_account_key = if sa_path.exists() {
                read(SERVICE_ACCOUNT_KEY)?
            } else {
                let key = KeyPair::generate()
                    .map_err(gen("service account key"))?
                    .serialize_pem();
                write(SERVICE_ACCOUNT_KEY, &key)?;
                key
            };
            return Ok(Pki {
                ca_cert,
                ca_key,
                server_cert: read("server.crt")?,
                server_key: read("server.key")?,
                admin_cert: read("admin.crt")?,
                admin_key: read("admin.key")?,
                kubelet_client_cert,
                kubelet_client_key,
                service_account_key,
            });
        }
        let pki = Self::generate()?;
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let contents = [
            &pki.ca_cert,
            &pki.ca_key,
            &pki.server_cert,
            &pki.server_key,
            &pki.admin_cert,
            &pki.admin_key,
            &pki.kubelet_client_cert,
            &pki.kubelet_client_key,
            &pki.service_account_key,
        ];
        let files = FILES
            .iter()
            .chain(&KUBELET_CLIENT_FILES)
            .chain(&[SERVICE_ACCOUNT_KEY]);
        for (file, content) in files.zip(contents) {
            write(file, content)?;
        }
        Ok(pki)
    }

    /// Creates a fresh CA and the leaf certificates.
    pub fn generate() -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate().map_err(gen("CA key"))?;
        let mut ca = CertificateParams::new(Vec::new()).map_err(gen("CA"))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "netlet-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(gen("CA certificate"))?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca, ca_key);

        let (server_cert, server_key) = server_cert(&issuer, serving_names(&[]))?;

        let (admin_cert, admin_key) = client_cert(&issuer, "admin")?;
        let (kubelet_client_cert, kubelet_client_key) = client_cert(&issuer, KUBELET_CLIENT_CN)?;
        let service_account_key = KeyPair::generate()
            .map_err(gen("service account key"))?
            .serialize_pem();

        Ok(Pki {
            ca_cert: ca_cert.pem(),
            ca_key: ca_key_pem,
            server_cert,
            server_key,
            admin_cert,
            admin_key,
            kubelet_client_cert,
            kubelet_client_key,
            service_account_key,
        })
    }

    /// Makes sure the serving certificate is valid for `names` (IPs or DNS names) as well as
    /// `127.0.0.1`, `localhost` and the in-cluster DNS names: when one is missing, issues a new
    /// serving certificate for all of them from the same CA (so kubeconfigs stay valid) and
    /// writes it to `dir`. Returns whether it did.
    pub fn ensure_serving_names(&mut self, dir: &Path, names: &[String]) -> Result<bool, TlsError> {
        let have = subject_alt_names(&self.server_cert)?;
        let wanted = serving_names(names);
        if wanted.iter().all(|n| have.contains(n)) {
            return Ok(false);
        }
        let issuer = loaded_issuer(&self.ca_cert, &self.ca_key)?;
        let (cert, key) = server_cert(&issuer, wanted)?;
        write_in(dir, "server.key", &key)?;
        write_in(dir, "server.crt", &cert)?;
        (self.server_cert, self.server_key) = (cert, key);
        Ok(true)
    }

    /// The rustls config: serves h2 and http/1.1 and asks for a client certificate, which must
    /// chain to the CA when given. Requests without one are answered 401 by the server.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let pem = |what: &str| {
            let path = PathBuf::from(what);
            move |source| TlsError::Pem { path, source }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_cert.as_bytes()) {
            roots.add(cert.map_err(pem("ca.crt"))?)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let chain = CertificateDer::pem_slice_iter(self.server_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem("server.crt"))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.server_key.as_bytes()).map_err(pem("server.key"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Writes the admin kubeconfig to `path` (mode 0600: it holds the admin key), atomically
    /// so that a reader polling for it never sees half of it.
    pub fn write_admin_kubeconfig(
        &self,
        path: &Path,
        host: &str,
        port: u16,
    ) -> Result<(), TlsError> {
        let tmp = path.with_extension("kubeconfig.tmp");
        let io = |op| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { op, path, source }
        };
        write_file(&tmp, &self.admin_kubeconfig(host, port)).map_err(io("write"))?;
        std::fs::rename(&tmp, path).map_err(io("rename into place"))
    }

    /// The admin kubeconfig for a server at `https://<host>:<port>`.
    pub fn admin_kubeconfig(&self, host: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: netlet\n  cluster:\n    server: https://{host}:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: admin@netlet\n  context:\n    cluster: netlet\n    user: admin\ncurrent-context: admin@netlet\npreferences: {{}}\n",
            ca = STANDARD.encode(&self.ca_cert),
            cert = STANDARD.encode(&self.admin_cert),
            key = STANDARD.encode(&self.admin_key),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pki_builds_a_server_config_and_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        pki.server_config().unwrap();
        let again = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(pki.ca_cert, again.ca_cert);
        let path = dir.path().join("admin.kubeconfig");
        pki.write_admin_kubeconfig(&path, "127.0.0.1", 1234)
            .unwrap();
        let kc = std::fs::read_to_string(&path).unwrap();
        assert!(kc.contains("server: https://127.0.0.1:1234"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key_mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
    }

    /// The subject CN and issuer CN of a PEM certificate.
    fn names(pem: &str) -> (String, String) {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = |n: &x509_parser::x509::X509Name<'_>| {
            n.iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        };
        (cn(cert.subject()), cn(cert.issuer()))
    }

    #[test]
    fn a_pki_from_before_the_kubelet_client_certificate_gains_one_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(
            names(&pki.kubelet_client_cert),
            (KUBELET_CLIENT_CN.to_string(), "netlet-ca".to_string())
        );
        for f in KUBELET_CLIENT_FILES {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        let upgraded = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(upgraded.ca_cert, pki.ca_cert, "the CA is kept");
        assert_eq!(upgraded.admin_cert, pki.admin_cert);
        assert_ne!(upgraded.kubelet_client_cert, pki.kubelet_client_cert);
        assert_eq!(
            names(&upgraded.kubelet_client_cert),
            (KUBELET_CLIENT_CN.to_string(), "netlet-ca".to_string())
        );
        let again = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(again.kubelet_client_cert, upgraded.kubelet_client_cert);
        crate::apiserver::NodeDialer::new(&again).unwrap();

        // It chains to the CA as a client certificate, as an agent's verifier checks it.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_cert.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let leaf = CertificateDer::from_pem_slice(upgraded.kubelet_client_cert.as_bytes()).unwrap();
        verifier
            .verify_client_cert(&leaf, &[], rustls::pki_types::UnixTime::now())
            .expect("the added certificate chains to the existing CA");
    }

    #[test]
    fn serving_names_are_added_from_the_same_ca_and_the_sa_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = Pki::load_or_create(dir.path()).unwrap();
        assert!(subject_alt_names(&pki.server_cert)
            .unwrap()
            .contains(&"kubernetes.default.svc".to_string()));
        let wanted = vec!["10.96.0.1".to_string(), "10.200.0.2".to_string()];
        assert!(pki.ensure_serving_names(dir.path(), &wanted).unwrap());
        let got = subject_alt_names(&pki.server_cert).unwrap();
        for n in [
            "127.0.0.1",
            "localhost",
            "10.96.0.1",
            "10.200.0.2",
            "kubernetes.default.svc",
        ] {
            assert!(got.contains(&n.to_string()), "{n} in {got:?}");
        }
        assert_eq!(names(&pki.server_cert).1, "netlet-ca");
        pki.server_config().unwrap();
        // Written: a restart loads the new certificate and needs no new one.
        let mut again = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(again.server_cert, pki.server_cert);
        assert!(!again.ensure_serving_names(dir.path(), &wanted).unwrap());
        assert_eq!(again.service_account_key, pki.service_account_key);

        // A PKI from before service account tokens gains a key and keeps its CA.
        std::fs::remove_file(dir.path().join(SERVICE_ACCOUNT_KEY)).unwrap();
        let upgraded = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(upgraded.ca_cert, pki.ca_cert);
        assert_ne!(upgraded.service_account_key, pki.service_account_key);
        super::super::tokens::TokenKeys::from_pem(&upgraded.service_account_key, "i", vec![])
            .unwrap();
    }
}
