//! The names of the images `cargo xtask images` builds, in one place for the image builder, the
//! cluster and the tests. All live under `localhost/`: they are built here and imported, never
//! pulled, and a `localhost/` name makes any accidental pull fail fast instead of reaching out.

/// The sandbox (pause) image containerd's `sandbox_image` names.
pub const PAUSE_IMAGE: &str = "localhost/netlet-pause:1";

/// The test app image: `/echo` (HTTP 8080, TCP echo 9000, UDP echo 9001) plus busybox.
pub const ECHO_IMAGE: &str = "localhost/netlet-echo:1";

/// The busybox-only test image.
pub const TESTAPP_IMAGE: &str = "localhost/netlet-testapp:1";
