//! Reconnect delays: exponential backoff with full jitter.
//!
//! Attempt `n` (counting from 0) waits a uniformly random time in
//! `[0, min(cap, base * 2^n)]`. Many edge nodes that lose the cloud at the
//! same moment (a cloudcore restart) therefore spread their reconnects over
//! the whole window instead of arriving in waves.
//!
//! A cloud that stops closes its links asking its nodes to reconnect
//! within a window sized to its fleet ([`Backoff::link_ended`]): the
//! delays then stay spread over at least that window until the backoff is
//! reset, so a large fleet does not come back faster than the cloud can
//! take it.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    spread: Duration,
    rng: SmallRng,
}

/// The longest reconnect window a cloud can ask for; a longer one is cut
/// to it.
pub const MAX_RESTART_WINDOW: Duration = Duration::from_secs(3600);

impl Backoff {
    /// A backoff seeded from the operating system's random source.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self::with_rng(base, cap, rand::make_rng())
    }

    /// A backoff whose delays follow from `seed`, for tests.
    pub fn seeded(base: Duration, cap: Duration, seed: u64) -> Self {
        Self::with_rng(base, cap, SmallRng::seed_from_u64(seed))
    }

    fn with_rng(base: Duration, cap: Duration, rng: SmallRng) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
            spread: Duration::ZERO,
            rng,
        }
    }

    /// The upper bound of the next delay: `min(cap, base * 2^attempt)`,
    /// or the window a stopping cloud gave ([`link_ended`](Self::link_ended)) if larger.
    pub fn bound(&self) -> Duration {
        self.exponential_bound().max(self.spread)
    }

    /// `min(cap, base * 2^attempt)`.
    fn exponential_bound(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Takes the end of a link that was up for `uptime`: one up at least
    /// `stable_after` starts the backoff again, and a window the cloud
    /// gave as it stopped spreads the next delays over it.
    pub fn link_ended(
        &mut self,
        uptime: Duration,
        stable_after: Duration,
        restart: Option<Duration>,
    ) {
        if uptime >= stable_after {
            self.reset();
        }
        if let Some(window) = restart {
            self.spread_over(window);
        }
    }

    /// Spreads the next delays over at least `window` (at most
    /// [`MAX_RESTART_WINDOW`]) until [`reset`](Self::reset): the cloud
    /// stopped and asked its nodes to reconnect within it.
    fn spread_over(&mut self, window: Duration) {
        self.spread = window.min(MAX_RESTART_WINDOW);
    }

    /// The next delay, a random time between zero and [`bound`](Self::bound);
    /// every call doubles the bound until it reaches the cap.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.bound();
        // Nanosecond resolution; a cap above 584 years saturates.
        let bound_nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        let delay = Duration::from_nanos(self.rng.random_range(0..=bound_nanos));
        if self.exponential_bound() < self.cap {
            self.attempt = self.attempt.saturating_add(1);
        }
        delay
    }

    /// Starts again from `base` (after a connection that stayed up),
    /// forgetting any window.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.spread = Duration::ZERO;
    }

    /// How many delays were taken since the last reset, up to the one that
    /// reached the cap.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_up_to_the_cap() {
        let mut b = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(30), 7);
        let mut bounds = Vec::new();
        for _ in 0..8 {
            bounds.push(b.bound().as_secs());
            let bound = b.bound();
            assert!(b.next_delay() <= bound);
        }
        assert_eq!(bounds, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.bound(), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered_over_the_whole_window() {
        let mut b = Backoff::seeded(Duration::from_secs(8), Duration::from_secs(8), 1);
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(8)));
        // Full jitter: both halves of the window are used.
        assert!(delays.iter().any(|d| *d < Duration::from_secs(2)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(6)));
    }

    #[test]
    fn a_restart_window_spreads_the_delays_until_reset() {
        let mut b = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(30), 5);
        b.spread_over(Duration::from_secs(100));
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(100)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(60)));
        assert!(delays.iter().any(|d| *d < Duration::from_secs(40)));
        assert_eq!(b.bound(), Duration::from_secs(100));
        b.reset();
        assert_eq!(b.bound(), Duration::from_secs(1));
        // The backoff's own bounds still grew meanwhile.
        b.spread_over(Duration::from_secs(2));
        let _ = b.next_delay();
        let _ = b.next_delay();
        assert_eq!(b.bound(), Duration::from_secs(4));
        b.spread_over(Duration::from_secs(86_400));
        assert_eq!(b.bound(), MAX_RESTART_WINDOW);
    }

    #[test]
    fn a_link_that_stayed_up_resets_and_a_restart_window_spreads() {
        let (one, stable) = (Duration::from_secs(1), Duration::from_secs(30));
        let mut b = Backoff::seeded(one, Duration::from_secs(30), 9);
        let _ = b.next_delay();
        let _ = b.next_delay();
        b.link_ended(Duration::from_secs(5), stable, None);
        assert_eq!(
            b.bound(),
            Duration::from_secs(4),
            "a short link keeps the backoff"
        );
        b.link_ended(stable, stable, None);
        assert_eq!(b.bound(), one, "a stable link resets it");
        b.link_ended(stable, stable, Some(Duration::from_secs(100)));
        assert_eq!(
            b.bound(),
            Duration::from_secs(100),
            "the window outlasts the reset"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let mut a = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(30), 42);
        let mut b = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(30), 42);
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }

    #[test]
    fn huge_attempt_counts_saturate() {
        let mut b = Backoff::seeded(Duration::from_millis(1), Duration::MAX, 3);
        for _ in 0..100 {
            let _ = b.next_delay();
        }
        assert!(b.bound() >= Duration::from_millis(1));
    }
}
