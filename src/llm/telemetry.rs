//! The telemetry store: per candidate of every stage (LLM keys
//! `provider/model`, STT and TTS keys `stt:…`/`tts:…`), a rolling window of
//! outcomes (success rate, first-result latency p50/p90/p95, service time,
//! tokens/s, last error), cooldowns, and failure streaks. Saved as JSON
//! periodically and on shutdown, loaded at start, merged across instances
//! as snapshots, printed by `colloquy status`.
//!
//! # Invariants
//! 1. A model's window never holds more than `max_samples` outcomes nor any
//!    older than `max_age_ms` (pruned on every write and read).
//! 2. A `rate_limited` outcome puts the model in cooldown until
//!    `now + retry_after` (or `default_cooldown_ms` without one); a model in
//!    cooldown is not healthy until the cooldown has passed.
//! 3. Time is unix milliseconds from a [`StoreClock`]: wall time anchored at
//!    start and advanced by the tokio clock, so saved times mean something
//!    after a restart and tests can move time with `tokio::time::advance`.
//! 4. Saving writes a temporary file and renames it, so a crash never leaves
//!    a half-written store.
//! 5. Every failure starts a cooldown: a rate limit for its `Retry-After`
//!    (or `default_cooldown_ms`), any other failure for `error_cooldown_ms`
//!    doubled per consecutive failure up to `max_cooldown_ms`. A success
//!    ends the failure streak.
//! 6. A hedge loser's sample never counts as served; when it was cancelled
//!    before its first result its latency is *censored* (a lower bound), and
//!    summaries read it as one: it never lowers a model's latency.
//! 7. Merging a snapshot keeps the newest samples of both sides (bounded as
//!    in invariant 1), never shortens a cooldown, and keeps a sample present
//!    on both sides once; merging the same snapshot twice changes nothing.

use crate::llm::{ErrorClass, LlmError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Bounds of the rolling window and the default cooldown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    pub max_samples: usize,
    pub max_age_ms: u64,
    /// Cooldown after a rate limit without retry-after.
    pub default_cooldown_ms: u64,
    /// Successful TTFTs the router's expected TTFT is the median of.
    pub recent_for_expected: usize,
    /// First cooldown after a failure other than a rate limit (invariant 5).
    pub error_cooldown_ms: u64,
    /// Longest cooldown a failure streak reaches.
    pub max_cooldown_ms: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            max_samples: 50,
            max_age_ms: 30 * 60 * 1000,
            default_cooldown_ms: 60_000,
            recent_for_expected: 5,
            error_cooldown_ms: 5_000,
            max_cooldown_ms: 5 * 60 * 1000,
        }
    }
}

/// Unix-millisecond time for the store (invariant 3).
#[derive(Clone, Copy, Debug)]
pub struct StoreClock {
    base_unix_ms: u64,
    base: tokio::time::Instant,
}

impl StoreClock {
    /// A clock reading wall time now and following the tokio clock after.
    pub fn new() -> Self {
        let base_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::at(base_unix_ms)
    }

    /// A clock that reads `unix_ms` now (tests).
    pub fn at(unix_ms: u64) -> Self {
        Self {
            base_unix_ms: unix_ms,
            base: tokio::time::Instant::now(),
        }
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
    }
}

impl Default for StoreClock {
    fn default() -> Self {
        Self::new()
    }
}

/// One request outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ErrorClass>,
    /// Start to end of the whole request (the reply streamed out), for a
    /// local model's load estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Lost a hedge: it did not serve its turn (invariant 6).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
    /// `ttft_ms` is a lower bound: cancelled before its first result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub censored: bool,
}

impl Sample {
    /// This request served its turn (a success that was not a hedge loser).
    pub fn served(&self) -> bool {
        self.ok && !self.lost
    }
}

/// The last error of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub at_ms: u64,
    pub class: ErrorClass,
    pub status: Option<u16>,
    pub message: String,
}

/// Everything known about one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub samples: VecDeque<Sample>,
    pub last_error: Option<LastError>,
    pub cooldown_until_ms: Option<u64>,
    /// Failures since the last success (invariant 5).
    #[serde(default)]
    pub consecutive_failures: u32,
}

