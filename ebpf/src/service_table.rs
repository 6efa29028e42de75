//! The service table: `services` + `backends` maps with incremental, ordered writes.
//!
//! Userspace keeps a mirror of what it wrote (service id and slot layout per service), so a
//! change writes only the slots that differ. Backends that stay keep their slot, so flows pinned
//! to them (the `affinity` map checks the slot still holds the same backend) are not moved.
//!
//! Write ordering keeps every intermediate state valid for packets in flight:
//! - growing: write the new slots, then raise `count`;
//! - shrinking: lower `count`, then delete the slots past it;
//! - a new service: write its slots, then insert the `services` entry;
//! - removal: delete the `services` entry (packets pass untouched from then on), then the slots.
//!
//! A slot replaced in place is seen either with its old or its new backend, both valid choices.

use crate::error::{Error, Result};
use crate::maps::{names, BackendKey, BackendValue, Proto, SvcKey, SvcValue};
use aya::maps::{HashMap, MapData, MapError};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

/// A backend endpoint `ip:port` (port in host order).
pub type Backend = (Ipv4Addr, u16);

/// One entry for [`ServiceTable::add_frontends`].
#[derive(Debug, Clone, Copy)]
pub struct NewFrontend<'a> {
    /// The `services` key.
    pub key: SvcKey,
    /// [`crate::maps::flags`] bits.
    pub flags: u16,
    /// Its backends.
    pub backends: &'a [Backend],
    /// `sessionAffinity: ClientIP` timeout.
    pub affinity: Option<Duration>,
}

/// A `services` entry as userspace last wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontend<'a> {
    /// Backends in slot order.
    pub backends: &'a [Backend],
    /// `sessionAffinity: ClientIP` timeout.
    pub affinity: Option<Duration>,
    /// [`crate::maps::flags`] bits.
    pub flags: u16,
}

/// What userspace knows it wrote for one service.
#[derive(Debug, Clone)]
struct ServiceState {
    id: u32,
    slots: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds as published; 0: none.
    affinity_timeout: u32,
    /// [`crate::maps::flags`] as published.
    flags: u16,
    /// Set when a write sequence failed midway: the maps may hold anything up to `high_water`
    /// slots, so the next update rewrites every slot and deletes up to `high_water`.
    dirty: bool,
    high_water: u32,
}

/// Typed handle on the `services` and `backends` maps plus the userspace mirror.
#[derive(Debug)]
pub struct ServiceTable {
    services: HashMap<MapData, SvcKey, SvcValue>,
    backends: HashMap<MapData, BackendKey, BackendValue>,
    /// Duplicates of the two maps' descriptors, for batch writes (aya has none).
    batch_fds: (OwnedFd, OwnedFd),
    state: BTreeMap<SvcKey, ServiceState>,
    next_id: u32,
    free_ids: Vec<u32>,
}

impl ServiceTable {
    /// Wraps the two maps, which must be empty (freshly loaded); `batch_fds` are duplicates of
    /// the `services` and `backends` descriptors.
    pub fn new(
        services: HashMap<MapData, SvcKey, SvcValue>,
        backends: HashMap<MapData, BackendKey, BackendValue>,
        batch_fds: (OwnedFd, OwnedFd),
    ) -> Self {
        Self {
            services,
            backends,
            batch_fds,
            state: BTreeMap::new(),
            next_id: 1,
            free_ids: Vec::new(),
        }
    }

    /// Rebuilds the userspace mirror from the maps (after reopening pinned maps in a new
    /// process). Backend slots of services that no longer exist (an interrupted removal) are
    /// deleted; a service whose slots do not match its count is marked for a full rewrite on its
    /// next [`ServiceTable::set_service`]. Returns the number of services found.
    pub fn recover(&mut self) -> Result<usize> {
        let mut services = Vec::new();
        for item in self.services.iter() {
            services.push(item?);
        }
        let mut slots: BTreeMap<u32, BTreeMap<u32, BackendValue>> = BTreeMap::new();
        for item in self.backends.iter() {
            let (k, v) = item?;
            slots.entry(k.service_id).or_default().insert(k.slot, v);
        }
        self.state.clear();
        self.free_ids.clear();
        let mut max_id = 0;
        for (key, value) in &services {
            let id = value.service_id;
            max_id = max_id.max(id);
            let present = slots.remove(&id).unwrap_or_default();
            let layout: Vec<Backend> = (0..u32::from(value.count))
                .filter_map(|slot| present.get(&slot).map(|b| (b.ip(), b.port())))
                .collect();
            let high_water = present.keys().next_back().map_or(0, |s| s + 1);
            let consistent =
                layout.len() == usize::from(value.count) && high_water == u32::from(value.count);
            self.state.insert(
                *key,
                ServiceState {
                    id,
                    slots: layout,
                    affinity_timeout: value.affinity_timeout,
                    flags: value.flags,
                    dirty: !consistent,
                    high_water: high_water.max(u32::from(value.count)),
                },
            );
        }
        for (id, orphan) in slots {
            max_id = max_id.max(id);
            for slot in orphan.keys() {
                remove_ignoring_missing(
                    &mut self.backends,
                    &BackendKey {
                        service_id: id,
                        slot: *slot,
                    },
                )?;
            }
        }
        self.next_id = max_id + 1;
        Ok(self.state.len())
    }

