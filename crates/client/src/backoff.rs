//! Exponential backoff with jitter between retries.

use std::time::Duration;

/// How long to wait before each retry: `initial · multiplier^attempt`, capped at `max`, of
/// which a random part (up to half) is taken off so that many clients that failed together do
/// not retry together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The cap on any single wait.
    pub max: Duration,
    /// Growth per attempt (at least 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    /// 25 ms, doubling, at most 1 s: an election in a default cluster takes 100–200 ms, so the
    /// first few retries land right after a new leader is up.
    fn default() -> Self {
        Self { initial: Duration::from_millis(25), max: Duration::from_secs(1), multiplier: 2.0 }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0 = the first retry), without jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The wait before retry number `attempt`, with jitter drawn from `random`: between half
    /// the ceiling and the ceiling.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        let jitter = if spread == 0 { 0 } else { random % (spread + 1) };
        half + Duration::from_nanos(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_geometrically_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            multiplier: 2.0,
        };
        let got: Vec<u128> = (0..6).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn a_multiplier_below_one_never_shrinks_the_wait() {
        let b = Backoff { multiplier: 0.5, ..Backoff::default() };
        assert_eq!(b.ceiling(5), b.initial);
    }

    #[test]
    fn jitter_stays_between_half_and_the_ceiling() {
        let b = Backoff::default();
        for attempt in 0..8 {
            let ceiling = b.ceiling(attempt);
            for random in [0, 1, 12_345, u64::MAX / 3, u64::MAX] {
                let d = b.delay(attempt, random);
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempt} {random}: {d:?}");
            }
        }
        assert_eq!(b.delay(0, 0), b.ceiling(0) / 2);
    }

    #[test]
    fn zero_initial_means_no_wait() {
        let b = Backoff { initial: Duration::ZERO, ..Backoff::default() };
        assert_eq!(b.delay(3, 99), Duration::ZERO);
    }
}
