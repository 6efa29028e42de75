//! `/echo`, the test app of the `localhost/netlet-echo:1` image: std only, compiled by
//! `cargo xtask images` with plain `rustc` into a static binary (no crates, so it builds in
//! seconds and needs no second target directory).
//!
//! - HTTP on :8080 — `GET /` answers `hostname=<pod hostname> client=<ip:port as seen>`;
//!   `GET /healthz` answers 200, or 500 once `--healthy-for SECONDS` has passed since start.
//! - TCP echo on :9000, UDP echo on :9001.
//!
//! Flags: `--healthy-for SECONDS`, `--http-port`, `--tcp-port`, `--udp-port`. Exits on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

struct Config {
    healthy_for: Option<Duration>,
    http_port: u16,
    tcp_port: u16,
    udp_port: u16,
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        healthy_for: None,
        http_port: 8080,
        tcp_port: 9000,
        udp_port: 9001,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
        };
        match flag.as_str() {
            "--healthy-for" => cfg.healthy_for = Some(Duration::from_secs(num(&value)?)),
            "--http-port" => cfg.http_port = num(&value)? as u16,
            "--tcp-port" => cfg.tcp_port = num(&value)? as u16,
            "--udp-port" => cfg.udp_port = num(&value)? as u16,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(cfg)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn serve_http(mut conn: TcpStream, started: Instant, healthy_for: Option<Duration>) {
    let peer = conn
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Drain the headers; the body of a GET is empty.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/healthz" => match healthy_for {
            Some(limit) if started.elapsed() > limit => ("500 Internal Server Error", "unhealthy\n".to_string()),
            _ => ("200 OK", "ok\n".to_string()),
        },
        _ => ("200 OK", format!("hostname={} client={peer}\n", hostname())),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn echo_tcp(mut conn: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

/// As PID 1 of its container the process would ignore SIGTERM (no default action for init),
/// making every graceful delete wait out the whole grace period; exit at once instead.
extern "C" fn on_sigterm(_: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

fn main() {
    const SIGTERM: i32 = 15;
    // SAFETY: installing a handler that only calls _exit.
    unsafe { signal(SIGTERM, on_sigterm) };
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("echo: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let bind = |port: u16| {
        TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
            eprintln!("echo: listening on :{port}: {e}");
            std::process::exit(1)
        })
    };
    let http = bind(cfg.http_port);
    let tcp = bind(cfg.tcp_port);
    let udp = UdpSocket::bind(("0.0.0.0", cfg.udp_port)).unwrap_or_else(|e| {
        eprintln!("echo: listening on udp :{}: {e}", cfg.udp_port);
        std::process::exit(1)
    });
    eprintln!(
        "echo: http :{} tcp :{} udp :{}",
        cfg.http_port, cfg.tcp_port, cfg.udp_port
    );
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            std::thread::spawn(move || echo_tcp(conn));
        }
    });
    let healthy_for = cfg.healthy_for;
    for conn in http.incoming().flatten() {
        std::thread::spawn(move || serve_http(conn, started, healthy_for));
    }
}
