//! Startup, liveness and readiness probes of running containers.
//!
//! Exec probes run through CRI `ExecSync`, so they work wherever the agent can reach the
//! runtime. `httpGet` and `tcpSocket` probes connect from the agent's own network namespace to
//! the pod IP: that works when the agent runs in the node's namespace (as a node agent does),
//! not when it runs elsewhere — e.g. the integration tests run the pod manager in the host
//! namespace while pods live behind a bridge in a test namespace, so they test exec probes.
//! gRPC probes are not supported and count as failures.
//!
//! The kubelet's semantics: nothing is probed before `initialDelaySeconds` after the start;
//! then every `periodSeconds`; `successThreshold` / `failureThreshold` consecutive results
//! flip a verdict. Liveness and readiness wait for the startup probe to succeed; a failed
//! startup or liveness verdict kills the container (the restart policy then applies); a
//! container with a readiness probe is not ready until it passes.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::observed::Instance;
use crate::cri::CriClient;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
}

impl Kind {
    /// The name used in events.
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// Consecutive results of one probe of one container instance and the verdict they give.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    instance: String,
    next_run: Option<Instant>,
    successes: i32,
    failures: i32,
    verdict: Option<bool>,
}

impl Tracker {
    /// Records one result; returns the new verdict when it changed.
    pub fn record(&mut self, ok: bool, probe: &Probe) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
        let verdict = if self.successes >= success_threshold {
            Some(true)
        } else if self.failures >= failure_threshold {
            Some(false)
        } else {
            self.verdict
        };
        let changed = verdict != self.verdict;
        self.verdict = verdict;
        changed.then_some(verdict).flatten()
    }
}

/// What the probes say about a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Its startup probe passed (or it has none).
    pub started: bool,
    /// It is ready (started, and its readiness probe passed or it has none).
    pub ready: bool,
    /// It must be killed: why (a failed startup or liveness verdict).
    pub kill: Option<String>,
    /// Probe failures to report as `Unhealthy` events.
    pub unhealthy: Vec<String>,
}

/// The probe trackers of one pod.
#[derive(Debug, Default)]
pub struct Prober {
    trackers: HashMap<(String, Kind), Tracker>,
}

impl Prober {
    /// Runs the probes of running instance `inst` of `c` that are due, and gives the verdicts.
    pub async fn probe(
        &mut self,
        cri: &CriClient,
        c: &Container,
        inst: &Instance,
        pod_ip: &str,
    ) -> Verdicts {
        let mut out = Verdicts::default();
        let probes = [
            (Kind::Startup, c.startup_probe.as_ref()),
            (Kind::Liveness, c.liveness_probe.as_ref()),
            (Kind::Readiness, c.readiness_probe.as_ref()),
        ];
        out.started = c.startup_probe.is_none();
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            if kind != Kind::Startup && !out.started {
                continue;
            }
            let t = self.trackers.entry((c.name.clone(), kind)).or_default();
            if t.instance != inst.id {
                *t = Tracker {
                    instance: inst.id.clone(),
                    next_run: Some(first_run(probe, inst.started_at)),
                    ..Default::default()
                };
            }
            if t.verdict == Some(true) && kind == Kind::Startup {
                out.started = true;
                continue;
            }
            let now = Instant::now();
            if t.next_run.is_some_and(|at| at <= now) {
                t.next_run = Some(now + secs(probe.period_seconds, 10));
                let result = run(cri, probe, c, &inst.id, pod_ip).await;
                let changed = t.record(result.is_ok(), probe);
                if let Err(msg) = &result {
                    // Report a failure once when the verdict turns, not every period.
                    if changed == Some(false) || (kind != Kind::Readiness && changed.is_none()) {
                        out.unhealthy
                            .push(format!("{} probe failed: {msg}", kind.name()));
                    }
                }
                if changed == Some(false) && kind != Kind::Readiness {
                    out.kill = Some(format!(
                        "Container {} failed {} probe, will be restarted",
                        c.name,
                        kind.name().to_lowercase()
                    ));
                }
            }
            match kind {
                Kind::Startup => out.started = t.verdict == Some(true),
                Kind::Readiness => out.ready = t.verdict == Some(true),
                Kind::Liveness => {}
            }
        }
        if c.readiness_probe.is_none() {
            out.ready = out.started;
        }
        out.ready &= out.started;
        out
    }
}

