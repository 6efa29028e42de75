//! The kernel edge of the iptables backend: [`IptablesCli`] (save and restore, nothing else),
//! its real implementation [`SystemIptables`] and the variant choice [`IptablesMode`].

use crate::error::{Error, Result};
use crate::exec::NetnsExec;
use crate::model::IpFamily;
use std::fmt;

/// Which iptables tools to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IptablesMode {
    /// Whatever `iptables -V` reports (`nf_tables` or `legacy`).
    #[default]
    Auto,
    /// `iptables-nft-*`: iptables rules stored as nftables objects.
    Nft,
    /// `iptables-legacy-*`: the x_tables kernel interface.
    Legacy,
}

/// A resolved iptables variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `nf_tables` backend.
    Nft,
    /// Legacy x_tables.
    Legacy,
}

impl Variant {
    /// Reads `iptables -V` output, e.g. `iptables v1.8.9 (nf_tables)`.
    pub fn from_version(output: &str) -> Result<Self> {
        if output.contains("nf_tables") {
            Ok(Self::Nft)
        } else if output.contains("legacy")
            || [" v1.4.", " v1.6."].iter().any(|v| output.contains(v))
        {
            // Before 1.8 there was only the legacy variant, and no marker.
            Ok(Self::Legacy)
        } else {
            Err(Error::UnknownIptablesVariant(output.trim().to_string()))
        }
    }

    /// Name of the tool `base` (`save` or `restore`) for a family.
    pub fn tool(self, family: IpFamily, base: &str) -> String {
        let fam = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let v = match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
        };
        format!("{fam}-{v}-{base}")
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
        })
    }
}

/// The two operations the backend needs from the kernel.
pub trait IptablesCli: Send + fmt::Debug {
    /// `iptables-save` output (all tables) for one family.
    fn save(&self, family: IpFamily) -> Result<String>;
    /// Applies `input` with `iptables-restore --noflush` as one transaction.
    fn restore(&self, family: IpFamily, input: &str) -> Result<()>;
}

/// The real tools, run in a given namespace.
#[derive(Debug, Clone)]
pub struct SystemIptables {
    netns: NetnsExec,
    variant: Variant,
}

impl SystemIptables {
    /// Resolves the variant (running `iptables -V` in `netns` for [`IptablesMode::Auto`]).
    pub fn new(netns: NetnsExec, mode: IptablesMode) -> Result<Self> {
        let variant = match mode {
            IptablesMode::Nft => Variant::Nft,
            IptablesMode::Legacy => Variant::Legacy,
            IptablesMode::Auto => Variant::from_version(&netns.run(
                "detecting the iptables variant",
                "iptables",
                &["-V"],
                None,
            )?)?,
        };
        Ok(Self { netns, variant })
    }

    /// The variant in use.
    pub fn variant(&self) -> Variant {
        self.variant
    }
}

impl IptablesCli for SystemIptables {
    fn save(&self, family: IpFamily) -> Result<String> {
        let tool = self.variant.tool(family, "save");
        self.netns.run(
            &format!("reading installed {family} rules"),
            &tool,
            &[],
            None,
        )
    }

    fn restore(&self, family: IpFamily, input: &str) -> Result<()> {
        let tool = self.variant.tool(family, "restore");
        self.netns
            .run(
                &format!("applying {family} service rules"),
                &tool,
                &["--noflush", "--wait=5"],
                Some(input),
            )
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_from_version_and_tool_names() {
        let nft = Variant::from_version("iptables v1.8.9 (nf_tables)\n").unwrap();
        assert_eq!(nft, Variant::Nft);
        assert_eq!(nft.tool(IpFamily::V6, "restore"), "ip6tables-nft-restore");
        let legacy = Variant::from_version("iptables v1.8.9 (legacy)").unwrap();
        assert_eq!(legacy.tool(IpFamily::V4, "save"), "iptables-legacy-save");
        assert_eq!(
            Variant::from_version("iptables v1.6.1").unwrap(),
            Variant::Legacy
        );
        assert!(matches!(
            Variant::from_version("iptables v1.9.0"),
            Err(Error::UnknownIptablesVariant(_))
        ));
    }
}
