//! The routing policy: the knobs every stage's router reads (the `[router]`
//! table of the config file).
//!
//! # Invariants
//! 1. Every knob has a default that keeps a single `embedded` candidate
//!    exactly as without a router: one leg, no hedge, no probe.
//! 2. Unknown fields are an error naming the field (`deny_unknown_fields`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Routing knobs (milliseconds where named `_ms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutePolicy {
    /// A candidate earlier in the list is kept (or taken back) while its
    /// expected latency is within this of the fastest candidate's.
    pub prefer_within_ms: u64,
    /// Hysteresis: leaving the incumbent for latency needs it to be slower
    /// than the acceptable band by this much more …
    pub hysteresis_ms: u64,
    /// … or by this share of the fastest expected latency, whichever is more.
    pub hysteresis_ratio: f64,
    /// A latency-driven switch needs the incumbent to have led this many
    /// turns (a health-driven switch is immediate).
    pub min_dwell_turns: u32,
    /// Share of turns that try a random other healthy candidate first.
    pub exploration_rate: f64,
    /// Score added per consecutive failure (ms).
    pub failure_penalty_ms: u64,
    /// Start an untried or recovering candidate beside the chosen one, so
    /// it is measured within the first turns (a probe).
    pub probe: bool,
    /// Hedge: the next candidate starts when the chosen one has produced no
    /// first result by its rolling p90 (+20 %, so a model answering at its
    /// usual time is not hedged), bounded by these.
    pub hedge: bool,
    pub hedge_min_ms: u64,
    pub hedge_max_ms: u64,
    /// RNG seed for exploration; random when absent.
    pub seed: Option<u64>,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            prefer_within_ms: 250,
            hysteresis_ms: 50,
            hysteresis_ratio: 0.2,
            min_dwell_turns: 1,
            exploration_rate: 0.05,
            failure_penalty_ms: 2_000,
            probe: true,
            hedge: true,
            hedge_min_ms: 300,
            hedge_max_ms: 1_500,
            seed: None,
        }
    }
}

impl RoutePolicy {
    /// The hedge deadline for a candidate whose rolling p90 is `p90_ms`
    /// (none known: the upper bound).
    pub fn hedge_after(&self, p90_ms: Option<u64>) -> Duration {
        let lo = self.hedge_min_ms.min(self.hedge_max_ms);
        let ms = p90_ms
            .map_or(self.hedge_max_ms, |p| p.saturating_add(p / 5))
            .clamp(lo, self.hedge_max_ms);
        Duration::from_millis(ms)
    }
}