/// A model's numbers at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub samples: usize,
    pub success_rate: Option<f64>,
    pub ttft_p50_ms: Option<u64>,
    pub ttft_p90_ms: Option<u64>,
    pub ttft_p95_ms: Option<u64>,
    /// Median of the most recent successful TTFTs (what the router uses).
    pub expected_ttft_ms: Option<u64>,
    /// Median whole-request time of recent served requests.
    pub service_ms: Option<u64>,
    /// Requests that served their turn (not failed, not hedge losers).
    pub served: usize,
    pub consecutive_failures: u32,
    pub tokens_per_s: Option<f64>,
    pub cooldown_remaining_ms: Option<u64>,
    pub last_error: Option<LastError>,
}

/// The per-model store (plain data; see [`Telemetry`] for the shared handle).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryStore {
    pub version: u32,
    pub models: BTreeMap<String, ModelRecord>,
    #[serde(skip)]
    pub window: WindowConfig,
}

/// Failing to load or save the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("telemetry store {path}: {source} (fix: check the path is writable/readable)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("telemetry store {path} is not valid JSON: {source} (fix: delete the file; it is rebuilt from new requests)")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// First-result latencies of `samples`, sorted, with censored ones read as
/// the lower bounds they are (invariant 6): a censored sample counts when it
/// is at least the median of the uncensored ones (it only says "slower than
/// this"); with no uncensored sample, the longest censored wait stands for
/// the model. So a loser cancelled early never makes its model look fast.
fn latencies(samples: &[&Sample]) -> Vec<u64> {
    let mut seen: Vec<u64> = samples
        .iter()
        .filter(|s| !s.censored)
        .filter_map(|s| s.ttft_ms)
        .collect();
    seen.sort_unstable();
    let censored = samples
        .iter()
        .filter(|s| s.censored)
        .filter_map(|s| s.ttft_ms);
    match percentile(&seen, 0.5) {
        Some(median) => seen.extend(censored.filter(|&c| c >= median)),
        None => seen.extend(censored.max()),
    }
    seen.sort_unstable();
    seen
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

impl TelemetryStore {
    /// An empty store with these window bounds.
    pub fn new(window: WindowConfig) -> Self {
        Self {
            version: 1,
            models: BTreeMap::new(),
            window,
        }
    }

    pub(crate) fn prune(window: &WindowConfig, rec: &mut ModelRecord, now_ms: u64) {
        // Holds invariant 1.
        while rec.samples.len() > window.max_samples {
            rec.samples.pop_front();
        }
        let oldest = now_ms.saturating_sub(window.max_age_ms);
        while rec.samples.front().is_some_and(|s| s.at_ms < oldest) {
            rec.samples.pop_front();
        }
        if rec.cooldown_until_ms.is_some_and(|t| t <= now_ms) {
            rec.cooldown_until_ms = None;
        }
    }

    fn record(&mut self, model: &str, sample: Sample, now_ms: u64) -> &mut ModelRecord {
        let window = self.window.clone();
        let rec = self.models.entry(model.to_string()).or_default();
        rec.samples.push_back(sample);
        Self::prune(&window, rec, now_ms);
        rec
    }

    /// Records a completed request.
    pub fn record_success(
        &mut self,
        model: &str,
        ttft: Option<Duration>,
        tokens_per_s: Option<f64>,
        now_ms: u64,
    ) {
        self.record_served(model, ttft, None, tokens_per_s, now_ms);
    }

    /// Records a request that served its turn: first-result latency and
    /// whole-request time (ends a failure streak, invariant 5).
    pub fn record_served(
        &mut self,
        model: &str,
        first: Option<Duration>,
        total: Option<Duration>,
        tokens_per_s: Option<f64>,
        now_ms: u64,
    ) {
        let sample = Sample {
            at_ms: now_ms,
            ok: true,
            ttft_ms: first.map(|d| d.as_millis() as u64),
            tokens_per_s,
            class: None,
            total_ms: total.map(|d| d.as_millis() as u64),
            lost: false,
            censored: false,
        };
        let rec = self.record(model, sample, now_ms);
        rec.consecutive_failures = 0;
        rec.cooldown_until_ms = None;
    }

    /// Records a hedge loser (invariant 6): its first result came after
    /// `latency`, or (`censored`) it had none when it was cancelled then.
    pub fn record_lost(&mut self, model: &str, latency: Duration, censored: bool, now_ms: u64) {
        let sample = Sample {
            at_ms: now_ms,
            ok: true,
            ttft_ms: Some(latency.as_millis() as u64),
            tokens_per_s: None,
            class: None,
            total_ms: None,
            lost: true,
            censored,
        };
        let rec = self.record(model, sample, now_ms);
        if !censored {
            // It answered: a probe that succeeded (invariant 5).
            rec.consecutive_failures = 0;
        }
    }

    /// Records a failed request; a rate limit starts a cooldown (invariant 2).
    pub fn record_failure(&mut self, model: &str, error: &LlmError, now_ms: u64) {
        let default_cooldown = self.window.default_cooldown_ms;
        let (error_cooldown, max_cooldown) =
            (self.window.error_cooldown_ms, self.window.max_cooldown_ms);
        let sample = Sample {
            at_ms: now_ms,
            ok: false,
            ttft_ms: None,
            tokens_per_s: None,
            class: Some(error.class),
            total_ms: None,
            lost: false,
            censored: false,
        };
        let rec = self.record(model, sample, now_ms);
        rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
        rec.last_error = Some(LastError {
            at_ms: now_ms,
            class: error.class,
            status: error.status,
            message: error.message.clone(),
        });
        // Holds invariant 5.
        let ttl = if error.class == ErrorClass::RateLimited {
            error
                .retry_after
                .map(|d| d.as_millis() as u64)
                .unwrap_or(default_cooldown)
        } else {
            let doublings = rec.consecutive_failures.saturating_sub(1).min(20);
            error_cooldown
                .saturating_mul(1u64 << doublings)
                .min(max_cooldown)
        };
        let until = now_ms + ttl;
        rec.cooldown_until_ms = Some(rec.cooldown_until_ms.map_or(until, |t| t.max(until)));
    }

    /// The model's failure streak has outlived its cooldown: its next
    /// request is a probe.
    pub fn recovering(&self, model: &str, now_ms: u64) -> bool {
        self.models.get(model).is_some_and(|r| {
            r.consecutive_failures > 0 && r.cooldown_until_ms.is_none_or(|t| t <= now_ms)
        })
    }

    /// Whether the model is in a rate-limit cooldown now.
    pub fn in_cooldown(&self, model: &str, now_ms: u64) -> bool {
        self.models
            .get(model)
            .and_then(|r| r.cooldown_until_ms)
            .is_some_and(|t| t > now_ms)
    }

    /// The model's numbers now (samples older than the window are ignored).
    pub fn summary(&self, model: &str, now_ms: u64) -> ModelSummary {
        let mut rec = self.models.get(model).cloned().unwrap_or_default();
        Self::prune(&self.window, &mut rec, now_ms);
        let n = rec.samples.len();
        let ok = rec.samples.iter().filter(|s| s.ok).count();
        let all: Vec<&Sample> = rec.samples.iter().collect();
        let ttfts = latencies(&all);
        let recent: Vec<&Sample> = all
            .iter()
            .rev()
            .filter(|s| s.ttft_ms.is_some())
            .take(self.window.recent_for_expected.max(1))
            .copied()
            .collect();
        let recent = latencies(&recent);
        let mut totals: Vec<u64> = rec
            .samples
            .iter()
            .rev()
            .filter_map(|s| s.total_ms)
            .take(self.window.recent_for_expected.max(1))
            .collect();
        totals.sort_unstable();
        let tps: Vec<f64> = rec.samples.iter().filter_map(|s| s.tokens_per_s).collect();
        ModelSummary {
            model: model.to_string(),
            samples: n,
            success_rate: (n > 0).then(|| ok as f64 / n as f64),
            ttft_p50_ms: percentile(&ttfts, 0.5),
            ttft_p90_ms: percentile(&ttfts, 0.9),
            ttft_p95_ms: percentile(&ttfts, 0.95),
            expected_ttft_ms: percentile(&recent, 0.5),
            service_ms: percentile(&totals, 0.5),
            served: rec.samples.iter().filter(|s| s.served()).count(),
            consecutive_failures: rec.consecutive_failures,
            tokens_per_s: (!tps.is_empty()).then(|| tps.iter().sum::<f64>() / tps.len() as f64),
            cooldown_remaining_ms: rec
                .cooldown_until_ms
                .filter(|&t| t > now_ms)
                .map(|t| t - now_ms),
            last_error: rec.last_error,
        }
    }

    /// Summaries of every known model, by name.
    pub fn summaries(&self, now_ms: u64) -> Vec<ModelSummary> {
        self.models
            .keys()
            .map(|m| self.summary(m, now_ms))
            .collect()
    }
}

/// The shared store handle the legs and the router use.
#[derive(Clone, Debug)]
pub struct Telemetry {
    inner: Arc<Mutex<TelemetryStore>>,
    clock: StoreClock,
}

impl Telemetry {
    /// A handle over `store`, timed by `clock`.
    pub fn new(store: TelemetryStore, clock: StoreClock) -> Self {
        Self {
            inner: Arc::new(Mutex::new(store)),
            clock,
        }
    }

    /// An empty store on the real clock.
    pub fn empty(window: WindowConfig) -> Self {
        Self::new(TelemetryStore::new(window), StoreClock::new())
    }

    /// Loads the store at `path` (missing file: empty store).
    pub fn load(path: &Path, window: WindowConfig) -> Result<Self, StoreError> {
        Ok(Self::new(
            TelemetryStore::load(path, window)?,
            StoreClock::new(),
        ))
    }

    /// Saves the store to `path`.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        self.lock().save(path)
    }

    /// Now, in unix milliseconds (invariant 3).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Locks the store (held only for a few field updates).
    pub fn lock(&self) -> MutexGuard<'_, TelemetryStore> {
        // A poisoned lock still holds consistent plain data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record_success(&self, model: &str, ttft: Option<Duration>, tokens_per_s: Option<f64>) {
        let now = self.now_ms();
        self.lock().record_success(model, ttft, tokens_per_s, now);
    }

    pub fn record_failure(&self, model: &str, error: &LlmError) {
        let now = self.now_ms();
        self.lock().record_failure(model, error, now);
    }

    /// See [`TelemetryStore::record_served`].
    pub fn record_served(
        &self,
        model: &str,
        first: Option<Duration>,
        total: Option<Duration>,
        tokens_per_s: Option<f64>,
    ) {
        let now = self.now_ms();
        self.lock()
            .record_served(model, first, total, tokens_per_s, now);
    }

    /// Lists `model` as a candidate (an empty record when it has none), so
    /// the saved store and `colloquy status` show a configured model that
    /// was never asked (`untried`).
    pub fn register(&self, model: &str) {
        self.lock().models.entry(model.to_string()).or_default();
    }

    /// See [`TelemetryStore::record_lost`].
    pub fn record_lost(&self, model: &str, latency: Duration, censored: bool) {
        let now = self.now_ms();
        self.lock().record_lost(model, latency, censored, now);
    }

    /// See [`TelemetryStore::to_snapshot`].
    pub fn to_snapshot(&self) -> String {
        self.lock().to_snapshot()
    }

    /// See [`TelemetryStore::merge_snapshot`].
    pub fn merge_snapshot(&self, json: &str) -> Result<usize, serde_json::Error> {
        let now = self.now_ms();
        self.lock().merge_snapshot(json, now)
    }

    pub fn summary(&self, model: &str) -> ModelSummary {
        let now = self.now_ms();
        self.lock().summary(model, now)
    }

    pub fn in_cooldown(&self, model: &str) -> bool {
        let now = self.now_ms();
        self.lock().in_cooldown(model, now)
    }

    /// The status table (see [`TelemetryStore::render_table`]).
    pub fn render_table(&self) -> String {
        let now = self.now_ms();
        self.lock().render_table(now)
    }
}

/// Where the store lives by default: the user's state (or data) directory.
pub fn default_store_path() -> Option<PathBuf> {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .map(|d| d.join("colloquy").join("llm-telemetry.json"))
}

/// `colloquy status`: the store at `path` as a table, by stage (see
/// [`crate::route::status`]).
pub fn status_table(path: &Path) -> Result<String, StoreError> {
    let store = TelemetryStore::load(path, WindowConfig::default())?;
    Ok(crate::route::status::render(
        &store,
        StoreClock::new().now_ms(),
    ))
}

#[cfg(test)]
#[path = "telemetry_tests.rs"]
mod tests;
