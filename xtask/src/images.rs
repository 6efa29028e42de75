//! `cargo xtask images`: the container images netlet's tests run, built locally as OCI archives.
//!
//! No docker and no registry: the machines that run our tests have no network, so every image
//! is assembled here from files already on the host. Each image is one uncompressed layer
//! written with fixed timestamps and owners, so the same inputs give byte-identical archives and
//! a rebuild leaves up-to-date files untouched. The OCI layout (blobs named by sha256, config,
//! manifest, `index.json`) is written by hand; `ctr images import` reads it.
//!
//! - `pause`: the sandbox image, a 30-line C program (`images/pause.c`) compiled with
//!   `gcc -static` that sleeps until SIGTERM and reaps orphans.
//! - `testapp`: Debian's busybox-static with every applet linked in `/bin`, for `sh`, `httpd`,
//!   `nc`, `wget`, `ip`, `ping` in tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::util;

/// The pause program's source, compiled for the sandbox image.
const PAUSE_C: &str = include_str!("images/pause.c");

/// The test app's source, compiled with plain `rustc` (std only) into a static binary.
const ECHO_RS: &str = include_str!("images/echo.rs");

/// Where Debian's busybox-static installs its binary.
const BUSYBOX: &str = "/bin/busybox";

pub use integration::images::{ECHO_IMAGE, PAUSE_IMAGE, TESTAPP_IMAGE};

/// Options of `cargo xtask images`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// After building, import the images into the containerd listening on this socket
    /// (`ctr -a <socket> -n k8s.io images import`).
    #[arg(long, value_name = "SOCKET")]
    import: Option<PathBuf>,
    /// Snapshotter to unpack the imported images into; it must be the one the CRI plugin uses.
    #[arg(long, default_value = "overlayfs", requires = "import")]
    snapshotter: String,
}

/// One file, directory or symlink of a layer.
enum Entry {
    /// A directory with its mode.
    Dir(u32),
    /// A regular file with its mode and content.
    File(u32, Vec<u8>),
    /// A symbolic link to the given target.
    Symlink(String),
}

/// An image before it is serialised: its name, one layer's entries and its process.
struct Image {
    /// The file name under `target/images` (without `.tar`).
    file: &'static str,
    /// The full reference containerd stores it under.
    reference: &'static str,
    /// Layer entries by path (sorted, so parents precede children and output is stable).
    entries: BTreeMap<String, Entry>,
    /// The image config's `Entrypoint`.
    entrypoint: Vec<&'static str>,
}

/// `cargo xtask images`.
pub fn run(args: &Args) -> Result<()> {
    let archives = build()?;
    if let Some(socket) = &args.import {
        for path in &archives {
            util::run(
                Command::new("ctr")
                    .arg("-a")
                    .arg(socket)
                    .args(["-n", "k8s.io", "images", "import"])
                    .args(["--snapshotter", &args.snapshotter])
                    .arg(path),
            )
            .with_context(|| format!("importing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Builds the image archives under `target/images` (rewritten only when their content
/// changed) and returns their paths.
pub fn build() -> Result<Vec<PathBuf>> {
    let out_dir = util::target_dir().join("images");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let build_dir = out_dir.join("build");
    let images = [
        pause_image(&build_dir)?,
        testapp_image()?,
        echo_image(&build_dir)?,
    ];
    let mut archives = Vec::new();
    for image in &images {
        let path = out_dir.join(format!("{}.tar", image.file));
        let bytes = archive(image).with_context(|| format!("assembling {}", image.reference))?;
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            println!("{} is up to date ({})", path.display(), image.reference);
        } else {
            write_atomically(&path, &bytes)?;
            println!("wrote {} ({})", path.display(), image.reference);
        }
        archives.push(path);
    }
    Ok(archives)
}

/// The sandbox image: the statically linked pause program and the directories runc mounts on.
fn pause_image(build_dir: &Path) -> Result<Image> {
    let binary = compile_pause(build_dir)?;
    let mut entries = base_dirs();
    entries.insert("pause".into(), Entry::File(0o755, binary));
    Ok(Image {
        file: "pause",
        reference: PAUSE_IMAGE,
        entries,
        entrypoint: vec!["/pause"],
    })
}

/// Compiles `pause.c` unless the copy of the source next to the binary is unchanged.
fn compile_pause(build_dir: &Path) -> Result<Vec<u8>> {
    std::fs::create_dir_all(build_dir)
        .with_context(|| format!("creating {}", build_dir.display()))?;
    let src = build_dir.join("pause.c");
    let bin = build_dir.join("pause");
    let fresh = bin.is_file() && std::fs::read_to_string(&src).is_ok_and(|s| s == PAUSE_C);
    if !fresh {
        std::fs::write(&src, PAUSE_C).with_context(|| format!("writing {}", src.display()))?;
        util::run(
            Command::new("gcc")
                .args(["-static", "-Os", "-s", "-Wall", "-Werror", "-o"])
                .arg(&bin)
                .arg(&src),
        )
        .context("compiling the pause program (needs gcc and libc6-dev)")?;
    }
    std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))
}

/// The echo image: the busybox image's files plus the static `/echo` as entrypoint.
fn echo_image(build_dir: &Path) -> Result<Image> {
    let binary = compile_echo(build_dir)?;
    let mut entries = busybox_entries()?;
    entries.insert("echo".into(), Entry::File(0o755, binary));
    Ok(Image {
        file: "echo",
        reference: ECHO_IMAGE,
        entries,
        entrypoint: vec!["/echo"],
    })
}

/// Compiles `echo.rs` statically with the workspace's `rustc` unless the copy of the source
/// next to the binary is unchanged.
fn compile_echo(build_dir: &Path) -> Result<Vec<u8>> {
    let src = build_dir.join("echo.rs");
    let bin = build_dir.join("echo");
    let fresh = bin.is_file() && std::fs::read_to_string(&src).is_ok_and(|s| s == ECHO_RS);
    if !fresh {
        std::fs::write(&src, ECHO_RS).with_context(|| format!("writing {}", src.display()))?;
        util::run(
            Command::new("rustc")
                .current_dir(util::workspace_root())
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                ])
                .args(["-C", "strip=symbols", "-o"])
                .arg(&bin)
                .arg(&src),
        )
        .context("compiling the echo test app (static, needs libc6-dev)")?;
    }
    std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))
}

