//! Retry decisions for a leg: capped exponential backoff with jitter (from
//! `backon`), retry-after, the turn's deadline and the error class.
//!
//! # Invariants
//! 1. A non-retryable class ([`ErrorClass::retryable`]) is never retried.
//! 2. The delay before a retry is at least the server's retry-after and at
//!    most `max_delay` (unless retry-after itself is longer).
//! 3. No retry is planned whose attempt would start at or after the turn's
//!    deadline (`now + delay + min_attempt >= deadline` gives up).
//! 4. A rate-limited request is retried on the same model only when its
//!    retry-after is at most `max_rate_limit_wait`; otherwise the router
//!    should go elsewhere while the model cools down.
//! 5. Cancelled requests never reach this module: a cancel is not an error.

use crate::llm::{ErrorClass, LlmError};
use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// How a leg retries (milliseconds in config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts per model, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_delay_ms: u64,
    /// Cap on any backoff delay.
    pub max_delay_ms: u64,
    /// Growth per retry.
    pub factor: f32,
    /// Add up to 100% random jitter to each backoff delay (still capped).
    pub jitter: bool,
    /// Seed for the jitter (tests); random when absent.
    pub jitter_seed: Option<u64>,
    /// Longest retry-after worth waiting for on the same model (invariant 4).
    pub max_rate_limit_wait_ms: u64,
    /// Least time an attempt needs before the deadline to be worth starting.
    pub min_attempt_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay_ms: 200,
            max_delay_ms: 2_000,
            factor: 2.0,
            jitter: true,
            jitter_seed: None,
            max_rate_limit_wait_ms: 2_000,
            min_attempt_ms: 300,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then try the same model again.
    RetryAfter(Duration),
    /// Stop retrying this model, for this reason.
    GiveUp(GiveUp),
}

/// Why no retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    NotRetryable,
    AttemptsExhausted,
    PastDeadline,
    RateLimitTooLong,
}

/// The backoff state of one leg.
pub struct Backoff {
    policy: RetryPolicy,
    delays: backon::ExponentialBackoff,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("policy", &self.policy)
            .finish()
    }
}

impl RetryPolicy {
    /// Fresh backoff state for one leg.
    pub fn backoff(&self) -> Backoff {
        let mut b = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.initial_delay_ms))
            .with_max_delay(Duration::from_millis(self.max_delay_ms))
            .with_factor(self.factor.max(1.0))
            .without_max_times();
        if self.jitter {
            b = b.with_jitter();
            if let Some(seed) = self.jitter_seed {
                b = b.with_jitter_seed(seed);
            }
        }
        Backoff {
            policy: self.clone(),
            delays: b.build(),
        }
    }
}

impl Backoff {
    /// Decides after attempt number `attempt` (1-based) failed with `error`.
    pub fn decide(
        &mut self,
        error: &LlmError,
        attempt: u32,
        now: Instant,
        deadline: Instant,
    ) -> RetryDecision {
        let p = &self.policy;
        // Holds invariant 1.
        if !error.class.retryable() {
            return RetryDecision::GiveUp(GiveUp::NotRetryable);
        }
        if attempt >= p.max_attempts {
            return RetryDecision::GiveUp(GiveUp::AttemptsExhausted);
        }
        let retry_after = error.retry_after.unwrap_or_default();
        // Holds invariant 4.
        if error.class == ErrorClass::RateLimited
            && retry_after > Duration::from_millis(p.max_rate_limit_wait_ms)
        {
            return RetryDecision::GiveUp(GiveUp::RateLimitTooLong);
        }
        let cap = Duration::from_millis(p.max_delay_ms);
        // backon computes in f32; whole milliseconds are precise enough.
        let backoff = self.delays.next().unwrap_or(cap).min(cap);
        let backoff = Duration::from_millis((backoff.as_secs_f64() * 1000.0).round() as u64);
        // Holds invariant 2.
        let delay = backoff.max(retry_after);
        // Holds invariant 3.
        if now + delay + Duration::from_millis(p.min_attempt_ms) >= deadline {
            return RetryDecision::GiveUp(GiveUp::PastDeadline);
        }
        RetryDecision::RetryAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(class: ErrorClass, retry_after: Option<u64>) -> LlmError {
        LlmError {
            retry_after: retry_after.map(Duration::from_millis),
            ..LlmError::new(class, "p", "x")
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay_ms: 100,
            max_delay_ms: 400,
            jitter: false,
            min_attempt_ms: 0,
            ..RetryPolicy::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_exponentially_and_is_capped() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut b = policy().backoff();
        let e = err(ErrorClass::Server, None);
        let delays: Vec<_> = (1..5).map(|a| b.decide(&e, a, now, far)).collect();
        let ms = |d| RetryDecision::RetryAfter(Duration::from_millis(d));
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(400)]);
        assert_eq!(
            b.decide(&e, 5, now, far),
            RetryDecision::GiveUp(GiveUp::AttemptsExhausted)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_the_delay_and_the_cap() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut p = policy();
        p.jitter = true;
        p.jitter_seed = Some(7);
        let mut b = p.backoff();
        let e = err(ErrorClass::Network, None);
        for (attempt, base) in [(1, 100), (2, 200), (3, 400)] {
            match b.decide(&e, attempt, now, far) {
                RetryDecision::RetryAfter(d) => {
                    assert!(d >= Duration::from_millis(base.min(400)), "{d:?}");
                    assert!(d <= Duration::from_millis(400), "{d:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_and_long_rate_limits_go_elsewhere() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut b = policy().backoff();
        assert_eq!(
            b.decide(&err(ErrorClass::RateLimited, Some(1500)), 1, now, far),
            RetryDecision::RetryAfter(Duration::from_millis(1500))
        );
        assert_eq!(
            b.decide(&err(ErrorClass::RateLimited, Some(5000)), 2, now, far),
            RetryDecision::GiveUp(GiveUp::RateLimitTooLong)
        );
        assert_eq!(
            b.decide(&err(ErrorClass::Server, Some(900)), 2, now, far),
            RetryDecision::RetryAfter(Duration::from_millis(900))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_past_the_deadline_nor_of_a_client_error() {
        let now = Instant::now();
        let mut b = policy().backoff();
        assert_eq!(
            b.decide(
                &err(ErrorClass::Server, None),
                1,
                now,
                now + Duration::from_millis(100)
            ),
            RetryDecision::GiveUp(GiveUp::PastDeadline)
        );
        assert_eq!(
            b.decide(
                &err(ErrorClass::Client, None),
                1,
                now,
                now + Duration::from_secs(9)
            ),
            RetryDecision::GiveUp(GiveUp::NotRetryable)
        );
    }
}
