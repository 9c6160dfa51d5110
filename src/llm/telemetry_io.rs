//! The telemetry store's persistence and presentation: JSON snapshots
//! shared across instances (merge), the file it is saved in, and the legacy
//! LLM table (see `telemetry.rs` for the invariants these hold: 4 and 7).

use crate::llm::telemetry::{Sample, StoreError, TelemetryStore, WindowConfig};
use std::path::Path;

impl TelemetryStore {
    /// The store as a compact JSON snapshot, for sharing with other
    /// instances (the journal stores it fleet-wide).
    pub fn to_snapshot(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Merges another instance's snapshot (holds invariant 7); returns how
    /// many models it held.
    pub fn merge_snapshot(&mut self, json: &str, now_ms: u64) -> Result<usize, serde_json::Error> {
        let other: TelemetryStore = serde_json::from_str(json)?;
        let n = other.models.len();
        for (key, theirs) in other.models {
            let window = self.window.clone();
            let mine = self.models.entry(key).or_default();
            let mut all: Vec<Sample> = mine.samples.drain(..).chain(theirs.samples).collect();
            all.sort_by_key(|s| s.at_ms);
            all.dedup();
            mine.samples = all.into();
            mine.cooldown_until_ms = match (mine.cooldown_until_ms, theirs.cooldown_until_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let theirs_newer = match (&mine.last_error, &theirs.last_error) {
                (Some(a), Some(b)) => b.at_ms > a.at_ms,
                (None, Some(_)) => true,
                _ => false,
            };
            if theirs_newer {
                mine.last_error = theirs.last_error;
                mine.consecutive_failures =
                    mine.consecutive_failures.max(theirs.consecutive_failures);
            }
            Self::prune(&window, mine, now_ms);
        }
        Ok(n)
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
