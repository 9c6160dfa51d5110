//! Reading the journal from the command line (`colloquy sessions`, `trace`
//! and the journal part of `status`) on either backend: the location is
//! parsed like `serve`'s (a path, `sqlite:PATH` or `postgres://…`) and read
//! through the [`Store`] trait, so a fleet's PostgreSQL is inspected the same
//! way as a local SQLite file.
//!
//! # Invariants
//! 1. The location is parsed by [`JournalLocation::parse_path`]: an unknown
//!    `scheme://` is an error, never a file name, and messages show the
//!    location redacted (the password comes only from `PGPASSWORD`).
//! 2. Reading writes nothing but the store's migrations at open (the same
//!    ones `serve` applies).

use super::{render_trace, Journal, JournalError, JournalLocation, SessionSummary, Store};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Opens the journal at `journal` (default: [`Journal::default_path`]) for
/// reading (invariants 1, 2).
pub async fn open(journal: Option<&Path>) -> Result<Arc<dyn Store>, JournalError> {
    let location = match journal {
        Some(p) => JournalLocation::parse_path(p)?,
        None => JournalLocation::parse_path(&Journal::default_path())?,
    };
    super::store::open_store(&location, None).await
}

/// `colloquy sessions` as a table.
pub fn sessions_table(sessions: &[SessionSummary]) -> String {
    let mut out = format!(
        "{:<18} {:>6} {:>6} {:>6}  {:<8} source\n",
        "session", "turns", "interr", "quar", "agent"
    );
    for s in sessions {
        let _ = writeln!(
            out,
            "{:<18} {:>6} {:>6} {:>6}  {:<8} {}",
            s.id, s.turns, s.interruptions, s.quarantined, s.agent, s.source
        );
    }
    out
}

/// `colloquy trace ID`: the session's turns as a waterfall (each turn names
/// the model that served each stage, `agent::served`), then the flows'
/// stored values.
pub async fn trace_text(store: &dyn Store, session: &str) -> Result<String, JournalError> {
    let turns = store.turns(session).await?;
    let mut out = render_trace(&turns);
    let stored = store.kv(session).await?;
    if !stored.is_empty() {
        out.push_str("stored (kv_set):\n");
        for (key, value) in stored {
            let _ = writeln!(out, "  {key} = {value}");
        }
    }
    Ok(out)
}

/// The journal lines of `colloquy status`: sessions, turns, interruptions,
/// voice-to-voice percentiles, and the router telemetry snapshots the
/// instances sharing this store saved within `window`.
pub async fn status_text(store: &dyn Store, window: Duration) -> Result<String, JournalError> {
    let sessions = store.sessions().await?;
    let mut v2v = Vec::new();
    let (mut turns, mut interruptions, mut quarantined) = (0, 0, 0);
    for s in &sessions {
        turns += s.turns;
        interruptions += s.interruptions;
        quarantined += s.quarantined;
        v2v.extend(
            store
                .turns(&s.id)
                .await?
                .iter()
                .filter_map(|t| t.voice_to_voice_ms()),
        );
    }
    let p = |q| super::percentile(&v2v, q).map_or("—".to_string(), |v| format!("{v} ms"));
    let snapshots = store.load_telemetry(window).await?.len();
    Ok(format!(
        "journal ({}, {}): {} sessions, {turns} turns, {interruptions} interruptions, {quarantined} quarantined results; voice-to-voice p50 {} p95 {}\n\
         shared router telemetry in the journal: {snapshots} instance snapshot(s) saved in the last {} s\n",
        store.location(),
        store.backend(),
        sessions.len(),
        p(50.0),
        p(95.0),
        window.as_secs(),
    ))
}
