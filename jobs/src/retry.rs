//! Backoff for every retry loop in Carga (a chunk of a partitioned read, a REST request, an
//! OAuth2 token request, a failed job's next attempt, a worker's queue faults), from `backon`'s
//! exponential schedule: each pause doubles from `first` up to `max`, and each is stretched by a
//! random part of itself (between 1x and 2x) so that many clients failing together do not come
//! back together.

use std::time::Duration;

pub use backon::Retryable;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The pauses of a schedule, in order (an iterator).
pub type Pauses = ExponentialBackoff;

/// A retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause before the first retry (before jitter).
    pub first: Duration,
    /// The longest pause before jitter.
    pub max: Duration,
    /// Retries at most; `None`: as many as the loop asks for.
    pub retries: Option<usize>,
}

impl Backoff {
    /// Unbounded retries, pauses from `first` doubling up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            retries: None,
        }
    }

    /// At most `attempts` tries in all (so `attempts - 1` retries).
    pub const fn attempts(mut self, attempts: u32) -> Self {
        self.retries = Some(attempts.saturating_sub(1) as usize);
        self
    }

    /// The builder `backon`'s `Retryable` takes.
    pub fn builder(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_jitter();
        match self.retries {
            Some(retries) => builder.with_max_times(retries),
            None => builder.without_max_times(),
        }
    }

    /// The pauses, in order; `None` once the retries are spent.
    pub fn pauses(&self) -> Pauses {
        self.builder().build()
    }

    /// The pause before retry `n` (1 for the first), for a loop whose count is kept elsewhere
    /// (a queued job carries its attempt number from worker to worker).
    pub fn pause(&self, n: u32) -> Duration {
        let n = n.clamp(1, 64) as usize;
        Self {
            retries: None,
            ..*self
        }
        .pauses()
        .nth(n - 1)
        .unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(pause: Duration, base: Duration) -> bool {
        pause >= base && pause <= base * 2
    }

    #[test]
    fn pauses_double_up_to_the_cap_with_jitter_and_stop_after_the_retries() {
        let backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(800)).attempts(6);
        let pauses: Vec<Duration> = backoff.pauses().collect();
        assert_eq!(pauses.len(), 5, "{pauses:?}");
        for (pause, base) in pauses.iter().zip([100, 200, 400, 800, 800]) {
            assert!(within(*pause, Duration::from_millis(base)), "{pauses:?}");
        }
        assert!(within(backoff.pause(1), Duration::from_millis(100)));
        assert!(within(backoff.pause(3), Duration::from_millis(400)));
        assert!(within(backoff.pause(40), Duration::from_millis(800)));
        let unbounded = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        assert_eq!(unbounded.pauses().take(100).count(), 100);
    }

    #[tokio::test]
    async fn retryable_stops_at_the_first_success_or_a_permanent_error() {
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(4)).attempts(5);
        let tries = std::sync::atomic::AtomicU32::new(0);
        let result: Result<u32, &str> = (|| async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n < 3 { Err("transient") } else { Ok(n) }
        })
        .retry(backoff.builder())
        .await;
        assert_eq!(result, Ok(3));
        tries.store(0, std::sync::atomic::Ordering::SeqCst);
        let result: Result<u32, &str> = (|| async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err("permanent")
        })
        .retry(backoff.builder())
        .when(|e| *e != "permanent")
        .await;
        assert_eq!(result, Err("permanent"));
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
