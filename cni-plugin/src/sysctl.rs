//! Forwarding sysctls of the node namespace (`/proc/sys/net` is per network namespace).

use crate::cni_err;
use crate::error::Result;

/// Turns on IPv4 (or IPv6) forwarding if it is off; reading first avoids a write per ADD.
pub fn enable_forwarding(v4: bool) -> Result<()> {
    let path = if v4 {
        "/proc/sys/net/ipv4/ip_forward"
    } else {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    };
    let cur = std::fs::read_to_string(path)
        .map_err(|e| cni_err!(IoFailure, "reading forwarding sysctl", "{path}: {e}"))?;
    if cur.trim() != "1" {
        std::fs::write(path, "1")
            .map_err(|e| cni_err!(IoFailure, "enabling forwarding", "{path}: {e}"))?;
    }
    Ok(())
}
