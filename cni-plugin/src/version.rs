//! CNI spec versions: which ones we speak, and the features that differ between them.
//!
//! The runtime names a `cniVersion` in the config; the plugin must answer in that version's
//! result shape or fail with code 1. Keeping the version as an enum (not a string compared
//! everywhere) makes every per-version difference a `match` the compiler checks.

use crate::cni_err;
use crate::error::Result;
use std::fmt;

/// A CNI spec version this plugin supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: first version with multiple interfaces and the `ips` list.
    V0_3_0,
    /// 0.3.1: same result shape as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `version` from IP configs.
    V1_0_0,
    /// 1.1.0: adds GC and STATUS, route and interface attributes.
    V1_1_0,
}

/// Every version we accept, oldest first, as printed by VERSION.
pub const SUPPORTED: [CniVersion; 5] = [
    CniVersion::V0_3_0,
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

impl CniVersion {
    /// The newest version, used when a request names none (VERSION with empty stdin).
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// Parses a `cniVersion` string; unknown versions are error code 1.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "0.3.0" => Self::V0_3_0,
            "0.3.1" => Self::V0_3_1,
            "0.4.0" => Self::V0_4_0,
            "1.0.0" => Self::V1_0_0,
            "1.1.0" => Self::V1_1_0,
            other => {
                return Err(cni_err!(
                    IncompatibleVersion,
                    format!("unsupported cniVersion {other:?}"),
                    "supported versions: {}",
                    SUPPORTED.map(|v| v.as_str()).join(", ")
                ))
            }
        })
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// IP configs carry `"version": "4"|"6"` before 1.0.0.
    pub fn ip_has_version_field(self) -> bool {
        self < Self::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on; so do route/interface attributes like `mtu`.
    pub fn has_gc_status(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn round_trips_every_supported_version() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
    }

    #[test]
    fn rejects_unknown_versions_with_code_1() {
        for s in ["0.2.0", "1.2.0", "", "1.1", "v1.1.0"] {
            assert_eq!(
                CniVersion::parse(s).unwrap_err().code,
                ErrorCode::IncompatibleVersion
            );
        }
    }

    #[test]
    fn feature_gates() {
        assert!(CniVersion::V0_3_1.ip_has_version_field());
        assert!(!CniVersion::V1_0_0.ip_has_version_field());
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(!CniVersion::V1_0_0.has_gc_status());
        assert!(CniVersion::V1_1_0.has_gc_status());
    }
}
