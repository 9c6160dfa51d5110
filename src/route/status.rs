//! `colloquy status`: every stage's candidates from the telemetry store,
//! with first-result latency p50/p90, error rate, share of recent turns and
//! state.
//!
//! # Invariants
//! 1. Rows are grouped by stage (stt, llm, tts) and sorted by key within a
//!    stage, so the table reads the same for the same store.
//! 2. The share of a candidate is its served requests over every served
//!    request of its stage in the window; hedge losers and failures serve
//!    nothing.

use super::Stage;
use crate::llm::telemetry::TelemetryStore;
use serde::Serialize;

/// The state of a candidate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateState {
    Healthy,
    /// In a cooldown (failure or rate limit); the ms left.
    CoolingDown(u64),
    /// Its cooldown passed; the next request probes it.
    Recovering,
    /// No samples in the window.
    Untried,
}

impl std::fmt::Display for CandidateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CandidateState::Healthy => f.write_str("healthy"),
            CandidateState::CoolingDown(ms) => {
                write!(f, "cooling down ({:.1} s)", *ms as f64 / 1000.0)
            }
            CandidateState::Recovering => f.write_str("recovering"),
            CandidateState::Untried => f.write_str("untried"),
        }
    }
}

/// One row of the status table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CandidateStatus {
    pub stage: Stage,
    pub key: String,
    pub samples: usize,
    pub p50_ms: Option<u64>,
    pub p90_ms: Option<u64>,
    /// Failures over requests (hedge losers excluded).
    pub error_rate: Option<f64>,
    /// Share of the stage's recent served requests (invariant 2).
    pub share: Option<f64>,
    pub state: CandidateState,
}

/// The rows of every candidate in `store` (invariants 1 and 2).
pub fn rows(store: &TelemetryStore, now_ms: u64) -> Vec<CandidateStatus> {
    let summaries = store.summaries(now_ms);
    let mut served_per_stage = std::collections::BTreeMap::new();
    for s in &summaries {
        *served_per_stage
            .entry(Stage::of_key(&s.model))
            .or_insert(0usize) += s.served;
    }
    let mut out: Vec<CandidateStatus> = summaries
        .into_iter()
        .map(|s| {
            let stage = Stage::of_key(&s.model);
            let rec = store.models.get(&s.model);
            let (fails, asked) = rec.map_or((0, 0), |r| {
                let asked: Vec<_> = r
                    .samples
                    .iter()
                    .filter(|x| {
                        !x.lost && now_ms.saturating_sub(x.at_ms) <= store.window.max_age_ms
                    })
                    .collect();
                (asked.iter().filter(|x| !x.ok).count(), asked.len())
            });
            let total = served_per_stage.get(&stage).copied().unwrap_or(0);
            let state = match s.cooldown_remaining_ms {
                Some(ms) => CandidateState::CoolingDown(ms),
                None if s.samples == 0 => CandidateState::Untried,
                None if s.consecutive_failures > 0 => CandidateState::Recovering,
                None => CandidateState::Healthy,
            };
            CandidateStatus {
                stage,
                key: s.model.clone(),
                samples: s.samples,
                p50_ms: s.ttft_p50_ms,
                p90_ms: s.ttft_p90_ms,
                error_rate: (asked > 0).then(|| fails as f64 / asked as f64),
                share: (total > 0).then(|| s.served as f64 / total as f64),
                state,
            }
        })
        .collect();
    out.sort_by(|a, b| (a.stage, &a.key).cmp(&(b.stage, &b.key)));
    out
}

/// The status table as text.
pub fn render(store: &TelemetryStore, now_ms: u64) -> String {
    let rows = rows(store, now_ms);
    if rows.is_empty() {
        return "no model requests recorded yet\n".into();
    }
    let width = rows.iter().map(|r| r.key.len()).max().unwrap_or(5).max(5);
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}%", v * 100.0));
    let mut out = format!(
        "{:<5}  {:<width$}  {:>4}  {:>8}  {:>8}  {:>6}  {:>6}  STATE\n",
        "STAGE", "MODEL", "N", "p50", "p90", "ERRORS", "SHARE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<5}  {:<width$}  {:>4}  {:>8}  {:>8}  {:>6}  {:>6}  {}\n",
            r.stage.name(),
            r.key,
            r.samples,
            ms(r.p50_ms),
            ms(r.p90_ms),
            pct(r.error_rate),
            pct(r.share),
            r.state
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::telemetry::WindowConfig;
    use crate::llm::{ErrorClass, LlmError};
    use std::time::Duration;

    #[test]
    fn rows_show_latency_errors_share_and_state_per_stage() {
        let mut s = TelemetryStore::new(WindowConfig::default());
        let ms = Duration::from_millis;
        for t in [100, 200, 300] {
            s.record_served("h/fast", Some(ms(t)), Some(ms(t * 3)), None, 1_000);
        }
        s.record_served("embedded/smol", Some(ms(400)), None, None, 1_000);
        s.record_lost("embedded/smol", ms(150), true, 1_001);
        let mut e = LlmError::new(ErrorClass::RateLimited, "h", "quota");
        e.retry_after = Some(ms(4_000));
        s.record_failure("stt:h/whisper-1", &e, 1_000);
        s.record_served(
            "stt:embedded/whisper-tiny.en",
            Some(ms(700)),
            None,
            None,
            1_000,
        );
        // A configured candidate never asked: listed, `untried`.
        s.models.entry("tts:h/tts-1".into()).or_default();
        let r = rows(&s, 2_000);
        let keys: Vec<_> = r.iter().map(|r| (r.stage, r.key.as_str())).collect();
        assert_eq!(
            keys,
            [
                (Stage::Stt, "stt:embedded/whisper-tiny.en"),
                (Stage::Stt, "stt:h/whisper-1"),
                (Stage::Llm, "embedded/smol"),
                (Stage::Llm, "h/fast"),
                (Stage::Tts, "tts:h/tts-1"),
            ]
        );
        assert_eq!(r[4].state, CandidateState::Untried);
        assert_eq!((r[4].samples, r[4].p50_ms, r[4].share), (0, None, None));
        assert_eq!(r[3].p50_ms, Some(200));
        assert_eq!(r[3].p90_ms, Some(300));
        assert_eq!(r[3].share, Some(0.75), "3 of the 4 served LLM turns");
        assert_eq!(r[2].error_rate, Some(0.0), "the lost hedge is no error");
        assert_eq!(r[1].state, CandidateState::CoolingDown(3_000));
        assert_eq!(r[1].error_rate, Some(1.0));
        assert_eq!(r[0].state, CandidateState::Healthy);
        let text = render(&s, 2_000);
        assert!(text.starts_with("STAGE"), "{text}");
        assert!(text.contains("cooling down (3.0 s)"), "{text}");
        assert!(text.contains("75%"), "{text}");
        assert!(
            text.contains("tts:h/tts-1") && text.contains("untried"),
            "{text}"
        );
        // The cooldown passes: the failed model is recovering until a success.
        let later = rows(&s, 6_000);
        assert_eq!(later[1].state, CandidateState::Recovering);
    }
}
