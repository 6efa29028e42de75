//! Set capacities. nf_tables sizes a set's hash table from the size the set is created with:
//! without one it starts at four buckets and rehashes a dozen times while a full sync inserts
//! 50,000 endpoints (measured: the kernel's share of a 10,000-Service sync 160–185 ms → 95–120
//! ms with sizes). The size is also the set's limit, so each set gets twice what it holds when
//! the table is rebuilt, and a sync that would pass a limit rebuilds the table with new ones.

use super::apply::Elements;
use std::collections::BTreeMap;

/// The smallest capacity given: small sets grow for a while without a rebuild, and their
/// bucket arrays stay at a few KiB.
pub const MIN: u32 = 1024;

/// Elements per set.
pub type Counts = BTreeMap<&'static str, usize>;

/// How many elements of each set `elements` holds.
pub fn count(elements: &Elements) -> Counts {
    let mut counts = Counts::new();
    for (set, _) in elements.keys() {
        *counts.entry(*set).or_default() += 1;
    }
    counts
}

/// The capacities the sets of a table were created with (empty: no table built yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacities(BTreeMap<&'static str, u32>);

impl Capacities {
    /// Room for twice `counts` in every set, at least [`MIN`].
    pub fn for_counts(counts: &Counts) -> Self {
        Self(
            counts
                .iter()
                .map(|(set, n)| {
                    (
                        *set,
                        u32::try_from(n.saturating_mul(2))
                            .unwrap_or(u32::MAX)
                            .max(MIN),
                    )
                })
                .collect(),
        )
    }

    /// The capacity to create `set` with.
    pub fn of(&self, set: &str) -> u32 {
        self.0.get(set).copied().unwrap_or(MIN)
    }

    /// Whether every set of `counts` fits its capacity.
    pub fn fits(&self, counts: &Counts) -> bool {
        counts.iter().all(|(set, n)| *n <= self.of(set) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_double_the_counts_and_say_when_a_set_outgrows_them() {
        let counts = Counts::from([("big", 50_000), ("small", 3)]);
        let c = Capacities::for_counts(&counts);
        assert_eq!(
            (c.of("big"), c.of("small"), c.of("unseen")),
            (100_000, MIN, MIN)
        );
        assert!(c.fits(&Counts::from([("big", 100_000), ("unseen", 1024)])));
        assert!(!c.fits(&Counts::from([("big", 100_001)])));
        assert!(!c.fits(&Counts::from([("unseen", 1025)])));
    }
}