    /// Creates or updates the service `vip:port/proto` with `backends` (duplicates are ignored).
    ///
    /// An empty list keeps the service with `count` 0: its packets are rejected (TCP reset,
    /// ICMP port unreachable), not passed to whatever else listens on the VIP.
    pub fn set_service(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Proto,
        backends: &[Backend],
    ) -> Result<()> {
        self.set_service_with_affinity(vip, port, proto, backends, None)
    }

    /// [`ServiceTable::set_service`] with `sessionAffinity: ClientIP`: with
    /// `affinity_timeout` set, a client's new flows go to the backend its last new flow went
    /// to, while that was less than the timeout ago (whole seconds, at least 1) and the backend
    /// is still in the service.
    pub fn set_service_with_affinity(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Proto,
        backends: &[Backend],
        affinity_timeout: Option<Duration>,
    ) -> Result<()> {
        self.set_frontend(SvcKey::new(vip, port, proto), 0, backends, affinity_timeout)
    }

    /// Creates or updates the `services` entry `key` (any scope) with [`crate::maps::flags`]
    /// `flags`, `backends` and the `sessionAffinity: ClientIP` timeout; the general form of
    /// [`ServiceTable::set_service_with_affinity`].
    pub fn set_frontend(
        &mut self,
        key: SvcKey,
        flags: u16,
        backends: &[Backend],
        affinity_timeout: Option<Duration>,
    ) -> Result<()> {
        let affinity = affinity_secs(affinity_timeout);
        let mut wanted: Vec<Backend> = Vec::with_capacity(backends.len());
        for b in backends {
            if !wanted.contains(b) {
                wanted.push(*b);
            }
        }
        let count = u16::try_from(wanted.len()).map_err(|_| Error::TooManyBackends {
            count: wanted.len(),
        })?;

        let (id, old, old_affinity, old_flags, dirty, high_water) = match self.state.get(&key) {
            Some(s) => (
                s.id,
                s.slots.clone(),
                s.affinity_timeout,
                s.flags,
                s.dirty,
                s.high_water,
            ),
            None => (self.alloc_id(), Vec::new(), 0, 0, false, 0),
        };
        let is_new = !self.state.contains_key(&key);
        let layout = plan_slots(&old, &wanted);
        let new_len = layout.len() as u32;
        let old_len = old.len() as u32;
        // Mark dirty before writing; cleared only when every write went through.
        self.state.insert(
            key,
            ServiceState {
                id,
                slots: layout.clone(),
                affinity_timeout: affinity,
                flags,
                dirty: true,
                high_water: high_water.max(new_len).max(old_len),
            },
        );

        let value = SvcValue {
            count,
            flags,
            service_id: id,
            affinity_timeout: affinity,
        };
        // 1. slots below the new count that changed (or all, when recovering).
        for (slot, be) in layout.iter().enumerate() {
            if dirty || old.get(slot) != Some(be) {
                let k = BackendKey {
                    service_id: id,
                    slot: slot as u32,
                };
                self.backends.insert(k, BackendValue::new(be.0, be.1), 0)?;
            }
        }
        // 2. publish the count (new service: this makes it visible).
        if is_new || dirty || new_len != old_len || affinity != old_affinity || flags != old_flags {
            self.services.insert(key, value, 0)?;
        }
        // 3. drop slots past the count.
        let delete_to = if dirty {
            high_water.max(old_len)
        } else {
            old_len
        };
        for slot in new_len..delete_to {
            remove_ignoring_missing(
                &mut self.backends,
                &BackendKey {
                    service_id: id,
                    slot,
                },
            )?;
        }
        if let Some(s) = self.state.get_mut(&key) {
            s.dirty = false;
            s.high_water = new_len;
        }
        Ok(())
    }

