//! The streaming subresources through stock kubectl: `exec` (exit status, stdin, stdout and
//! stderr apart) in a pod on every node, `port-forward` to a pod's port, `run -i` (attach), and
//! `logs -f` of a finished container, which must return rather than wait for a restart.
//!
//! kubectl 1.30 and later try websocket first and fall back to SPDY; both go through the
//! apiserver and the agent to containerd's streaming server, so passing here covers the relay.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::scenarios::{name, run_client_pod, running_pods, Ctx, NS};
use crate::images::ECHO_IMAGE;

/// How long a `kubectl logs -f` of a finished container may take before it counts as hung.
const FOLLOW_END_TIMEOUT: Duration = Duration::from_secs(30);

/// `kubectl exec` into an echo pod on every node, and `kubectl port-forward` to one of them.
pub(super) fn exec_and_port_forward(ctx: &Ctx) -> Result<()> {
    let pods = running_pods(ctx, "app=echo", usize::from(ctx.nodes))?;
    for pod in &pods {
        let pod = name(pod);
        let out = ctx.kubectl.run_with_input(
            &[
                "-n",
                NS,
                "exec",
                pod,
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
            "",
        )?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        ensure!(
            out.status.code() == Some(3) && stdout == "out\n" && stderr.starts_with("err\n"),
            "kubectl exec {pod}: want exit 3, stdout \"out\", stderr \"err\"; got {}, stdout \
             {stdout:?}, stderr {stderr:?}",
            out.status
        );
        let out = ctx
            .kubectl
            .run_with_input(&["-n", NS, "exec", "-i", pod, "--", "cat"], "ping\n")?;
        ensure!(
            out.status.success() && out.stdout == b"ping\n",
            "kubectl exec -i {pod} -- cat: {} stdout {:?} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    port_forward(ctx, name(&pods[0]))
}

/// `kubectl port-forward pod/<pod> :8080` and one HTTP request through it; the echo server
/// answers with its hostname, the pod's name.
fn port_forward(ctx: &Ctx, pod: &str) -> Result<()> {
    let target = format!("pod/{pod}");
    let mut child = ctx
        .kubectl
        .command(&["-n", NS, "port-forward", &target, ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl port-forward")?;
    let result = (|| {
        let mut stdout =
            BufReader::new(child.stdout.take().context("kubectl port-forward stdout")?);
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        // kubectl prints a line per connection and dies of SIGPIPE if nobody reads them.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        // "Forwarding from 127.0.0.1:40123 -> 8080"
        let port: u16 = first
            .split_whitespace()
            .nth(2)
            .and_then(|addr| addr.strip_prefix("127.0.0.1:"))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("kubectl port-forward printed {first:?}"))?;
        let mut conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        ensure!(
            answer.contains(&format!("hostname={pod}")),
            "port-forward to {pod}:8080 answered {answer:?}"
        );
        Ok(())
    })();
    let out = Waiting::new(child)?.interrupt()?;
    result.with_context(|| {
        format!(
            "kubectl port-forward {target}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Our own `kubectl` child, waited for on a thread of its own so that the scenario can wait
/// with a deadline (std's `Child` has no timed wait) and still end it by its PID.
struct Waiting {
    pid: Pid,
    done: mpsc::Receiver<std::io::Result<Output>>,
}

impl Waiting {
    fn new(child: Child) -> Result<Self> {
        let pid = Pid::from_raw(i32::try_from(child.id()).context("kubectl's PID")?);
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        Ok(Self { pid, done })
    }

    /// How it ended, if it ends within `timeout`.
    fn within(&self, timeout: Duration) -> Option<Result<Output>> {
        self.done
            .recv_timeout(timeout)
            .ok()
            .map(|r| r.context("waiting for kubectl"))
    }

    /// Ends it: SIGINT first, so that it flushes what it logged (kubectl buffers its error
    /// log), then SIGKILL if it has not ended within 5 s.
    fn interrupt(self) -> Result<Output> {
        let _ = kill(self.pid, Signal::SIGINT);
        if let Some(out) = self.within(Duration::from_secs(5)) {
            return out;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        self.done
            .recv()
            .context("kubectl's waiter thread")?
            .context("waiting for kubectl")
    }
}

/// `kubectl run -i` attaches to the new pod's stdin and stdout; `kubectl logs -f` of a finished
/// pod prints its output and returns.
pub(super) fn attach_and_follow_finished(ctx: &Ctx) -> Result<()> {
    let out = ctx.kubectl.run_with_input(
        &[
            "-n",
            NS,
            "run",
            "attach",
            "-i",
            "--restart=Never",
            "--labels=role=client",
            "--image",
            ECHO_IMAGE,
            "--image-pull-policy=Never",
            "--command",
            "--",
            "sh",
            "-c",
            "read x; echo got $x",
        ],
        "hello\n",
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("got hello"),
        "kubectl run -i: {} stdout {stdout:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    run_client_pod(ctx, "client-finished", "node-1", "echo finished output")?;
    let child = ctx
        .kubectl
        .command(&["-n", NS, "logs", "-f", "client-finished"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl logs -f")?;
    let waiting = Waiting::new(child)?;
    let Some(out) = waiting.within(FOLLOW_END_TIMEOUT) else {
        waiting.interrupt()?;
        bail!("kubectl logs -f of a finished pod still running after {FOLLOW_END_TIMEOUT:?}");
    };
    let out = out?;
    ensure!(
        out.status.success() && out.stdout == b"finished output\n",
        "kubectl logs -f client-finished: {} stdout {:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
