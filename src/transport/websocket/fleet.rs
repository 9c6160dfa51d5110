//! Running `colloquy serve` as one instance of a fleet behind a load
//! balancer: its settings ([`FleetConfig`]: instance id, lease time to live,
//! journal retries, drain budget), its probes and its drain.
//!
//! - `GET /healthz`: 200 while the process serves HTTP (liveness).
//! - `GET /readyz`: 200 when the journal store answers, the instance is
//!   below `--max-sessions` and not draining; 503 with the reasons
//!   otherwise (readiness: a load balancer stops sending new calls).
//! - `GET /metrics`: Prometheus text ([`super::metrics`]).
//! - SIGTERM (or Ctrl-C) drains: readiness turns 503, the listener stops
//!   accepting, every connection gets a `draining` message and a close
//!   1012 (service restart; the page reconnects through the load balancer
//!   and resumes its session on another instance), the journal's queued
//!   writes are finished, all within `--drain-secs`.
//!
//! # Invariants
//! 1. Probes need no token and reveal no conversation: counts and reasons
//!    only.
//! 2. Once draining, `/readyz` answers 503 until the process ends; `/healthz`
//!    stays 200.
//! 3. A probe of the store waits at most [`PROBE_TIMEOUT`].

use super::ServerShared;
use crate::journal::writer::RetryPolicy;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for the store in `/readyz` (invariant 3).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of an instance in a fleet (all have single-instance defaults).
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// This instance's name in lease rows and telemetry (default: host name,
    /// process id and a random suffix).
    pub instance_id: String,
    /// A session's lease expires this long after its last renewal (a crashed
    /// instance's sessions are resumable after at most this long).
    pub lease_ttl: Duration,
    /// How failed journal writes are retried before a turn is reported lost.
    pub retry: RetryPolicy,
    /// Journal operations queued per writer lane at most.
    pub writer_queue: usize,
    /// The variable holding the PostgreSQL password (`PGPASSWORD` if none).
    pub password_env: Option<String>,
    /// Budget of a drain (SIGTERM): connections closed and journal writes
    /// finished within it.
    pub drain: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            instance_id: default_instance_id(),
            lease_ttl: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            writer_queue: 1024,
            password_env: None,
            drain: Duration::from_secs(10),
        }
    }
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// An instance's run state shared by its probes and connections.
#[derive(Debug, Default)]
pub struct FleetState {
    /// Set when a drain begins (invariant 2).
    pub draining: AtomicBool,
}

impl FleetState {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The probe and metrics routes.
pub(crate) fn routes() -> Router<Arc<ServerShared>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(super::metrics::handler))
}

fn text(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

async fn readyz(State(shared): State<Arc<ServerShared>>) -> Response {
    let mut not_ready = Vec::new();
    if shared.fleet.draining() {
        not_ready.push("draining".to_string());
    }
    let active = shared.stats.active_sessions.load(Ordering::Acquire);
    if active >= shared.config.max_sessions {
        not_ready.push(format!(
            "full: {active} of {} sessions",
            shared.config.max_sessions
        ));
    }
    if let Some(j) = &shared.journal {
        match tokio::time::timeout(PROBE_TIMEOUT, j.store().ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => not_ready.push(format!("journal: {e}")),
            Err(_) => not_ready.push(format!(
                "journal {}: no answer within {} ms",
                j.store().location(),
                PROBE_TIMEOUT.as_millis()
            )),
        }
    }
    if not_ready.is_empty() {
        text(StatusCode::OK, format!("ready: {active} sessions\n"))
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join("; ")),
        )
    }
}

/// Resolves at SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
