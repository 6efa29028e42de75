//! `BPF_MAP_UPDATE_BATCH`: many map elements in one `bpf()` call.
//!
//! A full sync of 10,000 Services writes about 60,000 elements; one syscall each costs more
//! than the kernel's work per element. aya 0.14 has no batch operations, so this issues the
//! command directly on the map's file descriptor (which the loader keeps a duplicate of).

// The raw `bpf()` syscall; this file and `maps.rs` are the crate's only unsafe code.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_MAP_UPDATE_BATCH` from `<linux/bpf.h>`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] -> values[i]` for every `i` into the map `fd` (flags `BPF_ANY`), in order.
/// On an error the elements before the failing one are written.
pub fn update<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0usize;
    while done < keys.len() {
        let count = u32::try_from(keys.len() - done).unwrap_or(u32::MAX);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr.batch` for the whole call; `keys` and `values`
        // point at `count` initialised `Pod` elements of the map's key and value sizes (the
        // caller's typed map guarantees the sizes), which the kernel only reads.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel reports how many it wrote; a short count without an error is progress.
        done += (attr.count as usize).max(1).min(keys.len() - done);
    }
    Ok(())
}
