//! The telemetry store: per model, a rolling window of request outcomes
//! (success rate, TTFT p50/p95, tokens/s, last error) and rate-limit
//! cooldowns. Saved as JSON on shutdown, loaded at start, printed by
//! `colloquy status`.
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
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            max_samples: 50,
            max_age_ms: 30 * 60 * 1000,
            default_cooldown_ms: 60_000,
            recent_for_expected: 5,
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
}

/// A model's numbers at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub samples: usize,
    pub success_rate: Option<f64>,
    pub ttft_p50_ms: Option<u64>,
    pub ttft_p95_ms: Option<u64>,
    /// Median of the most recent successful TTFTs (what the router uses).
    pub expected_ttft_ms: Option<u64>,
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

    fn prune(window: &WindowConfig, rec: &mut ModelRecord, now_ms: u64) {
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
        let sample = Sample {
            at_ms: now_ms,
            ok: true,
            ttft_ms: ttft.map(|d| d.as_millis() as u64),
            tokens_per_s,
            class: None,
        };
        self.record(model, sample, now_ms);
    }

    /// Records a failed request; a rate limit starts a cooldown (invariant 2).
    pub fn record_failure(&mut self, model: &str, error: &LlmError, now_ms: u64) {
        let default_cooldown = self.window.default_cooldown_ms;
        let sample = Sample {
            at_ms: now_ms,
            ok: false,
            ttft_ms: None,
            tokens_per_s: None,
            class: Some(error.class),
        };
        let rec = self.record(model, sample, now_ms);
        rec.last_error = Some(LastError {
            at_ms: now_ms,
            class: error.class,
            status: error.status,
            message: error.message.clone(),
        });
        if error.class == ErrorClass::RateLimited {
            let ttl = error
                .retry_after
                .map(|d| d.as_millis() as u64)
                .unwrap_or(default_cooldown);
            let until = now_ms + ttl;
            rec.cooldown_until_ms = Some(rec.cooldown_until_ms.map_or(until, |t| t.max(until)));
        }
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
        let mut ttfts: Vec<u64> = rec.samples.iter().filter_map(|s| s.ttft_ms).collect();
        let recent: Vec<u64> = {
            let mut r: Vec<u64> = ttfts
                .iter()
                .rev()
                .take(self.window.recent_for_expected.max(1))
                .copied()
                .collect();
            r.sort_unstable();
            r
        };
        ttfts.sort_unstable();
        let tps: Vec<f64> = rec.samples.iter().filter_map(|s| s.tokens_per_s).collect();
        ModelSummary {
            model: model.to_string(),
            samples: n,
            success_rate: (n > 0).then(|| ok as f64 / n as f64),
            ttft_p50_ms: percentile(&ttfts, 0.5),
            ttft_p95_ms: percentile(&ttfts, 0.95),
            expected_ttft_ms: percentile(&recent, 0.5),
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

    /// The store as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// Reads a store; a missing file is an empty store.
    pub fn load(path: &Path, window: WindowConfig) -> Result<Self, StoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new(window)),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        let mut store: Self = serde_json::from_str(&text).map_err(|source| StoreError::Parse {
            path: path.into(),
            source,
        })?;
        store.window = window;
        Ok(store)
    }

    /// Writes the store (holds invariant 4).
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The store as a text table for `colloquy status`.
    pub fn render_table(&self, now_ms: u64) -> String {
        let rows = self.summaries(now_ms);
        if rows.is_empty() {
            return "no LLM requests recorded yet\n".into();
        }
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let width = rows.iter().map(|r| r.model.len()).max().unwrap_or(5).max(5);
        let mut out = format!(
            "{:<width$}  {:>4}  {:>5}  {:>8}  {:>8}  {:>6}  {:>9}  LAST ERROR\n",
            "MODEL", "N", "OK%", "TTFT p50", "TTFT p95", "TOK/S", "COOLDOWN"
        );
        for r in rows {
            let ok = r
                .success_rate
                .map_or("-".into(), |s| format!("{:.0}", s * 100.0));
            let tps = r.tokens_per_s.map_or("-".into(), |t| format!("{t:.1}"));
            let cool = r
                .cooldown_remaining_ms
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
            let err = r.last_error.map_or("-".into(), |e| {
                let status = e.status.map(|s| format!(" {s}")).unwrap_or_default();
                let class = serde_json::to_value(e.class)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                format!("{class}{status}")
            });
            out.push_str(&format!(
                "{:<width$}  {:>4}  {:>5}  {:>8}  {:>8}  {:>6}  {:>9}  {}\n",
                r.model,
                r.samples,
                ok,
                opt(r.ttft_p50_ms),
                opt(r.ttft_p95_ms),
                tps,
                cool,
                err
            ));
        }
        out
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

/// `colloquy status`: the store at `path` as a table.
pub fn status_table(path: &Path) -> Result<String, StoreError> {
    let store = TelemetryStore::load(path, WindowConfig::default())?;
    Ok(store.render_table(StoreClock::new().now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> WindowConfig {
        WindowConfig {
            max_samples: 4,
            max_age_ms: 10_000,
            default_cooldown_ms: 5_000,
            recent_for_expected: 3,
        }
    }

    #[test]
    fn the_window_is_bounded_in_count_and_time() {
        let mut s = TelemetryStore::new(window());
        for i in 0..6 {
            s.record_success("m", Some(Duration::from_millis(100 + i)), None, 1_000 + i);
        }
        assert_eq!(s.summary("m", 1_010).samples, 4);
        assert_eq!(s.summary("m", 1_010).ttft_p50_ms, Some(103));
        assert_eq!(s.summary("m", 20_000).samples, 0, "all older than max_age");
    }

    #[test]
    fn percentiles_success_rate_and_expected_ttft() {
        let mut s = TelemetryStore::new(WindowConfig {
            max_samples: 100,
            ..window()
        });
        for t in [100, 200, 300, 400, 1000] {
            s.record_success("m", Some(Duration::from_millis(t)), Some(20.0), 0);
        }
        s.record_failure("m", &LlmError::new(ErrorClass::Server, "p", "boom"), 0);
        let sum = s.summary("m", 0);
        assert_eq!(sum.ttft_p50_ms, Some(300));
        assert_eq!(sum.ttft_p95_ms, Some(1000));
        assert_eq!(sum.expected_ttft_ms, Some(400), "median of 300, 400, 1000");
        assert_eq!(sum.success_rate, Some(5.0 / 6.0));
        assert_eq!(sum.last_error.map(|e| e.class), Some(ErrorClass::Server));
    }

    #[test]
    fn a_rate_limit_cools_down_for_retry_after_or_the_default() {
        let mut s = TelemetryStore::new(window());
        let mut e = LlmError::new(ErrorClass::RateLimited, "p", "slow down");
        e.retry_after = Some(Duration::from_millis(2_000));
        s.record_failure("a", &e, 1_000);
        assert!(s.in_cooldown("a", 2_999));
        assert!(!s.in_cooldown("a", 3_000));
        e.retry_after = None;
        s.record_failure("b", &e, 1_000);
        assert!(s.in_cooldown("b", 5_999));
        assert!(!s.in_cooldown("b", 6_000));
    }

    #[test]
    fn the_store_round_trips_through_a_file_and_renders_a_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("store.json");
        let mut s = TelemetryStore::new(window());
        s.record_success("p/fast", Some(Duration::from_millis(120)), Some(40.0), 500);
        let mut e = LlmError::new(ErrorClass::RateLimited, "p", "quota");
        e.status = Some(429);
        s.record_failure("p/slow", &e, 600);
        s.save(&path).expect("save");
        let back = TelemetryStore::load(&path, window()).expect("load");
        assert_eq!(back, s);
        let table = back.render_table(700);
        assert!(table.contains("p/fast"), "{table}");
        assert!(table.contains("rate_limited 429"), "{table}");
        let status = status_table(&path).expect("status");
        assert!(status.starts_with("MODEL"), "{status}");
        assert!(status_table(&dir.path().join("none.json"))
            .expect("empty")
            .contains("no LLM requests"));
        let missing = TelemetryStore::load(&dir.path().join("none.json"), window()).expect("empty");
        assert!(missing.models.is_empty());
        std::fs::write(&path, "{not json").expect("write");
        let err = TelemetryStore::load(&path, window()).expect_err("corrupt");
        assert!(err.to_string().contains("fix:"), "{err}");
    }
}
