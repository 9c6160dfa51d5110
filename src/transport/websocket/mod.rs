//! The WebSocket transport: `colloquy serve`. An HTTP server (axum) that
//! serves the talk page (embedded in the binary) and one WebSocket per
//! conversation; each connection drives its own [`crate::session::Session`]
//! (pipeline + coordinator) in its own task ([`conn`]). The wire protocol is
//! in `docs/protocol.md` and [`protocol`].
//!
//! Security: a random token (printed in the page URL) is required on the
//! WebSocket; browsers' `Origin` must be this server's own ([`origin`]: the
//! request's `Host` is never trusted); messages have a size limit,
//! connections a rate limit in messages, bytes and seconds of audio, pings
//! included, and an idle timeout ([`limits`]); the server a maximum number
//! of sessions, each client address a maximum of live connections.
//!
//! Journal: with [`ServeConfig::journal`] set, the server opens the journal
//! once at start ([`journal::ServerJournal`]); each connection is one
//! journal session, new or resumed with `?session=ID` (`docs/protocol.md`).
//!
//! Shutdown (a drain, [`fleet`]): the future given to [`Server::run`]
//! resolving (SIGTERM or Ctrl-C for `serve`) marks the server draining
//! (`/readyz` 503) and cancels `ServerShared::cancel`, the root of every
//! connection's token; the listener stops accepting; each connection ends
//! its session, sends `draining` and a close 1012 and returns; `run` waits
//! for `ServerShared::tracker` (all connection tasks), then for the
//! journal's queued writes, within `--drain-secs` in all.
//!
//! # Invariants
//! 1. A WebSocket is upgraded only with the right token, an allowed (or no)
//!    `Origin`, and a free session slot; otherwise the HTTP request is
//!    answered 401/403/503 with a protocol error as JSON body.
//! 2. Nothing a client sends can panic or stop the server: bad messages get
//!    an error event and are dropped, or the connection is closed cleanly;
//!    other connections are not affected.
//! 3. A session slot is taken before the upgrade and released when the
//!    connection task ends (RAII [`conn::SessionSlot`]), so
//!    `active_sessions <= max_sessions` at all times; likewise an address
//!    slot ([`limits`] invariant 2), so no address holds more than
//!    `max_per_address` live connections (loopback exempt unless
//!    `per_address_loopback`).

pub mod conn;
pub mod fleet;
pub mod gate;
pub mod journal;
mod limits;
pub mod metrics;
mod origin;
pub mod protocol;

use crate::agent::Agent;
use crate::session::SessionConfig;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use protocol::{ErrorCode, ProtocolError};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Builds a fresh agent for each connection.
pub type AgentFactory = Arc<dyn Fn() -> Arc<dyn Agent> + Send + Sync>;

