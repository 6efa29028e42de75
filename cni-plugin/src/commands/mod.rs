//! The CNI commands, one file each, sharing the IPAM choice in [`ipam`].

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod ipam;
pub mod status;
