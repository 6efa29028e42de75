//! CNI errors: the spec's error codes and the JSON object a plugin prints on failure.
//!
//! Every failure of the plugin ends as one [`CniError`]: the binary prints it as the spec's error
//! JSON on stdout and exits non-zero. Keeping the code next to the message at the point of failure
//! means the runtime (and the user reading `kubectl describe`) learns *what* failed *on which
//! object*, not just that something did.

use serde::Serialize;

/// The well-known error codes of CNI spec 1.1 (section "Error").
///
/// Codes 0–99 are reserved by the spec; only the ones this plugin can produce are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// 1: the runtime asked for a `cniVersion` this plugin does not speak.
    IncompatibleVersion = 1,
    /// 2: a field of the network config is not supported (or not with that value).
    UnsupportedField = 2,
    /// 3: the container (or its network namespace) does not exist.
    UnknownContainer = 3,
    /// 4: a required environment variable is missing or malformed (`CNI_ARGS` included).
    InvalidEnvironment = 4,
    /// 5: an I/O failure, e.g. the IPAM store could not be read or written.
    IoFailure = 5,
    /// 6: the stdin content could not be decoded (malformed JSON).
    DecodingFailure = 6,
    /// 7: the network config is invalid (bad CIDR, gateway outside subnet, ...).
    InvalidNetworkConfig = 7,
    /// 11: a transient condition; the runtime should retry later.
    TryAgainLater = 11,
    /// 50: the plugin is not available, e.g. its address range is exhausted (STATUS).
    PluginNotAvailable = 50,
    /// 51: the plugin is available but with limited connectivity (STATUS).
    LimitedConnectivity = 51,
    /// 100: a failure specific to this plugin (netlink, iptables, delegated plugin).
    Internal = 100,
}

impl ErrorCode {
    /// The numeric code as printed in the error JSON.
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// One failure of the plugin, carrying the CNI error code, a short message and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The spec's error code.
    pub code: ErrorCode,
    /// A short message naming what failed.
    pub msg: String,
    /// Longer details: the object and the underlying cause.
    pub details: String,
}

impl CniError {
    /// Builds an error with a code, a message and details.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Prefixes the message with the operation that was under way, keeping the code.
    pub fn context(mut self, what: impl AsRef<str>) -> Self {
        self.msg = format!("{}: {}", what.as_ref(), self.msg);
        self
    }

    /// The spec's error JSON for this error, for the given `cniVersion`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code.as_u32(),
            msg: &self.msg,
            details: &self.details,
        })
        .expect("error JSON is always serialisable")
    }
}

/// Convenience alias used across the crate.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// Builds a [`CniError`] from a code, a message and a format string for details.
#[macro_export]
macro_rules! cni_err {
    ($code:ident, $msg:expr) => {
        $crate::error::CniError::new($crate::error::ErrorCode::$code, $msg, "")
    };
    ($code:ident, $msg:expr, $($fmt:tt)+) => {
        $crate::error::CniError::new($crate::error::ErrorCode::$code, $msg, format!($($fmt)+))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_spec_fields_and_omits_empty_details() {
        let e = CniError::new(ErrorCode::InvalidNetworkConfig, "bad subnet", "");
        let j = e.to_json("1.1.0");
        assert_eq!(j["code"], 7);
        assert_eq!(j["msg"], "bad subnet");
        assert_eq!(j["cniVersion"], "1.1.0");
        assert!(j.get("details").is_none());
        let e = cni_err!(IoFailure, "reading store", "file {}", "x");
        assert_eq!(e.to_json("1.0.0")["details"], "file x");
        assert_eq!(e.to_string(), "reading store: file x");
    }

    #[test]
    fn context_keeps_code() {
        let e = cni_err!(PluginNotAvailable, "range exhausted").context("allocating IP");
        assert_eq!(e.code, ErrorCode::PluginNotAvailable);
        assert_eq!(e.msg, "allocating IP: range exhausted");
    }
}
