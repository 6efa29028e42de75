//! `netlet-ebpf`: eBPF programs written in C and their loader on `aya`.
//!
//! This first slice is the service NAT datapath, the proxy's third backend
//! (`netlet-proxy --backend ebpf`, `proxy/src/backend/ebpf.rs`): IPv4 TCP/UDP
//! DNAT of service VIPs to backends in tc programs, with O(1) map updates per changed backend.
//!
//! # Layout
//! - `src/bpf/service_nat.bpf.c`: the two tc classifiers and their maps. `build.rs` compiles it
//!   with `clang-19 -O2 -g -target bpf` against the kernel uapi headers and libbpf's
//!   `<bpf/bpf_helpers.h>`; the object is embedded. Without clang-19 an empty object is embedded
//!   (with a cargo warning) so `cargo check`/clippy work anywhere, and
//!   [`ServiceNat::load`] returns [`Error::NotBuilt`].
//! - [`maps`]: `#[repr(C)]` Rust mirrors of the C map keys/values, size-asserted.
//! - [`service_table`]: `set_service`/`remove_service` as incremental, ordered map writes.
//! - [`loader`]: [`ServiceNat`] loads the object, owns the maps, attaches/detaches with tc and
//!   runs the programs under `BPF_PROG_TEST_RUN`.
//! - [`bpffs`]: the loader's private bpffs mount under its state dir, for pinned maps
//!   ([`ServiceNat::load_pinned`]); unmounted on drop unless kept.
//! - [`error`]: the error type.
//!
//! # Datapath
//! `svc_nat_fwd` looks up `services[{vip, port, proto}]`; on a hit it picks
//! `backends[{service id, bpf_get_prandom_u32() % count}]` (or the backend `affinity` already
//! pinned the 5-tuple to, while that slot still holds it; for `sessionAffinity: ClientIP`
//! services the backend `client_affinity[{client, service id}]` chose for the client's last new
//! flow, if that was within the service's `affinity_timeout` by `bpf_ktime_get_ns`), rewrites
//! daddr/dport with incremental
//! L3/L4 checksum updates (pseudo-header aware; a zero UDP checksum stays zero), and records
//! `conntrack[tuple after NAT] = {vip, port}`. `svc_nat_rev` looks up replies in `conntrack`
//! (tuple turned around) and rewrites their source back to `vip:port`. A service with no
//! backends (`count` 0) is rejected the way a closed port is: the packet is rewritten in place
//! into a TCP RST (RST|ACK for a SYN) or an ICMP port unreachable quoting it, from the VIP,
//! checksums computed with `bpf_csum_diff`, and `bpf_redirect`ed back out the interface it
//! came in on (the client's veth), so the client fails at once instead of timing out. An RST
//! is not answered; a UDP datagram with IP options is dropped. Everything else (non-IPv4, non-TCP/UDP, non-first fragments,
//! non-service destinations) passes untouched with `TC_ACT_OK`.
//!
//! # Where to hook, and why tc on pod-facing veths
//! Service translation has to happen before routing picks a path for the packet and has to be
//! undone before the reply reaches the client. The node side of every pod's veth sees both
//! directions of that pod's traffic in one place: tc ingress there is "leaving the pod" (DNAT
//! before the node routes it, so the packet is routed to the backend directly), tc egress is
//! "entering the pod" (reverse SNAT of replies). That needs no cooperation from the pod, works
//! for any L4 socket API, and keeps pod-to-pod service traffic off iptables entirely. The
//! alternative, socket-LB (cgroup `connect4`/`sendmsg4` hooks rewriting the address at
//! `connect()`), translates once per connection instead of per packet and needs no reverse
//! path, and it also covers host-network clients; but it only sees local sockets (not forwarded
//! traffic), needs cgroup v2 attachment per node, and UDP replies need `recvmsg4` fix-ups. It is
//! the better eventual fast path for local clients, layered on top of tc, which remains the
//! catch-all; this slice implements tc. Attaching to the bridge device instead would be one
//! attachment per node, but a reply from a backend pod on the same bridge is switched at L2
//! straight to the client's port and never crosses the bridge device's tc hooks, so its
//! reverse SNAT would be missed. The host end of a veth is a bridge port whose tc ingress runs
//! before the bridge and whose tc egress runs on every frame the bridge sends to the pod, so
//! per-veth attachment sees both directions; it is also what the CNI plugin can do at ADD time.
//!
//! # Masquerade and external frontends
//! `config[0]` holds the node's masquerade address (its pod-bridge address) and the cluster
//! CIDRs. `svc_nat_fwd` masquerades a new flow when the client is outside the cluster CIDRs,
//! when the frontend is flagged `MASQ_ALL` (node ports, external and load-balancer IPs with
//! `externalTrafficPolicy: Cluster`, as kube-proxy does), or when the client is the chosen
//! backend (hairpin): the source becomes `snat_ip`, keeping the client's port unless another
//! client holds it towards that backend (then a random one of 32768–60999), recorded in the
//! LRU `snat` map under the tuple after NAT, and the port in the flow's `affinity` entry. A
//! packet from a local address would be dropped as martian by the routing input path, so
//! masqueraded packets leave by `bpf_fib_lookup` + `bpf_redirect_neigh`. Their replies
//! (addressed to `snat_ip`) are recognised first thing in `svc_nat_fwd` wherever they enter —
//! a pod veth, or the uplink when the backend is on another node — and translated back to
//! `frontend -> client` the same way. `externalTrafficPolicy: Local` frontends have a second
//! `services` entry with scope `OFF_CLUSTER` and only the node's endpoints, flagged
//! `KEEP_SOURCE`; off-cluster clients use it and keep their address, and the replies are
//! translated by `svc_nat_rev` on the uplink's egress.
//!
//! # How the proxy uses it
//! The proxy's ebpf backend attaches to the interfaces its config names
//! (`--ebpf-interface`, `prefix*` allowed; default `veth*`, and the agent adds its uplink):
//! the node ends of pod veths, per the reasoning above, and the uplink for off-cluster clients;
//! no bridge device. It refuses SCTP, IPv6 and masquerade-all with an error naming the service
//! port or setting.
//!
//! Restart: the backend keeps the maps pinned in [`BpfFs`] under its state dir (kept mounted
//! across processes); a new process [`ServiceNat::load_pinned`]s them, rebuilds the mirror and
//! [`ServiceNat::attach`] replaces the programs in place (fixed tc priority/handle), so
//! established flows keep their conntrack entries. Its cleanup detaches every filter and
//! unmounts the bpffs ([`bpffs::unmount_under`]).
//!
//! # Not yet
//! - Conntrack timeouts/GC: `conntrack` and `affinity` are LRU maps without TCP state or
//!   expiry, so a client reusing a source port towards a former backend directly could have
//!   its replies SNATed to the VIP until the entry is evicted.
//! - Fragments after the first are not translated; first fragments are.
//! - IPv6 and SCTP; clients in the node's own network namespace (no hook sees their packets
//!   before routing; socket-level load balancing would cover them).
//! - Masqueraded packets are not TTL-decremented (they skip the forwarding path).

pub mod batch;
pub mod bpffs;
pub mod error;
pub mod loader;
pub mod maps;
pub mod service_table;

pub use bpffs::BpfFs;
pub use error::{Error, Result};
pub use loader::{detach, Direction, ServiceNat, TestRunOutput};
pub use maps::{Config, Proto, SvcKey};
pub use service_table::{Backend, Frontend, NewFrontend, ServiceTable};
