//! Loading the embedded service NAT object, attaching it with tc, and test-running it.

use crate::bpffs::BpfFs;
use crate::error::{Error, Result};
use crate::maps::{
    names, AffinityValue, ClientKey, ClientValue, Config, CtKey, CtValue, Proto, SnatValue, SvcKey,
};
use crate::service_table::{Backend, ServiceTable};
use aya::maps::{Array, HashMap, MapData, MapError};
use aya::programs::tc::{
    self, NlOptions, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType, TcHandle,
};
use aya::programs::{ProgramError, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

/// The compiled `service_nat.bpf.o` (empty when build.rs found no clang-19).
static SERVICE_NAT_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/service_nat.bpf.o"));

/// tc priority of the service NAT filters (lower runs first). Fixed, so a later run finds and
/// replaces its own filters.
pub const TC_PRIORITY: u16 = 0x100;
/// tc handle of the service NAT filters at [`TC_PRIORITY`].
pub const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Every map of the object, by name.
const MAPS: [&str; 7] = [
    names::SERVICES,
    names::BACKENDS,
    names::CONNTRACK,
    names::AFFINITY,
    names::CLIENT_AFFINITY,
    names::SNAT,
    names::CONFIG,
];

/// Prefix of the pinned maps' names. Versioned: a map whose key/value layout changes needs a
/// new name, or a new process would fail to re-adopt the old pin (v2: `svc_value` gained
/// `affinity_timeout`, and `client_affinity` appeared; v3: `svc_key` has a scope, affinity
/// values a SNAT port, and `snat` and `config` appeared).
pub const PIN_PREFIX: &str = "service_nat_v3";

/// The two classifiers of the service NAT object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `svc_nat_fwd`: DNAT of packets to a VIP (pod-facing veth ingress).
    Forward,
    /// `svc_nat_rev`: SNAT of replies back to the VIP (pod-facing veth egress).
    Reverse,
}

impl Direction {
    /// The program's name in the object (also the tc filter name).
    pub const fn program(self) -> &'static str {
        match self {
            Direction::Forward => "svc_nat_fwd",
            Direction::Reverse => "svc_nat_rev",
        }
    }

    /// The tc hook it is attached to.
    pub const fn hook(self) -> TcAttachType {
        match self {
            Direction::Forward => TcAttachType::Ingress,
            Direction::Reverse => TcAttachType::Egress,
        }
    }
}

/// The tc verdicts the programs return.
pub mod verdict {
    /// `TC_ACT_OK`: continue (possibly rewritten).
    pub const TC_ACT_OK: u32 = 0;
    /// `TC_ACT_SHOT`: drop.
    pub const TC_ACT_SHOT: u32 = 2;
    /// `TC_ACT_REDIRECT`: sent elsewhere by `bpf_redirect()` (the reject path sends its reply
    /// back out the interface the packet came in on).
    pub const TC_ACT_REDIRECT: u32 = 7;
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Debug, Clone)]
pub struct TestRunOutput {
    /// The program's return value (see [`verdict`]).
    pub verdict: u32,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
    /// Average time per run as measured by the kernel.
    pub duration: Duration,
}

/// The loaded service NAT datapath: programs verified and loaded, maps owned.
///
/// Dropping it does *not* detach: filters are attached via netlink, hold their own reference on
/// the programs (and thereby the maps) and survive this process; [`ServiceNat::detach`] removes
/// them.
pub struct ServiceNat {
    ebpf: Ebpf,
    table: ServiceTable,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    affinity: HashMap<MapData, CtKey, AffinityValue>,
    client_affinity: HashMap<MapData, ClientKey, ClientValue>,
    snat: HashMap<MapData, CtKey, SnatValue>,
    config: Array<MapData, Config>,
}