    /// Creates many new `services` entries at once (a full sync into empty maps): every
    /// backend slot in one batch write, then every entry in another, so no entry is visible
    /// before its slots. Entries that exist already go through [`ServiceTable::set_frontend`].
    pub fn add_frontends(&mut self, items: &[NewFrontend<'_>]) -> Result<()> {
        let mut slot_keys = Vec::new();
        let mut slot_values = Vec::new();
        let mut svc_keys = Vec::new();
        let mut svc_values = Vec::new();
        for item in items {
            if self.state.contains_key(&item.key) {
                self.set_frontend(item.key, item.flags, item.backends, item.affinity)?;
                continue;
            }
            let mut slots: Vec<Backend> = Vec::with_capacity(item.backends.len());
            for b in item.backends {
                if !slots.contains(b) {
                    slots.push(*b);
                }
            }
            let count = u16::try_from(slots.len())
                .map_err(|_| Error::TooManyBackends { count: slots.len() })?;
            let id = self.alloc_id();
            for (slot, b) in slots.iter().enumerate() {
                slot_keys.push(BackendKey {
                    service_id: id,
                    slot: slot as u32,
                });
                slot_values.push(BackendValue::new(b.0, b.1));
            }
            let affinity = affinity_secs(item.affinity);
            svc_keys.push(item.key);
            svc_values.push(SvcValue {
                count,
                flags: item.flags,
                service_id: id,
                affinity_timeout: affinity,
            });
            // Dirty until both batches went through: a failure leaves slots to clean up.
            self.state.insert(
                item.key,
                ServiceState {
                    id,
                    high_water: slots.len() as u32,
                    slots,
                    affinity_timeout: affinity,
                    flags: item.flags,
                    dirty: true,
                },
            );
        }
        batch_write(&self.batch_fds.1, names::BACKENDS, &slot_keys, &slot_values)?;
        batch_write(&self.batch_fds.0, names::SERVICES, &svc_keys, &svc_values)?;
        for key in &svc_keys {
            if let Some(s) = self.state.get_mut(key) {
                s.dirty = false;
            }
        }
        Ok(())
    }

    /// Removes the service; returns whether it existed.
    pub fn remove_service(&mut self, vip: Ipv4Addr, port: u16, proto: Proto) -> Result<bool> {
        self.remove_frontend(SvcKey::new(vip, port, proto))
    }

    /// Removes the `services` entry `key` (any scope) and its backends; returns whether it
    /// existed.
    pub fn remove_frontend(&mut self, key: SvcKey) -> Result<bool> {
        let Some(state) = self.state.get_mut(&key) else {
            return Ok(false);
        };
        state.dirty = true;
        let (id, high_water) = (state.id, state.high_water.max(state.slots.len() as u32));
        remove_ignoring_missing(&mut self.services, &key)?;
        for slot in 0..high_water {
            remove_ignoring_missing(
                &mut self.backends,
                &BackendKey {
                    service_id: id,
                    slot,
                },
            )?;
        }
        self.state.remove(&key);
        self.free_ids.push(id);
        Ok(true)
    }

    /// The backends of a service in slot order, as userspace last wrote them.
    pub fn backends_of(&self, vip: Ipv4Addr, port: u16, proto: Proto) -> Option<&[Backend]> {
        self.frontend(&SvcKey::new(vip, port, proto))
            .map(|f| f.backends)
    }

    /// The `sessionAffinity: ClientIP` timeout of a service as last written (`None`: none).
    pub fn affinity_of(&self, vip: Ipv4Addr, port: u16, proto: Proto) -> Option<Duration> {
        self.frontend(&SvcKey::new(vip, port, proto))
            .and_then(|f| f.affinity)
    }

    /// What userspace last wrote for the entry `key`.
    pub fn frontend(&self, key: &SvcKey) -> Option<Frontend<'_>> {
        self.state.get(key).map(|s| Frontend {
            backends: &s.slots,
            affinity: (s.affinity_timeout > 0)
                .then(|| Duration::from_secs(s.affinity_timeout.into())),
            flags: s.flags,
        })
    }

    /// The id a service's backends and client affinities are keyed by.
    pub fn service_id(&self, vip: Ipv4Addr, port: u16, proto: Proto) -> Option<u32> {
        self.state.get(&SvcKey::new(vip, port, proto)).map(|s| s.id)
    }

    /// Every `services` entry userspace knows is in the maps (after [`ServiceTable::recover`],
    /// what an earlier process left); lets a caller find stale entries.
    pub fn services(&self) -> Vec<SvcKey> {
        self.state.keys().copied().collect()
    }

    /// Number of `services` entries.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Number of backend slots userspace wrote (the `backends` map's entries when in sync).
    pub fn slot_count(&self) -> usize {
        self.state.values().map(|s| s.slots.len()).sum()
    }

