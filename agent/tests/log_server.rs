//! The node API's log server on a unix socket, serving a temp dir of CRI log files laid out as
//! containerd writes them; requests are plain HTTP/1.0 so the body ends with the connection.

use netlet_agent::server::handler::Handler;
use netlet_agent::server::unix;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    logs: PathBuf,
    socket: PathBuf,
    cancel: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("pods");
    let app = logs.join("ns1_web_0c1d/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(logs.join("ns1_web_0c1d/side")).unwrap();
    std::fs::write(
        app.join("0.log"),
        "2026-11-23T18:00:00.000000001Z stdout F first run\n",
    )
    .unwrap();
    std::fs::write(
        app.join("1.log"),
        "2026-11-23T18:01:00.5Z stdout F one\n\
         2026-11-23T18:01:10Z stderr P tw\n\
         2026-11-23T18:01:11Z stderr F o\n\
         2026-11-23T18:01:20Z stdout F three\n",
    )
    .unwrap();
    let socket = dir.path().join("state/kubelet.sock");
    let listener = unix::bind(&socket).unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(unix::serve(
        listener,
        Handler::new(logs.clone()),
        cancel.clone(),
    ));
    Fixture {
        _dir: dir,
        logs,
        socket,
        cancel,
    }
}

async fn connect(socket: &Path, path: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s
}

/// Status code and body of a whole response.
async fn get(socket: &Path, path: &str) -> (u16, String) {
    let mut s = connect(socket, path).await;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

#[tokio::test]
async fn serves_current_and_previous_logs_with_options() {
    let f = fixture();
    let socket = &f.socket;
    assert_eq!(get(socket, "/healthz").await, (200, "ok".into()));
    assert_eq!(
        get(socket, "/containerLogs/ns1/web/app").await,
        (200, "one\ntwo\nthree\n".into())
    );
    assert_eq!(
        get(socket, "/containerLogs/ns1/web/app?previous=true").await,
        (200, "first run\n".into())
    );
    assert_eq!(
        get(
            socket,
            "/containerLogs/ns1/web/app?tailLines=1&timestamps=true"
        )
        .await,
        (200, "2026-11-23T18:01:20Z three\n".into())
    );
    assert_eq!(
        get(
            socket,
            "/containerLogs/ns1/web/app?sinceTime=2026-11-23T18:01:05Z"
        )
        .await,
        (200, "two\nthree\n".into())
    );
    assert_eq!(
        get(socket, "/containerLogs/ns1/web/app?limitBytes=6").await,
        (200, "one\ntw".into())
    );
}

#[tokio::test]
async fn missing_things_are_errors_with_messages() {
    let f = fixture();
    let (code, body) = get(&f.socket, "/containerLogs/ns1/web/db").await;
    assert_eq!(
        (code, body.as_str()),
        (
            404,
            "container \"db\" in pod \"web\" has no logs on this node"
        )
    );
    let (code, body) = get(&f.socket, "/containerLogs/ns1/nope/app").await;
    assert_eq!(
        (code, body.as_str()),
        (404, "pod \"ns1/nope\" has no logs on this node")
    );
    // The side container's directory exists but it has not logged yet.
    let (code, _) = get(&f.socket, "/containerLogs/ns1/web/side").await;
    assert_eq!(code, 404);
    let (code, body) = get(&f.socket, "/containerLogs/ns1/web/app?tailLines=x").await;
    assert_eq!(code, 400, "{body}");
}

/// Reads from `s` until `want` has arrived after the headers, or the deadline passes.
async fn read_until(s: &mut UnixStream, seen: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while !seen.ends_with(want) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in time; got {seen:?}"))
            .unwrap();
        assert!(n > 0, "stream ended before {want:?}; got {seen:?}");
        seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
}

#[tokio::test]
async fn follow_streams_appended_lines_until_the_next_run_starts() {
    let f = fixture();
    let app = f.logs.join("ns1_web_0c1d/app");
    let mut s = connect(
        &f.socket,
        "/containerLogs/ns1/web/app?follow=true&tailLines=1",
    )
    .await;
    let mut seen = String::new();
    read_until(&mut s, &mut seen, "three\n").await;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(app.join("1.log"))
        .unwrap();
    use std::io::Write;
    // A partial record is held back until its final fragment arrives.
    file.write_all(b"2026-11-23T18:02:00Z stdout P fou")
        .unwrap();
    file.write_all(b"\n2026-11-23T18:02:00Z stdout F r\n")
        .unwrap();
    read_until(&mut s, &mut seen, "three\nfour\n").await;
    // The container restarts: its last words in the old file are still sent, then the end.
    file.write_all(b"2026-11-23T18:02:01Z stdout F bye\n")
        .unwrap();
    std::fs::write(app.join("2.log"), "2026-11-23T18:03:00Z stdout F new run\n").unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut rest))
        .await
        .expect("the followed stream ends once the next run has a file")
        .unwrap();
    seen.push_str(&rest);
    assert!(seen.ends_with("\r\n\r\nthree\nfour\nbye\n"), "{seen:?}");
}
