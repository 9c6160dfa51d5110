//! The planner: from what is known of each candidate now ([`Observed`]),
//! the order a turn tries them in, which untried or recovering candidate is
//! probed beside the chosen one, and when the hedge starts. Pure decisions
//! plus a little state (the incumbent, how long it has led, the RNG), so the
//! same code plans every stage.
//!
//! # Invariants
//! 1. A candidate in cooldown is never first while any candidate is out of
//!    cooldown; candidates in cooldown come last, soonest-recovering first.
//! 2. Score = expected first-result latency + (for a local model) its queue
//!    (`in_flight × service time`) + `failure_penalty_ms` per consecutive
//!    failure. A candidate with no latency known ranks by the configured
//!    order, which is the preference — unless it is failing: a recovering
//!    candidate returns to the first place only after a probe succeeded.
//! 3. Preference: the first candidate (in configured order) whose score is
//!    within `prefer_within_ms` of the best is the target. The incumbent
//!    keeps the first place while within that band plus the hysteresis; a
//!    latency- or preference-driven switch also needs the incumbent to have
//!    led `min_dwell_turns` turns. Only a cooldown of the incumbent switches
//!    at once, so switches ≤ turns / min_dwell_turns + incumbent failures.
//! 4. An exploration pick or a probe never changes the incumbent; both draw
//!    only from candidates out of cooldown; exploration draws from a seeded
//!    RNG, so plans are reproducible under a fixed seed.

use super::policy::RoutePolicy;
use crate::llm::telemetry::ModelSummary;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;
use std::time::Duration;

/// What the planner knows about one candidate now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Median of recent first-result latencies.
    pub expected_ms: Option<u64>,
    /// Rolling p90 of first-result latency (the hedge deadline).
    pub p90_ms: Option<u64>,
    /// Median whole-request time (a local model's service time).
    pub service_ms: Option<u64>,
    /// Cooldown left, if cooling down.
    pub cooling_ms: Option<u64>,
    pub consecutive_failures: u32,
    /// Samples in the window (0: untried).
    pub samples: usize,
    /// The failure streak outlived its cooldown: the next request probes it.
    pub recovering: bool,
    /// A model on this machine (its requests queue behind each other).
    pub local: bool,
    /// Requests running on it now (every session).
    pub in_flight: usize,
}

impl Observed {
    /// From the store's summary of the candidate.
    pub fn from_summary(s: &ModelSummary, local: bool, in_flight: usize) -> Self {
        Self {
            expected_ms: s.expected_ttft_ms,
            p90_ms: s.ttft_p90_ms,
            service_ms: s.service_ms,
            cooling_ms: s.cooldown_remaining_ms,
            consecutive_failures: s.consecutive_failures,
            samples: s.samples,
            recovering: s.consecutive_failures > 0 && s.cooldown_remaining_ms.is_none(),
            local,
            in_flight,
        }
    }

    fn healthy(&self) -> bool {
        self.cooling_ms.is_none()
    }
}

/// The order a turn tries the candidates in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Candidate indices, first tried first.
    pub order: Vec<usize>,
    /// The first place is an exploration pick.
    pub explored: bool,
    /// How many of `order` are out of cooldown (they come first).
    pub healthy: usize,
    /// A candidate started beside the first to measure it (cold start,
    /// recovery).
    pub probe: Option<usize>,
    /// When the next candidate starts if the first has no result yet.
    pub hedge_after: Option<Duration>,
}

#[derive(Debug)]
struct State {
    incumbent: Option<usize>,
    /// Turns the incumbent has led.
    led: u32,
    switches: u64,
    rng: StdRng,
}

/// Plans turns (see the module invariants).
#[derive(Debug)]
pub struct Planner {
    policy: RoutePolicy,
    state: Mutex<State>,
}

impl Planner {
    pub fn new(policy: RoutePolicy) -> Self {
        let rng = match policy.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Self {
            policy,
            state: Mutex::new(State {
                incumbent: None,
                led: 0,
                switches: 0,
                rng,
            }),
        }
    }

    pub fn policy(&self) -> &RoutePolicy {
        &self.policy
    }

    /// How often the first place changed (exploration picks excluded).
    pub fn switches(&self) -> u64 {
        self.lock().switches
    }

