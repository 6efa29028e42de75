//! `cargo xtask forward` (internal, started by `up`): opens a TCP listener inside each given
//! network namespace and relays every connection to an address in this process's own namespace.
//!
//! This is how node namespaces reach the apiserver listening on the host's 127.0.0.1 without a
//! single address or route added to the host namespace: a socket belongs to the namespace of the
//! thread that created it, so one short-lived thread per namespace enters it (`setns`), binds the
//! listener and exits; connections are accepted and relayed by the runtime in the host namespace.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

/// Options of `cargo xtask forward`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to relay to (in this process's namespace).
    #[arg(long)]
    pub to: SocketAddr,
    /// `NETNS_PATH=ADDR:PORT` to listen on inside that namespace; repeatable.
    #[arg(long = "listen", value_parser = parse_listen, required = true)]
    pub listen: Vec<(PathBuf, SocketAddr)>,
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
        let file = std::fs::File::open(&netns)
            .with_context(|| format!("opening network namespace {}", netns.display()))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {}", netns.display()))?;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("listening on {addr} in {}", netns.display()))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .map_err(|_| anyhow!("the listener thread for {addr} panicked"))?
}

/// Runs the forwarder until killed.
pub fn run(args: &Args) -> Result<()> {
    let listeners = args
        .listen
        .iter()
        .map(|(ns, addr)| listen_in(ns.clone(), *addr))
        .collect::<Result<Vec<_>>>()?;
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
