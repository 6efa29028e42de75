//! The crate's error type.

/// Errors from loading, attaching and updating the eBPF datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// build.rs found no clang-19 and embedded empty objects.
    #[error("eBPF objects were not built: clang-19 missing; run cargo xtask deps")]
    NotBuilt,
    /// Parsing or loading the object (maps, BTF, relocations) failed.
    #[error("loading the eBPF object: {0}")]
    Ebpf(#[from] Box<aya::EbpfError>),
    /// Loading (verifying), attaching or test-running a program failed.
    #[error("eBPF program {program}: {source}")]
    Program {
        /// The program's name.
        program: &'static str,
        /// What went wrong.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("eBPF map operation: {0}")]
    Map(#[from] Box<aya::maps::MapError>),
    /// A tc (qdisc/filter) operation failed.
    #[error("tc on {ifname}: {source}")]
    Tc {
        /// The interface.
        ifname: String,
        /// What went wrong.
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },
    /// The object lacks a program or map the loader expects (C and Rust out of sync).
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        /// The name looked up.
        name: &'static str,
    },
    /// Mounting, unmounting or preparing the private bpffs failed.
    #[error("bpffs at {}: {what}: {source}", path.display())]
    BpfFs {
        /// The mount point.
        path: std::path::PathBuf,
        /// The step that failed.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A batch write of many map elements failed.
    #[error("writing {count} elements to the eBPF map {map} in one batch: {source}")]
    Batch {
        /// The map's name.
        map: &'static str,
        /// Elements in the batch.
        count: usize,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A service has more backends than `count` (u16) can express.
    #[error("{count} backends exceed the datapath's limit of 65535 per service")]
    TooManyBackends {
        /// The number requested.
        count: usize,
    },
}

impl From<aya::maps::MapError> for Error {
    fn from(e: aya::maps::MapError) -> Self {
        Error::Map(Box::new(e))
    }
}

impl From<aya::EbpfError> for Error {
    fn from(e: aya::EbpfError) -> Self {
        Error::Ebpf(Box::new(e))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
