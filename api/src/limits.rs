//! How often one token may trigger runs: a token bucket per token (governor), in each API
//! process. A refused trigger gets 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};

pub struct TriggerLimit {
    limiter: RateLimiter<String, governor::state::keyed::HashMapStateStore<String>, DefaultClock>,
    clock: DefaultClock,
}

impl TriggerLimit {
    /// `per_minute` triggers per token per minute, with bursts of up to `burst`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute.max(1)).expect("at least one");
        let burst = NonZeroU32::new(burst.max(1)).expect("at least one");
        Self {
            limiter: RateLimiter::hashmap(Quota::per_minute(per_minute).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when `token` has used its triggers for now.
    pub fn check(&self, token: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&token.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

impl Default for TriggerLimit {
    /// 60 a minute, bursts of 10: far above what a person clicking or a callback needs.
    fn default() -> Self {
        Self::new(60, 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_wait_per_token() {
        let limit = TriggerLimit::new(60, 3);
        for _ in 0..3 {
            assert!(limit.check("a").is_ok());
        }
        let wait = limit.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check("b").is_ok(), "another token has its own bucket");
    }
}
