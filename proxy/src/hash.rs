//! Short, stable names for kernel objects derived from service and endpoint identities.
//!
//! The names must be the same in every process and every release: after a restart the proxy
//! recognises its own chains by name and leaves unchanged ones alone. So no `DefaultHasher`
//! (unspecified across Rust releases) but FNV-1a, fixed forever, printed in base32 (RFC 4648
//! alphabet, upper case) to fit iptables' 28-character chain names.

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// 64-bit FNV-1a of `input`, as 13 base32 characters.
pub fn short_hash(input: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..13)
        .map(|i| {
            // 13 groups of 5 bits cover 65 bits: the first group holds the top 4 bits.
            let v = h >> (60 - 5 * i);
            char::from(ALPHABET[(v & 31) as usize])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_short() {
        // Pinned: changing these values renames every installed chain on upgrade.
        assert_eq!(short_hash(""), "MX4U44SCCEIZF");
        assert_eq!(
            short_hash("default/web:http/tcp"),
            short_hash("default/web:http/tcp")
        );
        assert_ne!(
            short_hash("default/web:http/tcp"),
            short_hash("default/web:http/udp")
        );
        assert_eq!(short_hash("x").len(), 13);
    }
}
