//! Restart back-off as Kubernetes computes it: the base delay doubling with each consecutive
//! crash, capped, and forgotten once a container has run well for twice the cap.

use std::time::Duration;

/// The delay before restart number `crashes` (1 for the first crash): `base · 2^(crashes-1)`,
/// at most `max`.
pub fn delay(base: Duration, max: Duration, crashes: u32) -> Duration {
    let exp = crashes.saturating_sub(1).min(30);
    base.checked_mul(1u32 << exp).unwrap_or(max).min(max)
}

/// Whether a container that ran for `ran` resets the crash count (it ran more than twice the
/// longest back-off, so it was healthy for a while).
pub fn resets(ran: Duration, max: Duration) -> bool {
    ran > max.saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_base_up_to_the_cap() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(300));
        let got: Vec<u64> = (1..=7).map(|n| delay(b, m, n).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(delay(b, m, 0), b);
        assert_eq!(delay(b, m, u32::MAX), m);
    }

    #[test]
    fn long_runs_reset_the_crash_count() {
        let m = Duration::from_secs(300);
        assert!(!resets(Duration::from_secs(600), m));
        assert!(resets(Duration::from_secs(601), m));
    }
}
