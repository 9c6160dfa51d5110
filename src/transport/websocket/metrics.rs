//! `GET /metrics`: the instance's metrics in Prometheus text format, through
//! the `metrics` facade and `metrics-exporter-prometheus` (one recorder per
//! process, installed at the first server's bind).
//!
//! Recorded:
//! - `colloquy_sessions_live` (gauge), `colloquy_sessions_total`, rejected
//!   connections (counters, from [`super::ServerStats`] at scrape time);
//! - `colloquy_turns_total{interrupted}` and
//!   `colloquy_router_choices_total{model}` per committed turn;
//! - `colloquy_voice_to_voice_seconds`, `colloquy_stage_seconds{stage}`
//!   (stt, first_token, first_audio, each from the end of speech);
//! - `colloquy_errors_total{source}` per `error` event sent;
//! - `colloquy_journal_write_seconds{backend}`, `colloquy_journal_errors_total`,
//!   `colloquy_journal_turns_lost_total{backend}` (from the writer).
//!
//! # Invariants
//! 1. Latencies are histograms with fixed buckets ([`BUCKETS`]), never
//!    summaries, so instances aggregate.
//! 2. Labels are bounded sets (stage names, backends, model names, event
//!    sources): never session ids or text.
//! 3. Memory stays flat without scrapes: the recorded samples are drained
//!    into their buckets every 5 s ([`start_upkeep`]).

use super::ServerShared;
use crate::turn::CommittedRound;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// Histogram buckets (seconds) of every latency (invariant 1).
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's Prometheus recorder (once); `None` when another
/// recorder was installed first (then `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Records a committed turn: count, model, latencies.
/// Drains the recorded histogram samples into their buckets every 5 s, once
/// per process: `install_recorder` keeps every sample until a scrape
/// otherwise, so an unscraped server's memory grew with every turn.
pub fn start_upkeep() {
    static STARTED: OnceLock<()> = OnceLock::new();
    let Some(h) = handle() else { return };
    if STARTED.set(()).is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            h.run_upkeep();
        }
    });
}

pub fn observe_round(round: &CommittedRound) {
    let interrupted = if round.interrupted { "true" } else { "false" };
    metrics::counter!("colloquy_turns_total", "interrupted" => interrupted).increment(1);
    let model = round.model.clone().unwrap_or_else(|| "none".into());
    metrics::counter!("colloquy_router_choices_total", "model" => model).increment(1);
    let t = round.timing;
    let Some(eos) = t.end_of_speech_ms else {
        return;
    };
    let secs = |at: u64| at.saturating_sub(eos) as f64 / 1000.0;
    if let Some(a) = t.first_audio_ms {
        metrics::histogram!("colloquy_voice_to_voice_seconds").record(secs(a));
    }
    for (stage, at) in [
        ("stt", t.stt_ms),
        ("first_token", t.first_token_ms),
        ("first_audio", t.first_audio_ms),
    ] {
        if let Some(at) = at {
            metrics::histogram!("colloquy_stage_seconds", "stage" => stage).record(secs(at));
        }
    }
}

/// Counts an `error` event sent to a client.
pub fn observe_error(source: &str) {
    metrics::counter!("colloquy_errors_total", "source" => source.to_string()).increment(1);
}

pub(crate) async fn handler(State(shared): State<Arc<ServerShared>>) -> Response {
    let stats = &shared.stats;
    metrics::gauge!("colloquy_sessions_live")
        .set(stats.active_sessions.load(Ordering::Relaxed) as f64);
    metrics::gauge!("colloquy_draining").set(if shared.fleet.draining() { 1.0 } else { 0.0 });
    for (name, v) in [
        ("colloquy_sessions_total", &stats.sessions_total),
        (
            "colloquy_rejected_unauthorized_total",
            &stats.rejected_unauthorized,
        ),
        ("colloquy_rejected_origin_total", &stats.rejected_origin),
        ("colloquy_rejected_full_total", &stats.rejected_full),
        ("colloquy_messages_rejected_total", &stats.messages_rejected),
        ("colloquy_ticks_late_total", &stats.ticks_late),
    ] {
        metrics::counter!(name).absolute(v.load(Ordering::Relaxed));
    }
    let body = match handle() {
        Some(h) => h.render(),
        None => "# another metrics recorder is installed in this process\n".into(),
    };
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
