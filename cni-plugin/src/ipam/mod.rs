//! IPAM: placeholder, being written.
