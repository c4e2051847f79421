//! The token bucket that paces messages to the cloud (`messageQPS`,
//! `messageBurst`), as KubeEdge's EdgeHub paces them with client-go's
//! token-bucket rate limiter.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `burst` tokens at most, refilled at `qps` tokens a
/// second; every message takes one.
///
/// Reservations may drive the bucket below zero: the caller then waits
/// until the debt is repaid, so concurrent waiters queue in order.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; `None` means unlimited.
    rate: Option<f64>,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `qps` a second. A `qps`
    /// of zero or less disables throttling; a `burst` below one is read as
    /// one (no message could ever pass otherwise).
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: (qps > 0.0 && qps.is_finite()).then_some(qps),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token at `now` and returns how long the caller must wait
    /// before sending (zero when a token was available).
    pub fn reserve_at(&mut self, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&mut self) -> Duration {
        let wait = self.reserve_at(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_applies() {
        let mut bucket = TokenBucket::new(30.0, 60);
        let now = Instant::now();
        for _ in 0..60 {
            assert_eq!(bucket.reserve_at(now), Duration::ZERO);
        }
        let waits: Vec<Duration> = (0..3).map(|_| bucket.reserve_at(now)).collect();
        let expected = [1.0 / 30.0, 2.0 / 30.0, 3.0 / 30.0];
        for (wait, want) in waits.iter().zip(expected) {
            assert!((wait.as_secs_f64() - want).abs() < 1e-9, "{wait:?}");
        }
        // Two seconds later the debt is repaid and 57 tokens are back.
        let later = now + Duration::from_secs(2);
        for _ in 0..57 {
            assert_eq!(bucket.reserve_at(later), Duration::ZERO);
        }
        assert!(bucket.reserve_at(later) > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_qps_does_not_throttle() {
        let mut bucket = TokenBucket::new(0.0, 0);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(bucket.reserve_at(now), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_sleeps_for_the_wait() {
        let mut bucket = TokenBucket::new(10.0, 1);
        let start = Instant::now();
        bucket.acquire().await;
        bucket.acquire().await;
        bucket.acquire().await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(210), "{elapsed:?}");
    }
}