    /// Whether there is no `services` entry.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Reads a service's entry back from the kernel map (for tests and debugging).
    pub fn read_service(&self, vip: Ipv4Addr, port: u16, proto: Proto) -> Result<Option<SvcValue>> {
        match self.services.get(&SvcKey::new(vip, port, proto), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Number of entries in the kernel's `backends` map (walks the map; for tests).
    pub fn backend_entries(&self) -> usize {
        self.backends.keys().filter(|k| k.is_ok()).count()
    }

    fn alloc_id(&mut self) -> u32 {
        if let Some(id) = self.free_ids.pop() {
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// [`crate::batch::update`] of the map `name` behind `fd`, with the error naming the map.
fn batch_write<K: aya::Pod, V: aya::Pod>(
    fd: &OwnedFd,
    name: &'static str,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    crate::batch::update(fd.as_fd(), keys, values).map_err(|source| Error::Batch {
        map: name,
        count: keys.len(),
        source,
    })
}

/// A `sessionAffinity: ClientIP` timeout as the map stores it: whole seconds, at least 1;
/// 0 for none.
fn affinity_secs(timeout: Option<Duration>) -> u32 {
    timeout.map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX).max(1))
}

fn remove_ignoring_missing<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
) -> Result<()> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The new slot layout for a service going from `old` to `wanted` (both duplicate-free).
///
/// Backends present in both keep their slot; new ones fill the holes left by removed ones, then
/// append; if the service shrank, the last slots move into the remaining holes. The result holds
/// exactly the backends of `wanted`.
pub fn plan_slots(old: &[Backend], wanted: &[Backend]) -> Vec<Backend> {
    let mut slots: Vec<Option<Backend>> = old
        .iter()
        .map(|b| wanted.contains(b).then_some(*b))
        .collect();
    let mut fresh = wanted.iter().filter(|b| !old.contains(b)).copied();
    for slot in slots.iter_mut() {
        if slot.is_none() {
            match fresh.next() {
                Some(b) => *slot = Some(b),
                None => break,
            }
        }
    }
    slots.extend(fresh.map(Some));
    // Compact: move the last occupied slots into the holes.
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            while slots.last().is_some_and(Option::is_none) {
                slots.pop();
            }
            if i < slots.len() {
                slots.swap_remove(i);
            }
        }
        i += 1;
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: u8) -> Backend {
        (Ipv4Addr::new(10, 0, 0, n), 8080)
    }

    #[test]
    fn plan_keeps_survivors_in_place() {
        assert_eq!(plan_slots(&[], &[b(1), b(2)]), vec![b(1), b(2)]);
        // b(2) removed, b(4) added: b(4) takes b(2)'s slot.
        assert_eq!(
            plan_slots(&[b(1), b(2), b(3)], &[b(1), b(3), b(4)]),
            vec![b(1), b(4), b(3)]
        );
        // shrink: the last backend moves into the hole.
        assert_eq!(
            plan_slots(&[b(1), b(2), b(3), b(4)], &[b(1), b(4)]),
            vec![b(1), b(4)]
        );
        assert_eq!(
            plan_slots(&[b(1), b(2), b(3), b(4)], &[b(3), b(4)]),
            vec![b(4), b(3)]
        );
        assert_eq!(plan_slots(&[b(1), b(2)], &[]), Vec::<Backend>::new());
        // grow
        assert_eq!(
            plan_slots(&[b(1)], &[b(2), b(1), b(3)]),
            vec![b(1), b(2), b(3)]
        );
    }

    #[test]
    fn plan_always_yields_exactly_the_wanted_set() {
        let all: Vec<Backend> = (1..=6).map(b).collect();
        for old_mask in 0u32..64 {
            for new_mask in 0u32..64 {
                let pick = |m: u32| -> Vec<Backend> {
                    all.iter()
                        .enumerate()
                        .filter(|(i, _)| m & (1 << i) != 0)
                        .map(|(_, x)| *x)
                        .collect()
                };
                let (old, new) = (pick(old_mask), pick(new_mask));
                let got = plan_slots(&old, &new);
                let mut sorted = got.clone();
                sorted.sort();
                assert_eq!(sorted, new, "old {old:?} new {new:?} got {got:?}");
                // survivors below the new length stay where they were
                for (i, x) in old.iter().enumerate() {
                    if i < got.len() && new.contains(x) {
                        assert_eq!(got[i], *x, "old {old:?} new {new:?} got {got:?}");
                    }
                }
            }
        }
    }
}
