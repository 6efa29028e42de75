//! The official Kubernetes Python client (`kubernetes` from PyPI, pinned in
//! `tests/python/requirements.txt`) against `netlet-control-plane serve`: CRUD, watch order,
//! 404/409 errors, pagination, status and scale subresources and finalizers, each a check of
//! `tests/python/client_checks.py`. The venv comes from `cargo xtask deps`, so the test never
//! reaches the network.

use integration::TestApiserver;
use std::path::PathBuf;
use std::process::Command;

/// `<target>/py-venv/bin/python`, where `cargo xtask deps` puts the venv. The target directory
/// is found from this test's own path (`<target>/<profile>/deps/<test>`), so it follows
/// `CARGO_TARGET_DIR` as xtask does.
fn venv_python() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binary in <target>/<profile>/deps");
    target.join("py-venv/bin/python")
}

#[tokio::test(flavor = "multi_thread")]
async fn official_python_client_passes_every_check() {
    let python = venv_python();
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask deps` to create the Python venv with the pinned \
         kubernetes client",
        python.display()
    );
    let server = TestApiserver::start();
    server.client().await; // waits until the server serves and the kubeconfig exists

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_checks.py");
    let output = tokio::task::spawn_blocking({
        let kubeconfig = server.kubeconfig();
        move || {
            Command::new(&python)
                .arg(script)
                .arg(&kubeconfig)
                .arg("python-client")
                .output()
                .expect("run the venv's python")
        }
    })
    .await
    .expect("python runner task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "client_checks.py failed ({}):\n{stdout}\nstderr:\n{stderr}\napiserver log:\n{}",
        output.status,
        server.log()
    );
    // The script exits 0 only after its last line; make sure every check actually ran.
    let passed = stdout.lines().filter(|l| l.starts_with("ok: ")).count();
    assert_eq!(passed, 9, "expected 9 passed checks:\n{stdout}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
