//! The `netlet-cni` binary: reads stdin, runs the plugin, prints the answer. See the library.

use std::io::{Read, Write};

fn main() {
    if let Some(link) = std::env::var_os(netlet_cni::reaper::REAP_ENV) {
        std::process::exit(netlet_cni::reaper::run(&link.to_string_lossy()));
    }
    let mut stdin = Vec::new();
    // An unreadable stdin is treated as empty; the plugin then answers with a decoding error.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let out = netlet_cni::plugin::invoke(&stdin, |k| std::env::var(k).ok());
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    let _ = so.flush();
    std::process::exit(out.code);
}
