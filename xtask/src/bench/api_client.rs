//! The benches' HTTP client for our apiserver: HTTP/1.1 keep-alive over rustls with the admin
//! client certificate of a generated kubeconfig (no kube-rs, so a bench measures the server,
//! not a client library), and the RSS probe the benches report.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio_rustls::TlsConnector;

/// How to reach the apiserver: its address and a TLS client with the admin identity.
#[derive(Clone)]
pub struct Api {
    /// 127.0.0.1 and the port the server picked.
    pub addr: SocketAddr,
    /// rustls with the cluster CA as the only root and the admin client certificate.
    tls: TlsConnector,
    /// The name the server certificate is checked against (the kubeconfig's host).
    server_name: ServerName<'static>,
}

impl Api {
    /// Reads the server URL, CA and admin identity from an admin kubeconfig.
    pub fn from_kubeconfig(text: &str) -> Result<Self> {
        let field = |key: &str| -> Result<&str> {
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix(key))
                .map(str::trim)
                .with_context(|| format!("kubeconfig has no {key}"))
        };
        let pem = |key: &str| -> Result<Vec<u8>> {
            STANDARD
                .decode(field(key)?)
                .with_context(|| format!("kubeconfig {key} is not base64"))
        };
        let server = field("server: ")?;
        let hostport = server
            .strip_prefix("https://")
            .with_context(|| format!("kubeconfig server {server} is not https"))?;
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("kubeconfig server {server} is not ip:port"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem("certificate-authority-data: ")?) {
            roots.add(cert.context("parsing the CA")?)?;
        }
        let certs = CertificateDer::pem_slice_iter(&pem("client-certificate-data: ")?)
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&pem("client-key-data: ")?)
            .context("parsing the client key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .context("building the TLS client")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::IpAddress(addr.ip().into()),
        })
    }

    /// A new keep-alive HTTP/1.1 connection.
    pub async fn connect(&self) -> Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake with the apiserver")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP/1.1 handshake")?;
        // Ends when the connection closes; its error then shows up in the next request.
        tokio::spawn(connection);
        Ok(Conn { sender })
    }
}

/// One client connection.
pub struct Conn {
    /// hyper's handle for sending requests on it.
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Sends one request and returns its body, failing on a status other than 2xx.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&str, Value)>,
    ) -> Result<Bytes> {
        let response = self.send(method.clone(), path, accept, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the response to {method} {path}"))?
            .to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(bytes)
    }

    /// Starts a GET whose body is a stream (a watch) and returns the body unread.
    pub async fn open(&mut self, path: &str) -> Result<Incoming> {
        let response = self
            .send(Method::GET, path, "application/json", None)
            .await?;
        ensure!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        Ok(response.into_body())
    }

    /// Sends one request and waits for the response head.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&str, Value)>,
    ) -> Result<Response<Incoming>> {
        self.sender
            .ready()
            .await
            .context("the connection to the apiserver closed")?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, "127.0.0.1")
            .header(header::ACCEPT, accept);
        let body = match body {
            Some((content_type, value)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Full::new(Bytes::from(serde_json::to_vec(&value)?))
            }
            None => Full::new(Bytes::new()),
        };
        self.sender
            .send_request(request.body(body)?)
            .await
            .with_context(|| format!("{method} {path}"))
    }
}

/// VmRSS of process `pid`, in MB.
pub fn rss_mb(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kb / 1024.0)
}
