//! Properties of the routing core over random latency and error sequences:
//! the chosen candidate is never one in cooldown while another is out of
//! cooldown, a probe is never in cooldown nor the chosen one, and the number
//! of switches is bounded by turns / min_dwell_turns + the failures of the
//! incumbent (+1 for the first choice's settling).

use colloquy::llm::telemetry::{TelemetryStore, WindowConfig};
use colloquy::llm::{ErrorClass, LlmError};
use colloquy::route::{Observed, Planner, RoutePolicy};
use proptest::prelude::*;
use std::time::Duration;

#[derive(Clone, Debug)]
struct TurnInput {
    /// First-result latency of each candidate this turn.
    latency: Vec<u64>,
    /// Whether each candidate fails this turn (and how: 0 = 429).
    fails: Vec<Option<u8>>,
    /// Time since the previous turn.
    gap_ms: u64,
}

fn turn_input(n: usize) -> impl Strategy<Value = TurnInput> {
    (
        prop::collection::vec(30u64..2_500, n),
        prop::collection::vec(prop::option::weighted(0.2, 0u8..3), n),
        0u64..20_000,
    )
        .prop_map(|(latency, fails, gap_ms)| TurnInput {
            latency,
            fails,
            gap_ms,
        })
}

fn scenario() -> impl Strategy<Value = (usize, u32, Vec<TurnInput>)> {
    (2usize..=5, 1u32..=4).prop_flat_map(|(n, dwell)| {
        (
            Just(n),
            Just(dwell),
            prop::collection::vec(turn_input(n), 1..120),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_router_never_picks_a_cooling_model_and_its_switches_are_bounded(
        (n, dwell, turns) in scenario()
    ) {
        let planner = Planner::new(RoutePolicy {
            min_dwell_turns: dwell,
            exploration_rate: 0.0,
            seed: Some(3),
            ..RoutePolicy::default()
        });
        let mut store = TelemetryStore::new(WindowConfig::default());
        let keys: Vec<String> = (0..n).map(|i| format!("p/m{i}")).collect();
        let mut now = 1_000_000u64;
        let mut incumbent_failures = 0u64;
        for t in &turns {
            now += t.gap_ms;
            let obs: Vec<Observed> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| Observed::from_summary(&store.summary(k, now), i + 1 == n, 0))
                .collect();
            let plan = planner.plan(&obs);
            prop_assert_eq!(plan.order.len(), n);
            let first = plan.order[0];
            let any_healthy = obs.iter().any(|o| o.cooling_ms.is_none());
            if any_healthy {
                prop_assert!(obs[first].cooling_ms.is_none(), "picked a cooling model: {:?} {:?}", plan, obs);
            }
            if let Some(p) = plan.probe {
                prop_assert!(p != first && obs[p].cooling_ms.is_none(), "{:?}", plan);
            }
            match t.fails[first] {
                Some(kind) => {
                    let mut e = LlmError::new(
                        if kind == 0 { ErrorClass::RateLimited } else { ErrorClass::Server },
                        "p",
                        "scripted",
                    );
                    e.retry_after = (kind == 0).then(|| Duration::from_millis(t.latency[first] * 4));
                    store.record_failure(&keys[first], &e, now);
                    if planner.incumbent() == Some(first) {
                        incumbent_failures += 1;
                    }
                }
                None => store.record_served(
                    &keys[first],
                    Some(Duration::from_millis(t.latency[first])),
                    None,
                    None,
                    now,
                ),
            }
            if let Some(p) = plan.probe {
                match t.fails[p] {
                    Some(_) => store.record_failure(&keys[p], &LlmError::new(ErrorClass::Server, "p", "x"), now),
                    None => store.record_lost(&keys[p], Duration::from_millis(t.latency[p]), false, now),
                }
            }
        }
        let bound = turns.len() as u64 / dwell as u64 + incumbent_failures + 1;
        prop_assert!(
            planner.switches() <= bound,
            "{} switches > {} (turns {}, dwell {}, incumbent failures {})",
            planner.switches(), bound, turns.len(), dwell, incumbent_failures
        );
    }
}
