//! Compiles the C eBPF programs in `src/bpf/` with clang-19 into `OUT_DIR`.
//!
//! Where clang-19 is missing (a `cargo check` or clippy run on a machine without the eBPF
//! toolchain) it emits a cargo warning and writes empty objects instead; the loader then reports
//! "eBPF objects were not built: clang-19 missing; run cargo xtask deps". A compile *error* with
//! clang present fails the build.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The programs to build, by file stem under `src/bpf/` (`<stem>.bpf.c` -> `<stem>.bpf.o`).
const PROGRAMS: &[&str] = &["service_nat"];
const CLANG: &str = "clang-19";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-env-changed=NETLET_EBPF_CLANG");
    let clang = env::var("NETLET_EBPF_CLANG").unwrap_or_else(|_| CLANG.to_owned());
    let have_clang = Command::new(&clang)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    // The uapi headers' <asm/types.h> lives in the multiarch directory of the build host.
    let multiarch = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);

    for stem in PROGRAMS {
        let src = format!("src/bpf/{stem}.bpf.c");
        let obj = out_dir.join(format!("{stem}.bpf.o"));
        println!("cargo:rerun-if-changed={src}");
        if !have_clang {
            // A path that never exists makes cargo run this script again on every build, so
            // the real objects get built as soon as `cargo xtask deps` installs clang.
            println!(
                "cargo:rerun-if-changed={}",
                out_dir.join("clang-still-missing").display()
            );
            println!(
                "cargo:warning={clang} not found: embedding an empty {stem}.bpf.o; \
                 loading it will fail (run cargo xtask deps)"
            );
            std::fs::write(&obj, b"").expect("writing placeholder object");
            continue;
        }
        let out = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .output()
            .unwrap_or_else(|e| panic!("running {clang}: {e}"));
        if !out.status.success() {
            panic!(
                "{clang} failed to compile {src}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