    /// The candidate that leads now.
    pub fn incumbent(&self) -> Option<usize> {
        self.lock().incumbent
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The score of invariant 2 (lower is better).
    pub fn score(&self, o: &Observed) -> Option<f64> {
        let expected = o.expected_ms? as f64;
        let queue = if o.local {
            o.in_flight as f64 * o.service_ms.map_or(expected, |s| s as f64)
        } else {
            0.0
        };
        let penalty = o.consecutive_failures as f64 * self.policy.failure_penalty_ms as f64;
        Some(expected + queue + penalty)
    }

    /// The plan for the next turn (all invariants).
    pub fn plan(&self, obs: &[Observed]) -> Plan {
        let n = obs.len();
        let healthy: Vec<bool> = obs.iter().map(Observed::healthy).collect();
        let scores: Vec<Option<f64>> = obs.iter().map(|o| self.score(o)).collect();
        let best = (0..n)
            .filter(|&i| healthy[i])
            .filter_map(|i| scores[i])
            .min_by(f64::total_cmp);
        let p = &self.policy;
        let within = |i: usize, slack: f64| {
            healthy[i]
                && match (scores[i], best) {
                    (Some(s), Some(b)) => s <= b + p.prefer_within_ms as f64 + slack,
                    // Unknown latency: the preference decides, unless the
                    // candidate is failing (it must pass a probe first).
                    _ => obs[i].consecutive_failures == 0,
                }
        };
        let hysteresis = best.map_or(p.hysteresis_ms as f64, |b| {
            (p.hysteresis_ms as f64).max(b * p.hysteresis_ratio)
        });
        // Invariant 3: the preferred acceptable candidate.
        let target = (0..n).find(|&i| within(i, 0.0));
        let mut st = self.lock();
        let dwelled = st.led >= p.min_dwell_turns;
        let first = match (st.incumbent, target) {
            (_, None) => None,
            (Some(inc), Some(t)) if inc < n && healthy[inc] => {
                let switch = if within(inc, hysteresis) {
                    t < inc && dwelled
                } else {
                    dwelled
                };
                Some(if switch { t } else { inc })
            }
            (_, Some(t)) => Some(t),
        };
        if let Some(f) = first {
            if st.incumbent != Some(f) {
                if st.incumbent.is_some() {
                    st.switches += 1;
                }
                st.incumbent = Some(f);
                st.led = 0;
            }
            st.led = st.led.saturating_add(1);
        }
        // The rest of the healthy ones: known scores fastest first, then
        // unknown in configured order (invariant 2).
        let mut rest: Vec<usize> = (0..n).filter(|&i| healthy[i] && Some(i) != first).collect();
        rest.sort_by(|&a, &b| match (scores[a], scores[b]) {
            (Some(x), Some(y)) => x.total_cmp(&y).then(a.cmp(&b)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.cmp(&b),
        });
        let mut order: Vec<usize> = first.into_iter().chain(rest).collect();
        // Invariant 4: exploration.
        let mut explored = false;
        if order.len() > 1 && p.exploration_rate > 0.0 {
            let roll: f64 = st.rng.gen();
            if roll < p.exploration_rate {
                let pick = 1 + st.rng.gen_range(0..order.len() - 1);
                let chosen = order.remove(pick);
                order.insert(0, chosen);
                explored = true;
            }
        }
        drop(st);
        let healthy_count = order.len();
        // Invariant 4: one probe, out of cooldown, never the first.
        let probe = p
            .probe
            .then(|| {
                order
                    .iter()
                    .skip(1)
                    .copied()
                    .find(|&i| obs[i].samples == 0 || obs[i].recovering)
            })
            .flatten();
        let hedge_after = (p.hedge && healthy_count > 1)
            .then(|| order.first().map(|&f| p.hedge_after(obs[f].p90_ms)))
            .flatten();
        // Invariant 1: cooling candidates last, soonest-recovering first.
        let mut cooling: Vec<usize> = (0..n).filter(|&i| !healthy[i]).collect();
        cooling.sort_by_key(|&i| (obs[i].cooling_ms.unwrap_or(0), i));
        order.extend(cooling);
        Plan {
            order,
            explored,
            healthy: healthy_count,
            probe,
            hedge_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(ms: u64) -> Observed {
        Observed {
            expected_ms: Some(ms),
            p90_ms: Some(ms),
            samples: 5,
            ..Observed::default()
        }
    }

    fn planner(prefer_within_ms: u64) -> Planner {
        Planner::new(RoutePolicy {
            prefer_within_ms,
            exploration_rate: 0.0,
            min_dwell_turns: 1,
            seed: Some(1),
            ..RoutePolicy::default()
        })
    }

    #[test]
    fn unknown_latency_keeps_the_configured_order_and_probes_the_untried() {
        let p = planner(250);
        let plan = p.plan(&[Observed::default(), Observed::default()]);
        assert_eq!(plan.order, [0, 1]);
        assert_eq!(plan.probe, Some(1));
        assert_eq!(plan.hedge_after, Some(Duration::from_millis(1_500)));
    }

    #[test]
    fn a_preferred_model_is_kept_while_within_the_band_and_left_beyond_it() {
        let p = planner(250);
        assert_eq!(p.plan(&[known(400), known(200)]).order[0], 0);
        assert_eq!(p.plan(&[known(1_200), known(200)]).order[0], 1);
        // Back within the band (minus nothing): the preferred one returns.
        assert_eq!(p.plan(&[known(300), known(200)]).order[0], 0);
        assert_eq!(p.switches(), 2);
    }

    #[test]
    fn a_local_model_with_a_queue_overflows_to_the_hosted_one() {
        let p = planner(0);
        let mut local = known(300);
        local.local = true;
        local.service_ms = Some(1_000);
        assert_eq!(p.plan(&[known(500), local.clone()]).order[0], 1);
        local.in_flight = 2;
        assert_eq!(
            p.score(&local),
            Some(2_300.0),
            "300 ms + 2 waiting × 1 s service"
        );
        assert_eq!(p.plan(&[known(500), local]).order[0], 0);
    }

    #[test]
    fn a_cooling_model_is_last_and_a_recovering_one_is_probed() {
        let p = planner(250);
        let mut cooling = known(100);
        cooling.cooling_ms = Some(3_000);
        let plan = p.plan(&[cooling, known(400)]);
        assert_eq!(plan.order, [1, 0]);
        assert_eq!(plan.healthy, 1);
        assert_eq!(plan.hedge_after, None, "nothing healthy to hedge with");
        let mut recovering = known(100);
        recovering.consecutive_failures = 1;
        recovering.recovering = true;
        let plan = p.plan(&[recovering, known(400)]);
        assert_eq!(plan.order[0], 1, "the failure penalty keeps it second");
        assert_eq!(plan.probe, Some(0), "but it is probed");
    }

    #[test]
    fn the_hedge_deadline_is_the_p90_within_its_bounds() {
        let policy = RoutePolicy::default();
        assert_eq!(policy.hedge_after(Some(100)), Duration::from_millis(300));
        assert_eq!(policy.hedge_after(Some(800)), Duration::from_millis(960));
        assert_eq!(
            policy.hedge_after(Some(9_000)),
            Duration::from_millis(1_500)
        );
    }
}
