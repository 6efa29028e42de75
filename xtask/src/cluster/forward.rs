//! `cargo xtask forward` (internal, started by `up`): opens a TCP listener inside each given
//! network namespace (and optionally one in its own) and relays every connection to one address,
//! reached from its own namespace or from `--to-netns`.
//!
//! This is how the host and the node namespaces reach the apiserver, which listens on 127.0.0.1
//! inside the control plane's namespace, without a single address or route added to the host
//! namespace: a socket belongs to the namespace of the thread that created it, so one
//! short-lived thread per namespace enters it (`setns`), binds the listener and exits; then the
//! main thread enters `--to-netns` before it starts the runtime, whose threads inherit that
//! namespace, so every outgoing connection is made from there.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

/// Options of `cargo xtask forward`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to relay to (from `--to-netns`, else from this process's namespace).
    #[arg(long)]
    pub to: SocketAddr,
    /// The network namespace to relay from [default: this process's].
    #[arg(long)]
    pub to_netns: Option<PathBuf>,
    /// `NETNS_PATH=ADDR:PORT` to listen on inside that namespace; repeatable.
    #[arg(long = "listen", value_parser = parse_listen)]
    pub listen: Vec<(PathBuf, SocketAddr)>,
    /// An address to listen on in this process's own namespace (port 0: any free port).
    #[arg(long)]
    pub listen_here: Option<SocketAddr>,
    /// Where to write the port `--listen-here` got, once listening.
    #[arg(long, requires = "listen_here")]
    pub port_file: Option<PathBuf>,
    /// The cluster directory (only so `down` recognises this process by its command line).
    #[arg(long)]
    pub cluster_dir: Option<PathBuf>,
}

/// Parses `PATH=ADDR:PORT`.
fn parse_listen(s: &str) -> Result<(PathBuf, SocketAddr), String> {
    let (path, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NETNS_PATH=ADDR:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{s:?}: bad address {addr:?}: {e}"))?;
    Ok((PathBuf::from(path), addr))
}

/// Binds `addr` inside the namespace at `netns` from a thread that enters it.
fn listen_in(netns: PathBuf, addr: SocketAddr) -> Result<std::net::TcpListener> {
    std::thread::spawn(move || -> Result<std::net::TcpListener> {
        enter(&netns)?;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("listening on {addr} in {}", netns.display()))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .map_err(|_| anyhow!("the listener thread for {addr} panicked"))?
}

/// Enters the network namespace at `path` with the calling thread.
fn enter(path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))
}

/// Runs the forwarder until killed.
pub fn run(args: &Args) -> Result<()> {
    let mut listeners = args
        .listen
        .iter()
        .map(|(ns, addr)| listen_in(ns.clone(), *addr))
        .collect::<Result<Vec<_>>>()?;
    if let Some(addr) = args.listen_here {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        listener.set_nonblocking(true)?;
        if let Some(path) = &args.port_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, listener.local_addr()?.port().to_string())
                .and_then(|()| std::fs::rename(&tmp, path))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        listeners.push(listener);
    }
    if listeners.is_empty() {
        bail!("nothing to listen on: give --listen or --listen-here");
    }
    if let Some(path) = &args.to_netns {
        enter(path)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let to = args.to;
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for listener in listeners {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_specs() {
        let (p, a) = parse_listen("/run/netns/nlt-up-node-1=127.0.0.1:6443").unwrap();
        assert_eq!(p, PathBuf::from("/run/netns/nlt-up-node-1"));
        assert_eq!(a, "127.0.0.1:6443".parse().unwrap());
        assert!(parse_listen("nopath").unwrap_err().contains("NETNS_PATH"));
        assert!(parse_listen("/x=notanaddr")
            .unwrap_err()
            .contains("bad address"));
    }
}