/// The busybox image: `/bin/busybox`, a link per applet, and a minimal `/etc`.
fn testapp_image() -> Result<Image> {
    Ok(Image {
        file: "testapp",
        reference: TESTAPP_IMAGE,
        entries: busybox_entries()?,
        entrypoint: vec!["/bin/sh"],
    })
}

/// Files of an image with Debian's static busybox under `/bin` (`sh`, `wget`, `nc`, `ip`, …).
fn busybox_entries() -> Result<BTreeMap<String, Entry>> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (Debian package busybox-static)"))?;
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list"))?;
    if !out.status.success() {
        bail!("{BUSYBOX} --list failed ({})", out.status);
    }
    let mut entries = base_dirs();
    entries.insert("bin".into(), Entry::Dir(0o755));
    for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            entries.insert(format!("bin/{applet}"), Entry::Symlink("busybox".into()));
        }
    }
    entries.insert("bin/busybox".into(), Entry::File(0o755, busybox));
    entries.insert(
        "etc/passwd".into(),
        Entry::File(
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
        ),
    );
    entries.insert(
        "etc/group".into(),
        Entry::File(0o644, b"root:x:0:\nnogroup:x:65534:\n".to_vec()),
    );
    entries.insert("root".into(), Entry::Dir(0o700));
    entries.insert("var".into(), Entry::Dir(0o755));
    entries.insert("var/www".into(), Entry::Dir(0o755));
    Ok(entries)
}

/// Directories every image has: mount points for runc and a sticky `/tmp`.
fn base_dirs() -> BTreeMap<String, Entry> {
    [
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ]
    .into_iter()
    .map(|(p, mode)| (p.to_string(), Entry::Dir(mode)))
    .collect()
}

/// A tar stream of `entries`, owned by root with mtime 0 so the digest depends on content only.
fn layer_tar(entries: &BTreeMap<String, Entry>) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match entry {
            Entry::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                tar.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Entry::File(mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, data.as_slice())?;
            }
            Entry::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, path, target)?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

/// `sha256:<hex>` of `data`.
fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An OCI content descriptor for `data`.
fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(data), "size": data.len() })
}

/// The OCI platform of this host (images hold host binaries, so they match it).
fn platform() -> Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    json!({ "architecture": arch, "os": "linux" })
}

/// The complete OCI image archive (`oci-layout`, `index.json`, `blobs/sha256/*`) for `image`.
fn archive(image: &Image) -> Result<Vec<u8>> {
    let layer = layer_tar(&image.entries)?;
    let mut config = platform();
    config["config"] = json!({
        "Entrypoint": image.entrypoint,
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
    });
    config["rootfs"] = json!({ "type": "layers", "diff_ids": [digest(&layer)] });
    let config = serde_json::to_vec(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))?;
    let mut manifest_desc = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    manifest_desc["platform"] = platform();
    let tag = image.reference.rsplit(':').next().unwrap_or("latest");
    manifest_desc["annotations"] = json!({
        "io.containerd.image.name": image.reference,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    }))?;

    let mut files = BTreeMap::new();
    files.insert("blobs".to_string(), Entry::Dir(0o755));
    files.insert("blobs/sha256".to_string(), Entry::Dir(0o755));
    for blob in [layer, config, manifest] {
        let name = format!("blobs/sha256/{}", &digest(&blob)["sha256:".len()..]);
        files.insert(name, Entry::File(0o644, blob));
    }
    files.insert("index.json".into(), Entry::File(0o644, index));
    files.insert(
        "oci-layout".into(),
        Entry::File(0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    );
    layer_tar(&files)
}

/// Writes `bytes` to `path` through a temporary file, so readers never see half an archive.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tar.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Image {
        let mut entries = base_dirs();
        entries.insert("hello".into(), Entry::File(0o644, b"hi\n".to_vec()));
        entries.insert("link".into(), Entry::Symlink("hello".into()));
        Image {
            file: "tiny",
            reference: "docker.io/netlet/tiny:v1",
            entries,
            entrypoint: vec!["/hello"],
        }
    }

    #[test]
    fn archives_are_reproducible() {
        assert_eq!(archive(&tiny()).unwrap(), archive(&tiny()).unwrap());
    }

    #[test]
    fn index_names_the_image_and_blobs_match_their_digests() {
        let bytes = archive(&tiny()).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mut blobs = BTreeMap::new();
        let mut index = None;
        for entry in ar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                if !hex.is_empty() {
                    assert_eq!(digest(&data), format!("sha256:{hex}"));
                    blobs.insert(format!("sha256:{hex}"), data);
                }
            } else if path == "index.json" {
                index = Some(serde_json::from_slice::<Value>(&data).unwrap());
            }
        }
        let index = index.expect("index.json present");
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "docker.io/netlet/tiny:v1"
        );
        let manifest: Value =
            serde_json::from_slice(&blobs[m["digest"].as_str().unwrap()]).unwrap();
        let config: Value =
            serde_json::from_slice(&blobs[manifest["config"]["digest"].as_str().unwrap()]).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"],
            "uncompressed layer: diff id equals the blob digest"
        );
        assert_eq!(config["config"]["Entrypoint"][0], "/hello");
    }
}
