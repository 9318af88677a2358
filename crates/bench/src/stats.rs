//! Small statistics helpers: latency percentiles, medians over rounds, and unit
//! conversions shared by the workloads.
//!
//! Everything here is pure arithmetic on already-collected samples; this module knows
//! nothing about HTTP, servers or how the samples were measured.

use std::time::Duration;

/// Bytes in one decimal megabyte, the unit of every `mb_per_s` figure.
pub const MB: f64 = 1_000_000.0;
/// Bytes in one gibibyte, the unit of every `cpu_s_per_gib` figure.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; `None` when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied()
}

/// Percentile in milliseconds, or NaN when there are no samples.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    percentile(samples, p).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Median of the values (mean of the middle two for an even count); NaN values are
/// ignored and `None` is returned when nothing is left.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v[mid - 1] + v[mid]) / 2.0)
    }
}

/// `amount / seconds`, or NaN when no time elapsed.
pub fn rate(amount: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        amount / secs
    } else {
        f64::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentile(&samples, 50.0), Some(ms(50)));
        assert_eq!(percentile(&samples, 99.0), Some(ms(99)));
        assert_eq!(percentile(&samples, 100.0), Some(ms(100)));
        assert_eq!(percentile(&samples, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
    }

    #[test]
    fn median_handles_odd_even_and_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn rate_of_zero_time_is_nan() {
        assert!(rate(1.0, Duration::ZERO).is_nan());
        assert_eq!(rate(10.0, Duration::from_secs(2)), 5.0);
    }
}