/// Default address: loopback only.
pub const DEFAULT_BIND: &str = "127.0.0.1:8765";
/// Longest wait for connections to close at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Per-connection rate limit (token buckets on messages and bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second (audio at 20 ms frames is 50/s).
    pub messages_per_sec: f64,
    /// Messages allowed in a burst above the sustained rate.
    pub message_burst: f64,
    /// Sustained bytes per second (PCM16 at 48 kHz is 96 000/s).
    pub bytes_per_sec: f64,
    pub byte_burst: f64,
    /// Accepted audio at most this many times real time, whatever the
    /// sample rate (seconds of audio per second).
    pub audio_speed: f64,
    /// Seconds of audio allowed in a burst above `audio_speed`.
    pub audio_burst_secs: f64,
    /// Messages dropped for rate before the connection is closed.
    pub close_after_dropped: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            messages_per_sec: 100.0,
            message_burst: 200.0,
            bytes_per_sec: 256.0 * 1024.0,
            byte_burst: 512.0 * 1024.0,
            audio_speed: 2.0,
            audio_burst_secs: 5.0,
            close_after_dropped: 500,
        }
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub bind: SocketAddr,
    /// Secret required on the WebSocket (`?token=`).
    pub token: String,
    /// Extra allowed `Origin`s (the server's own loopback origins always are).
    pub allowed_origins: Vec<String>,
    pub max_sessions: usize,
    /// Most live connections from one client address.
    pub max_per_address: usize,
    /// Whether `max_per_address` applies to loopback clients too (off by
    /// default: a local reverse proxy or benchmark connects from loopback
    /// for everyone).
    pub per_address_loopback: bool,
    /// Largest client message accepted (bytes); larger ones get an error.
    pub max_message_bytes: usize,
    pub rate_limit: RateLimit,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A client that does not take what the server sends for this long
    /// (it stopped reading) is dropped.
    pub send_timeout: Duration,
    /// The kernel send buffer of each connection (`SO_SNDBUF`, bytes);
    /// none: the kernel's default, which grows on demand. A small one bounds
    /// what a client that stopped reading can hold before `send_timeout`
    /// starts to run.
    pub send_buffer: Option<usize>,
    /// Pipeline settings for each session (rates and pacing are set per
    /// connection).
    pub session: SessionConfig,
    /// Write what each session heard to `<dir>/<session>-in.wav`.
    pub dump_dir: Option<PathBuf>,
    /// How far ahead of real time bot audio is sent (the client's buffer).
    pub lead: Duration,
    /// Journal of committed turns (none: conversations are not kept and
    /// cannot be resumed).
    pub journal: Option<PathBuf>,
    /// How long a connection resuming a session waits for another
    /// connection holding it to end (a reloading page's old socket) before
    /// it is refused with `session_in_use`.
    pub resume_wait: Duration,
    /// Fleet settings: leases, journal retries, drain (`fleet`).
    pub fleet: fleet::FleetConfig,
    /// The routers' telemetry, shared through the journal with the other
    /// instances (merged at start, saved every 30 s and at shutdown).
    pub telemetry: Option<crate::llm::telemetry::Telemetry>,
}

impl ServeConfig {
    /// Defaults on `bind` with a fresh random token.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            token: generate_token(),
            allowed_origins: Vec::new(),
            max_sessions: 64,
            max_per_address: 16,
            per_address_loopback: false,
            max_message_bytes: 64 * 1024,
            rate_limit: RateLimit::default(),
            idle_timeout: Duration::from_secs(120),
            send_timeout: Duration::from_secs(5),
            send_buffer: None,
            session: SessionConfig::default(),
            dump_dir: None,
            lead: Duration::from_millis(100),
            journal: None,
            resume_wait: Duration::from_secs(2),
            fleet: fleet::FleetConfig::default(),
            telemetry: None,
        }
    }
}

/// How far back the fleet's telemetry snapshots are merged at start.
const TELEMETRY_WINDOW: Duration = Duration::from_secs(3600);
/// How often this instance saves its telemetry snapshot to the journal.
const TELEMETRY_EVERY: Duration = Duration::from_secs(30);

/// A random 128-bit token as 32 hex digits.
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {cause}; pick another address with --bind")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error(
        "the token is empty; give a non-empty --token or COLLOQUY_TOKEN, or none for a random one"
    )]
    EmptyToken,
    #[error("cannot create the dump directory {path}: {cause}")]
    DumpDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters for monitoring and the load benchmark.
#[derive(Debug, Default, Serialize)]
pub struct ServerStats {
    pub active_sessions: AtomicUsize,
    pub sessions_total: AtomicU64,
    pub rejected_unauthorized: AtomicU64,
    pub rejected_origin: AtomicU64,
    pub rejected_full: AtomicU64,
    /// Upgrades refused by the per-address limit.
    pub rejected_address: AtomicU64,
    /// Client messages dropped with an error (any reason).
    pub messages_rejected: AtomicU64,
    /// 20 ms input frames processed, all sessions.
    pub frames_in: AtomicU64,
    /// Bot audio messages sent, all sessions.
    pub frames_out: AtomicU64,
    /// Driver ticks that ran more than 20 ms after their deadline.
    pub ticks_late: AtomicU64,
    /// Latest tick lateness seen (µs), all sessions.
    pub max_tick_late_us: AtomicU64,
}

/// What every connection shares.
pub(crate) struct ServerShared {
    pub config: ServeConfig,
    pub agents: AgentFactory,
    pub stats: Arc<ServerStats>,
    pub local_addr: SocketAddr,
    /// Root of every connection's cancellation token (shutdown).
    pub cancel: CancellationToken,
    /// Every connection task; `run` waits on it at shutdown.
    pub tracker: TaskTracker,
    /// The journal, opened once at bind (none: not journaling).
    pub journal: Option<Arc<journal::ServerJournal>>,
    /// Live connections per client address.
    pub addresses: Arc<limits::AddressTable>,
    /// Drain state for probes and connections (`fleet`).
    pub fleet: fleet::FleetState,
}