/// When the first probe of an instance started at `started_at` (ns since the epoch) runs.
fn first_run(probe: &Probe, started_at: i64) -> Instant {
    let delay = secs(probe.initial_delay_seconds, 0);
    let started = SystemTime::UNIX_EPOCH + Duration::from_nanos(started_at.max(0) as u64);
    let elapsed = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    Instant::now() + delay.saturating_sub(elapsed)
}

/// Seconds of an optional probe field, `default` when unset, at least 1 unless 0 is the default.
fn secs(v: Option<i32>, default: u64) -> Duration {
    let s = v.map_or(default, |v| v.max(0) as u64);
    Duration::from_secs(if default > 0 { s.max(1) } else { s })
}

/// Runs one probe action; `Err` says why it failed.
async fn run(
    cri: &CriClient,
    probe: &Probe,
    c: &Container,
    id: &str,
    pod_ip: &str,
) -> Result<(), String> {
    let timeout = secs(probe.timeout_seconds, 1);
    if let Some(exec) = &probe.exec {
        let cmd: Vec<&str> = exec.command.iter().flatten().map(String::as_str).collect();
        let r = cri
            .exec_sync(id, &cmd, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if r.exit_code == 0 {
            return Ok(());
        }
        let out = String::from_utf8_lossy(&r.stdout) + String::from_utf8_lossy(&r.stderr);
        return Err(format!(
            "command {cmd:?} exited {}: {}",
            r.exit_code,
            out.trim()
        ));
    }
    if let Some(h) = &probe.http_get {
        let host = h
            .host
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| pod_ip.into());
        let port = resolve_port(&h.port, c)?;
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported".into());
        }
        let get = http_get(&host, port, &path);
        return match tokio::time::timeout(timeout, get).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get http://{host}:{port}{path}: {e}")),
            Err(_) => Err(format!(
                "Get http://{host}:{port}{path}: timeout after {timeout:?}"
            )),
        };
    }
    if let Some(t) = &probe.tcp_socket {
        let host = t
            .host
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| pod_ip.into());
        let port = resolve_port(&t.port, c)?;
        return match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: timeout")),
        };
    }
    Err("no supported probe handler (gRPC probes are not supported)".into())
}

/// A probe port: a number, or the name of one of the container's ports.
pub(super) fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("port {name:?} not found in container {}", c.name))?,
    };
    u16::try_from(n).map_err(|_| format!("invalid port {n}"))
}

/// A plain HTTP/1.1 GET; returns the status code.
pub(super) async fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect((host, port)).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/netlet\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let read = s.read(&mut buf[n..]).await?;
        if read == 0 {
            break;
        }
        n += read;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed HTTP response {head:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flip_the_verdict() {
        let probe = Probe {
            success_threshold: Some(2),
            failure_threshold: Some(2),
            ..Default::default()
        };
        let mut t = Tracker::default();
        assert_eq!(t.record(true, &probe), None);
        assert_eq!(t.record(true, &probe), Some(true));
        assert_eq!(t.record(true, &probe), None);
        assert_eq!(
            t.record(false, &probe),
            None,
            "one failure is below the threshold"
        );
        assert_eq!(t.record(false, &probe), Some(false));
        assert_eq!(t.record(false, &probe), None);
    }

    #[test]
    fn named_ports_resolve() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{ "name": "http", "containerPort": 8080 }],
        }))
        .unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::Int(81), &c), Ok(81));
        assert!(resolve_port(&IntOrString::String("grpc".into()), &c).is_err());
    }

    #[tokio::test]
    async fn http_probe_reads_the_status_code() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .await
                .unwrap();
        });
        assert_eq!(http_get("127.0.0.1", port, "/healthz").await.unwrap(), 503);
    }
}
