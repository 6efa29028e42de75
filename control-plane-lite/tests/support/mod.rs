//! Shared by the end-to-end tests: starts the real `netlet-control-plane serve` binary on
//! 127.0.0.1 port 0 in a temporary directory and drives it with the stock `kubectl` and, for
//! exact status codes, `curl` with the admin client certificate. Each test has its own server,
//! so tests run in parallel; the server is killed by PID when the test ends. `kubectl` and
//! `curl` must be installed: a test that cannot run them fails.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use integration::ChildGuard;
use serde_json::Value;

/// A running `netlet-control-plane serve` in a temporary directory, killed on drop.
pub struct Server {
    guard: Option<ChildGuard>,
    /// The data directory (kubeconfig, PKI, logs, scratch files).
    pub dir: tempfile::TempDir,
    url: String,
    extra: Vec<String>,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (guard, url) = Self::spawn(dir.path(), extra);
        let server = Server {
            guard: Some(guard),
            dir,
            url,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.wait_ready();
        server
    }

    /// Kills the server and starts it again on the same data directory (and a new port).
    pub fn restart(&mut self) {
        // Dropping the guard kills the old server and waits for it.
        self.guard = None;
        std::fs::remove_file(self.dir.path().join("admin.kubeconfig")).expect("rm kubeconfig");
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (guard, url) = Self::spawn(self.dir.path(), &extra);
        self.guard = Some(guard);
        self.url = url;
        self.wait_ready();
    }

    fn spawn(dir: &Path, extra: &[&str]) -> (ChildGuard, String) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_netlet-control-plane"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--bind", "127.0.0.1", "--port", "0"])
            // These tests exercise the API alone; the in-process scheduler's and controllers'
            // writes (pod conditions, events, Leases, workload status) would race their exact
            // expectations.
            .args(["--disable-scheduler", "--disable-controllers"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start netlet-control-plane");
        let guard = ChildGuard::new(child);
        let kubeconfig = dir.join("admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&kubeconfig) {
                if let Some(line) = text
                    .lines()
                    .find(|l| l.trim_start().starts_with("server: "))
                {
                    break line.trim_start().trim_start_matches("server: ").to_string();
                }
            }
            assert!(Instant::now() < deadline, "no kubeconfig after 20s");
            std::thread::sleep(Duration::from_millis(50));
        };
        (guard, url)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, _) = self.curl_raw(
                &["--cacert", &self.pki("ca.crt")],
                "GET",
                "/readyz",
                None,
                None,
            );
            if code == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "/readyz not ready after 20s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pki(&self, file: &str) -> String {
        self.dir.path().join("pki").join(file).display().to_string()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .env("HOME", self.dir.path())
            .arg("--kubeconfig")
            .arg(self.dir.path().join("admin.kubeconfig"))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl and returns stdout, failing the test with stderr on a non-zero exit.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    pub fn curl_raw(
        &self,
        auth: &[&str],
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Path>,
    ) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .args(auth);
        if let Some(ct) = content_type {
            cmd.args(["-H", &format!("Content-Type: {ct}")]);
        }
        if let Some(body) = body {
            cmd.arg("--data-binary").arg(format!("@{}", body.display()));
        }
        let out = cmd
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code = code.trim().parse().unwrap_or(0);
        let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
        (code, value)
    }

    /// An authenticated request with a JSON body.
    pub fn curl(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let file = body.map(|b| {
            let p = self.dir.path().join(format!("body-{}.json", rand_suffix()));
            std::fs::write(&p, serde_json::to_vec(b).unwrap()).unwrap();
            p
        });
        let (ca, cert, key) = (
            self.pki("ca.crt"),
            self.pki("admin.crt"),
            self.pki("admin.key"),
        );
        self.curl_raw(
            &["--cacert", &ca, "--cert", &cert, "--key", &key],
            method,
            path,
            Some("application/json"),
            file.as_deref(),
        )
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Polls `path` until it contains `needle` or `within` passes; returns its last contents.
pub fn wait_for(path: &PathBuf, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