/// A bound, not yet running server.
pub struct Server {
    listener: tokio::net::TcpListener,
    shared: Arc<ServerShared>,
}

impl Server {
    /// Binds `config.bind` (port 0 picks a free port).
    pub async fn bind(config: ServeConfig, agents: AgentFactory) -> Result<Self, ServeError> {
        self::metrics::handle();
        self::metrics::start_upkeep();
        if config.token.is_empty() {
            return Err(ServeError::EmptyToken);
        }
        if let Some(dir) = &config.dump_dir {
            std::fs::create_dir_all(dir).map_err(|cause| ServeError::DumpDir {
                path: dir.clone(),
                cause,
            })?;
        }
        // Refused at start, before the port is taken (journal invariant 2).
        let journal = match &config.journal {
            Some(path) => Some(Arc::new(
                journal::ServerJournal::open(path, config.fleet.clone()).await?,
            )),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|cause| ServeError::Bind {
                addr: config.bind,
                cause,
            })?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            shared: Arc::new(ServerShared {
                config,
                agents,
                stats: Arc::new(ServerStats::default()),
                local_addr,
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
                journal,
                addresses: Arc::default(),
                fleet: fleet::FleetState::default(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The page URL with the token (`http://HOST:PORT/?token=T`).
    pub fn page_url(&self) -> String {
        format!(
            "http://{}/?token={}",
            display_host(self.shared.local_addr),
            self.shared.config.token
        )
    }

    /// The WebSocket URL with the token (`ws://HOST:PORT/ws?token=T`).
    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}/ws?token={}",
            display_host(self.shared.local_addr),
            self.shared.config.token
        )
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` resolves, then closes every session.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let shared = self.shared.clone();
        let app = router(shared.clone());
        let cancel = shared.cancel.clone();
        let stop = cancel.clone();
        let draining = shared.clone();
        tokio::spawn(async move {
            shutdown.await;
            // Readiness turns 503 first (fleet invariant 2).
            draining.fleet.draining.store(true, Ordering::Release);
            stop.cancel();
        });
        let beat = CancellationToken::new();
        let mut shared_telemetry = None;
        if let Some(j) = &shared.journal {
            tokio::spawn(j.clone().heartbeat(beat.clone()));
            if let Some(t) = shared.config.telemetry.clone() {
                shared_telemetry = Some(tokio::spawn(j.clone().share_telemetry(
                    t,
                    TELEMETRY_WINDOW,
                    TELEMETRY_EVERY,
                    beat.clone(),
                )));
            }
        }
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let send_buffer = shared.config.send_buffer;
        let listener = self.listener.tap_io(move |tcp| {
            // Bot audio is small messages every 20 ms: Nagle's algorithm
            // would hold each until the client's next ACK (its next audio
            // message, up to 20 ms later) — conn.rs invariant 2.
            let _ = tcp.set_nodelay(true);
            if let Some(n) = send_buffer {
                let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(n);
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await?;
        // The drain: connections close (1012) and their last writes queue,
        // then the journal writes what is queued, within the budget.
        let budget = shared.config.fleet.drain;
        let until = tokio::time::Instant::now() + budget;
        shared.tracker.close();
        let _ = tokio::time::timeout_at(until, shared.tracker.wait()).await;
        if let Some(j) = &shared.journal {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if !j.close(left).await {
                tracing::error!("journal: queued writes not finished within the drain budget");
            }
        }
        beat.cancel();
        if let Some(task) = shared_telemetry {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(left.max(Duration::from_millis(500)), task).await;
        }
        Ok(())
    }
}

/// Binds and serves until Ctrl-C; `on_ready` sees the bound server (to print
/// its URL).
pub async fn serve(
    config: ServeConfig,
    agents: AgentFactory,
    on_ready: impl FnOnce(&Server),
) -> Result<(), ServeError> {
    let server = Server::bind(config, agents).await?;
    on_ready(&server);
    server.run(fleet::shutdown_signal()).await
}

fn display_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn router(shared: Arc<ServerShared>) -> Router {
    Router::new()
        .route("/", get(page_index))
        .route("/index.html", get(page_index))
        .route("/app.js", get(page_app))
        .route("/style.css", get(page_style))
        .route("/capture-worklet.js", get(page_capture))
        .route("/playback-worklet.js", get(page_playback))
        .route("/ws", get(ws_handler))
        .route("/stats", get(stats_handler))
        .merge(fleet::routes())
        .with_state(shared)
}

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");
const CAPTURE_JS: &str = include_str!("page/capture-worklet.js");
const PLAYBACK_JS: &str = include_str!("page/playback-worklet.js");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; media-src 'self'; \
    worker-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn static_response(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page URL carries the token: never send it on as a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

async fn page_index() -> Response {
    static_response(INDEX_HTML, "text/html; charset=utf-8")
}
async fn page_app() -> Response {
    static_response(APP_JS, "text/javascript; charset=utf-8")
}
async fn page_style() -> Response {
    static_response(STYLE_CSS, "text/css; charset=utf-8")
}
async fn page_capture() -> Response {
    static_response(CAPTURE_JS, "text/javascript; charset=utf-8")
}
async fn page_playback() -> Response {
    static_response(PLAYBACK_JS, "text/javascript; charset=utf-8")
}

fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = ProtocolError::new(code, message).to_json();
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn ws_handler(
    State(shared): State<Arc<ServerShared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let stats = &shared.stats;
    let config = &shared.config;
    let token = query.get("token").map(String::as_str).unwrap_or("");
    if !origin::token_matches(token, &config.token) {
        stats.rejected_unauthorized.fetch_add(1, Ordering::Relaxed);
        return error_response(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong token; open the URL `colloquy serve` printed (it carries ?token=)",
        );
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !origin::origin_allowed(origin, config, shared.local_addr) {
        stats.rejected_origin.fetch_add(1, Ordering::Relaxed);
        return error_response(
            StatusCode::FORBIDDEN,
            ErrorCode::BadOrigin,
            "this page's origin may not open a session; serve the page from colloquy or add --allow-origin",
        );
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadMessage,
                &format!("not a WebSocket upgrade: {rejection}"),
            )
        }
    };
    let Some(slot) = conn::SessionSlot::take(stats.clone(), config.max_sessions) else {
        stats.rejected_full.fetch_add(1, Ordering::Relaxed);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManySessions,
            "the server holds its maximum number of sessions; try again later or raise --max-sessions",
        );
    };
    let ip = peer.ip().to_canonical();
    let address_slot = if ip.is_loopback() && !config.per_address_loopback {
        None
    } else {
        match limits::AddressTable::take(&shared.addresses, ip, config.max_per_address) {
            Some(s) => Some(s),
            None => {
                stats.rejected_address.fetch_add(1, Ordering::Relaxed);
                return error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::TooManyConnections,
                    &format!(
                        "this address holds {} live connections, the most allowed; close one or raise --max-per-address",
                        config.max_per_address
                    ),
                );
            }
        }
    };
    // The hard cap above our own limit: messages between the two get a
    // protocol error and are dropped; beyond it the socket fails and closes.
    let hard_cap = config.max_message_bytes.saturating_mul(4).max(1024);
    let tracker = shared.tracker.clone();
    let shared2 = shared.clone();
    // Checked by the connection, which answers with an error event (a
    // browser cannot read the body of a refused upgrade).
    let resume = query.get("session").cloned();
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let _address = address_slot;
                conn::run_connection(socket, shared2, slot, resume).await
            })
        })
}

async fn stats_handler(
    State(shared): State<Arc<ServerShared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let token = query.get("token").map(String::as_str).unwrap_or("");
    if !origin::token_matches(token, &shared.config.token) {
        return error_response(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong token",
        );
    }
    let mut body = serde_json::to_value(&*shared.stats).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        // SQLite's own heap (page cache, statements), bounded by the journal's
        // `cache_size`: soaks tell it apart from the sessions' memory.
        map.insert(
            "sqlite_heap_bytes".into(),
            crate::journal::sqlite_heap_bytes().into(),
        );
    }
    let body = body.to_string();
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_128_bit_hex() {
        assert_eq!(generate_token().len(), 32);
        assert_ne!(generate_token(), generate_token());
    }
}