impl std::fmt::Debug for ServiceNat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceNat")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl ServiceNat {
    /// Loads the embedded object into the kernel (needs root / CAP_BPF+CAP_NET_ADMIN), with
    /// fresh, unpinned maps.
    pub fn load() -> Result<Self> {
        Self::load_with(&mut EbpfLoader::new())
    }

    /// Loads the object with its maps pinned in `bpffs` (as `<PIN_PREFIX>_<map>`): maps already
    /// pinned there by an earlier run are reused, services and conntrack included, and the
    /// service table's mirror is rebuilt from them ([`ServiceTable::recover`]).
    ///
    /// The pinned maps must come from a compatible object (same key/value layouts); changing a
    /// map's layout needs new pin names.
    pub fn load_pinned(bpffs: &BpfFs) -> Result<Self> {
        let paths: Vec<(&'static str, PathBuf)> = MAPS
            .iter()
            .map(|m| (*m, bpffs.path().join(format!("{PIN_PREFIX}_{m}"))))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut nat = Self::load_with(&mut loader)?;
        nat.table.recover()?;
        Ok(nat)
    }

    fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Self> {
        if SERVICE_NAT_OBJ.is_empty() {
            return Err(Error::NotBuilt);
        }
        let mut ebpf = loader.load(SERVICE_NAT_OBJ)?;
        for dir in [Direction::Forward, Direction::Reverse] {
            let name = dir.program();
            let prog = classifier(&mut ebpf, name)?;
            prog.load().map_err(|e| prog_err(name, e))?;
        }
        let services = take_map(&mut ebpf, names::SERVICES)?;
        let backends = take_map(&mut ebpf, names::BACKENDS)?;
        let batch_fds = (
            dup_fd(&services, names::SERVICES)?,
            dup_fd(&backends, names::BACKENDS)?,
        );
        let services = HashMap::try_from(services)?;
        let backends = HashMap::try_from(backends)?;
        let conntrack = HashMap::try_from(take_map(&mut ebpf, names::CONNTRACK)?)?;
        let affinity = HashMap::try_from(take_map(&mut ebpf, names::AFFINITY)?)?;
        let client_affinity = HashMap::try_from(take_map(&mut ebpf, names::CLIENT_AFFINITY)?)?;
        let snat = HashMap::try_from(take_map(&mut ebpf, names::SNAT)?)?;
        let config = Array::try_from(take_map(&mut ebpf, names::CONFIG)?)?;
        Ok(Self {
            ebpf,
            table: ServiceTable::new(services, backends, batch_fds),
            conntrack,
            affinity,
            client_affinity,
            snat,
            config,
        })
    }

    /// Writes the node's settings (masquerade address, cluster CIDRs) the programs read.
    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        Ok(self.config.set(0, config, 0)?)
    }

    /// The node's settings as the programs see them.
    pub fn config(&self) -> Result<Config> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Creates or updates the `services` entry `key`; see [`ServiceTable::set_frontend`].
    pub fn set_frontend(
        &mut self,
        key: SvcKey,
        flags: u16,
        backends: &[Backend],
        affinity_timeout: Option<Duration>,
    ) -> Result<()> {
        self.table
            .set_frontend(key, flags, backends, affinity_timeout)
    }

    /// Creates many new `services` entries in two batch writes; see
    /// [`ServiceTable::add_frontends`].
    pub fn add_frontends(&mut self, items: &[crate::service_table::NewFrontend<'_>]) -> Result<()> {
        self.table.add_frontends(items)
    }

    /// Removes the `services` entry `key`; see [`ServiceTable::remove_frontend`].
    pub fn remove_frontend(&mut self, key: SvcKey) -> Result<bool> {
        self.table.remove_frontend(key)
    }

    /// Looks up `snat` for a masqueraded connection after NAT (node -> backend direction).
    pub fn snat_get(&self, key: &CtKey) -> Result<Option<SnatValue>> {
        match self.snat.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates or updates a service; see [`ServiceTable::set_service`].
    pub fn set_service(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Proto,
        backends: &[Backend],
    ) -> Result<()> {
        self.table.set_service(vip, port, proto, backends)
    }

    /// Removes a service; see [`ServiceTable::remove_service`].
    pub fn remove_service(&mut self, vip: Ipv4Addr, port: u16, proto: Proto) -> Result<bool> {
        self.table.remove_service(vip, port, proto)
    }

    /// The service table (read access for inspection).
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// Looks up `conntrack` for a connection after NAT (client -> backend direction).
    pub fn conntrack_get(&self, key: &CtKey) -> Result<Option<CtValue>> {
        match self.conntrack.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Looks up `affinity` for a connection before NAT (client -> VIP direction).
    pub fn affinity_get(&self, key: &CtKey) -> Result<Option<AffinityValue>> {
        match self.affinity.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates or updates a service with `sessionAffinity: ClientIP` when `affinity_timeout`
    /// is set; see [`ServiceTable::set_service_with_affinity`].
    pub fn set_service_with_affinity(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Proto,
        backends: &[Backend],
        affinity_timeout: Option<Duration>,
    ) -> Result<()> {
        self.table
            .set_service_with_affinity(vip, port, proto, backends, affinity_timeout)
    }

    /// Looks up `client_affinity`: where `client`'s last new flow to the service `vip:port`
    /// went, and when (`None` also when the service is unknown).
    pub fn client_affinity_get(
        &self,
        client: Ipv4Addr,
        vip: Ipv4Addr,
        port: u16,
        proto: Proto,
    ) -> Result<Option<ClientValue>> {
        let Some(id) = self.table.service_id(vip, port, proto) else {
            return Ok(None);
        };
        match self.client_affinity.get(&ClientKey::new(client, id), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Attaches both programs to `ifname` in the calling thread's network namespace: forward on
    /// ingress, reverse on egress, as classic netlink tc filters on a clsact qdisc (created if
    /// missing). `ifname` is meant to be the node-side end of a pod's veth: ingress there is
    /// traffic leaving the pod, egress is traffic towards it.
    ///
    /// Netlink filters outlive this process (unlike TCX links, which this kernel would pick by
    /// default). Both filters sit at a fixed priority/handle ([`TC_PRIORITY`], [`TC_HANDLE`]):
    /// if one is already there (an earlier run), its program is replaced in place, so traffic
    /// never sees the interface without the datapath.
    pub fn attach(&mut self, ifname: &str) -> Result<()> {
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(tc::TcError::AlreadyAttached) => {}
            Err(e) => return Err(tc_err(ifname, e)),
        }
        for dir in [Direction::Forward, Direction::Reverse] {
            let name = dir.program();
            let prog = classifier(&mut self.ebpf, name)?;
            let existing =
                SchedClassifierLink::attached(ifname, dir.hook(), TC_PRIORITY, TC_HANDLE, None)
                    .map_err(|e| tc_err(ifname, tc::TcError::IoError(e)))?;
            let id = match prog.attach_to_link(existing) {
                Ok(id) => id,
                Err(ProgramError::TcError(tc::TcError::NetlinkError(e)))
                    if e.raw_os_error() == Some(libc::ENOENT) =>
                {
                    prog.attach_with_options(
                        ifname,
                        dir.hook(),
                        TcAttachOptions::Netlink(NlOptions {
                            priority: TC_PRIORITY,
                            handle: TC_HANDLE,
                            classid: None,
                        }),
                    )
                    .map_err(|e| prog_err(name, e))?
                }
                Err(e) => return Err(prog_err(name, e)),
            };
            // Keep the filter when this process (or this value) goes away: aya detaches the
            // links it still owns on drop, so take ours out and leak the (fd-less) handle.
            let link = prog.take_link(id).map_err(|e| prog_err(name, e))?;
            std::mem::forget(link);
        }
        Ok(())
    }

    /// Removes the filters named `svc_nat_fwd`/`svc_nat_rev` from `ifname` (current namespace);
    /// interfaces without them are fine. The clsact qdisc stays (others may use it).
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        detach(ifname)
    }

    /// Runs one program on `packet` with `BPF_PROG_TEST_RUN` (no attachment), `repeat` times.
    pub fn test_run(&self, dir: Direction, packet: &[u8], repeat: u32) -> Result<TestRunOutput> {
        let name = dir.program();
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(Error::Missing {
                kind: "program",
                name,
            })?
            .try_into()
            .map_err(|e| prog_err(name, e))?;
        let mut out = vec![0u8; packet.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(|e| prog_err(name, e))?;
        out.truncate(res.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: res.return_value,
            packet: out,
            duration: res.duration,
        })
    }
}

/// Removes the service NAT filters from `ifname` in the calling thread's namespace, without a
/// loaded [`ServiceNat`] (e.g. on agent shutdown or uninstall).
pub fn detach(ifname: &str) -> Result<()> {
    for dir in [Direction::Forward, Direction::Reverse] {
        match tc::qdisc_detach_program(ifname, dir.hook(), dir.program()) {
            Ok(()) => {}
            Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            // No clsact qdisc at all: nothing attached.
            Err(tc::TcError::NetlinkError(e))
                if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
            Err(e) => return Err(tc_err(ifname, e)),
        }
    }
    Ok(())
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|e| prog_err(name, e))
}

/// A duplicate of a hash map's descriptor (for batch writes, which aya does not offer).
fn dup_fd(map: &aya::maps::Map, name: &'static str) -> Result<OwnedFd> {
    match map {
        aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Batch {
                map: name,
                count: 0,
                source,
            }),
        _ => Err(Error::Missing {
            kind: "hash map",
            name,
        }),
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or(Error::Missing { kind: "map", name })
}

fn prog_err(program: &'static str, e: aya::programs::ProgramError) -> Error {
    Error::Program {
        program,
        source: Box::new(e),
    }
}

fn tc_err(ifname: &str, e: tc::TcError) -> Error {
    Error::Tc {
        ifname: ifname.to_owned(),
        source: Box::new(e),
    }
}
