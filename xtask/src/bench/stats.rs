//! Order statistics over latency samples, in milliseconds.

use std::time::Duration;

/// Median and 99th percentile of one set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median (mean of the two middle samples for an even count), in ms.
    pub median_ms: f64,
    /// The 99th percentile by nearest rank, in ms.
    pub p99_ms: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Some(Self {
            median_ms: median(&ms)?,
            p99_ms: percentile(&ms, 99.0)?,
        })
    }
}

/// The median of `values` (mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let v = sorted(values);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The `p`-th percentile of `values` by nearest rank: the smallest value with at least p% of
/// the samples at or below it.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let v = sorted(values);
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// `values` in ascending order (latencies are never NaN).
fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn p99_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v[..10], 99.0), Some(10.0));
        assert_eq!(percentile(&[5.0], 99.0), Some(5.0));
    }

    #[test]
    fn summary_is_in_milliseconds() {
        let s = Summary::of(&[Duration::from_millis(2), Duration::from_millis(4)]).unwrap();
        assert_eq!(s.median_ms, 3.0);
        assert_eq!(s.p99_ms, 4.0);
    }
}
