//! The server's journal: one [`Store`] (SQLite or PostgreSQL) shared by
//! every WebSocket conversation of `colloquy serve` (and, on PostgreSQL, by
//! every instance of a fleet), the leases that let one connection write (or
//! resume) a journal session, and the link from a connection to the
//! [`Writer`] that writes its turns off the connection's task.
//!
//! A connection claims a session at its start ([`ServerJournal::claim`]):
//! a new one, or the one the client names (`?session=ID`), whose committed
//! turns become the new pipeline's starting context and the page's
//! `history`. The claim is a [`SessionLease`]: an id in this server's `live`
//! set plus a lease row in the store (store invariant 2), renewed by this
//! server's heartbeat ([`ServerJournal::heartbeat`]).
//!
//! # Invariants
//! 1. A journal session is written by at most one live connection across
//!    every server sharing the store: its id is claimed in `live` under its
//!    lock (this server) and by a store lease (all servers); both are
//!    released only after the [`SessionLease`] drops and its queued writes
//!    ran (writer invariant 4). A lease the heartbeat finds lost is reported
//!    to its connection ([`Report::LeaseLost`]), which ends; its writes are
//!    fenced by the token and refused.
//! 2. Committed rounds are queued at commit time with consecutive indices
//!    after the resumed turns; the connection forwards a round's `committed`
//!    event only after the writer reported it durable (conn invariant 4).
//! 3. The journal never ends a conversation: a session that cannot be
//!    claimed is an error event (then a fresh session, or a close for one in
//!    use), a write that fails is an `error` event from `"journal"` (then
//!    retried, and written or reported lost), and the conversation goes on.
//! 4. No store call runs on a connection's task while it drives audio: the
//!    claim runs before the session starts, writes go to the writer.

use super::fleet::FleetConfig;
use super::protocol::{ErrorCode, HistoryTurn, ProtocolError};
use crate::journal::writer::{Op, Report, Writer};
use crate::journal::{JournalError, JournalLocation, Store, TurnRecord};
use crate::llm::ChatMessage;
use crate::session::Session;
use crate::turn::CommittedRound;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Longest session id a client may send.
pub const MAX_SESSION_ID_LEN: usize = 64;
/// How often a resume retries a lease held elsewhere.
const LEASE_POLL: Duration = Duration::from_millis(200);

/// A session held by a connection of this server.
struct Held {
    /// The store lease's token (none: the store failed to give one).
    token: Option<i64>,
    /// Where the heartbeat reports a lost lease.
    reports: mpsc::UnboundedSender<Report>,
}

/// The journal shared by every connection of one server.
pub struct ServerJournal {
    store: Arc<dyn Store>,
    writer: Writer,
    settings: FleetConfig,
    /// Session ids held by live connections (invariant 1).
    live: Mutex<HashMap<String, Held>>,
    /// Woken when a lease is released (a reconnect may be waiting for it).
    released: Notify,
}

/// What a connection got from [`ServerJournal::claim`].
pub struct Claim {
    /// The session to write to; `None` when the journal failed (the
    /// conversation goes on unjournaled, invariant 3).
    pub lease: Option<SessionLease>,
    /// The committed turns of a resumed session (empty for a new one).
    pub turns: Vec<TurnRecord>,
    /// The error to tell the client first (the named session could not be
    /// resumed, or the journal failed).
    pub error: Option<ProtocolError>,
}

impl Claim {
    /// The turns as the `history` message shows them.
    pub fn history(&self) -> Vec<HistoryTurn> {
        self.turns
            .iter()
            .map(|t| HistoryTurn {
                user: t.user.clone(),
                assistant: t.assistant.clone(),
                interrupted: t.interrupted,
            })
            .collect()
    }

    /// The committed conversation, the new pipeline's starting context.
    pub fn context(&self) -> Vec<ChatMessage> {
        self.turns
            .iter()
            .flat_map(|t| t.messages.iter().cloned())
            .collect()
    }
}

impl ServerJournal {
    /// Opens the journal at `location` (a path or URL; refused at start when
    /// unusable, invariant 2 of [`crate::journal`]) and starts its writer.
    pub async fn open(
        location: &std::path::Path,
        settings: FleetConfig,
    ) -> Result<Self, JournalError> {
        let location = JournalLocation::parse_path(location)?;
        let store =
            crate::journal::store::open_store(&location, settings.password_env.as_deref()).await?;
        Ok(Self::with_store(store, settings))
    }

    /// A server journal on an open store.
    pub fn with_store(store: Arc<dyn Store>, settings: FleetConfig) -> Self {
        let lanes = if store.backend() == "sqlite" { 1 } else { 4 };
        let writer = Writer::start(store.clone(), lanes, settings.writer_queue, settings.retry);
        Self {
            store,
            writer,
            settings,
            live: Mutex::new(HashMap::new()),
            released: Notify::new(),
        }
    }

    /// The store (for readiness checks and tests).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions held by this server's connections.
    pub fn live_sessions(&self) -> usize {
        self.live().len()
    }

    /// Closes the writer and waits up to `wait` for queued writes
    /// (shutdown); returns whether all were done.
    pub async fn close(&self, wait: Duration) -> bool {
        self.writer.close(wait).await
    }

    /// Shares the routers' telemetry fleet-wide: merges what every
    /// instance saved within `window` into `telemetry` at start, then saves
    /// this instance's snapshot every `every` and once more at `stop`, so a
    /// new instance starts with what the fleet has learned. A store that
    /// fails is logged and tried again next time (routing goes on locally).
    pub async fn share_telemetry(
        self: Arc<Self>,
        telemetry: crate::llm::telemetry::Telemetry,
        window: Duration,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        match self.store.load_telemetry(window).await {
            Ok(snapshots) => {
                let merged = snapshots
                    .iter()
                    .filter(|s| telemetry.merge_snapshot(s).is_ok())
                    .count();
                tracing::info!(
                    snapshots = merged,
                    "routing telemetry merged from the fleet"
                );
            }
            Err(e) => tracing::warn!(error = %e, "journal: could not load the fleet's telemetry"),
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let last = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            let snapshot = telemetry.to_snapshot();
            if let Err(e) = self
                .store
                .save_telemetry(&self.settings.instance_id, &snapshot)
                .await
            {
                tracing::warn!(error = %e, "journal: could not save the routing telemetry");
            }
            if last {
                return;
            }
        }
    }

    /// Renews this server's leases every third of their time to live, until
    /// `stop`; a lease the store no longer extends is reported lost to its
    /// connection (invariant 1). A store that fails is retried next beat
    /// (the lease is kept: no one else can take it while the store is down).
    pub async fn heartbeat(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let ttl = self.settings.lease_ttl;
        let mut every = tokio::time::interval((ttl / 3).max(Duration::from_millis(50)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let held: Vec<(String, i64)> = self
                .live()
                .iter()
                .filter_map(|(id, h)| h.token.map(|t| (id.clone(), t)))
                .collect();
            if held.is_empty() {
                continue;
            }
            match self.store.renew_leases(&held, ttl).await {
                Ok(renewed) => {
                    let renewed: std::collections::HashSet<String> = renewed.into_iter().collect();
                    let mut live = self.live();
                    for (id, token) in held {
                        if renewed.contains(&id) {
                            continue;
                        }
                        if let Some(h) = live.get_mut(&id).filter(|h| h.token == Some(token)) {
                            tracing::warn!(session = %id, "journal: lease lost");
                            h.token = None;
                            let _ = h.reports.send(Report::LeaseLost);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "journal: lease heartbeat failed; retrying"),
            }
        }
    }

    /// Claims a session for one connection: the one named by `requested`
    /// (resumed, its turns returned), or a new one. A malformed or unknown
    /// id gets an error and a new session; an id held by another connection
    /// (here or on another instance) is waited for up to `wait` (a
    /// reloading page's old socket may still be closing), then refused: the
    /// `Err` is a `session_in_use` error and the connection is to be closed
    /// (invariant 1).
    pub async fn claim(
        self: &Arc<Self>,
        requested: Option<&str>,
        agent: &str,
        source: &str,
        wait: Duration,
    ) -> Result<Claim, ProtocolError> {
        let mut error = None;
        if let Some(id) = requested {
            match self.claim_existing(id, wait).await? {
                Ok(claim) => return Ok(claim),
                Err(e) => error = Some(e),
            }
        }
        let created = match self.store.create_session(agent, source).await {
            Ok(id) => self
                .store
                .acquire_lease(&id, &self.settings.instance_id, self.settings.lease_ttl)
                .await
                .map(|token| (id, token)),
            Err(e) => Err(e),
        };
        Ok(match created {
            Ok((id, token)) => {
                let lease = self.hold(id, token);
                Claim {
                    lease: Some(lease),
                    turns: Vec::new(),
                    error,
                }
            }
            Err(e) => Claim {
                lease: None,
                turns: Vec::new(),
                // The journal failure outranks a refused resume: the client
                // must know nothing of this conversation will be kept.
                error: Some(ProtocolError::new(
                    ErrorCode::Journal,
                    format!("{e}; this conversation is not journaled"),
                )),
            },
        })
    }

    /// Resumes `id`; the inner error means "start a new session instead".
    async fn claim_existing(
        self: &Arc<Self>,
        id: &str,
        wait: Duration,
    ) -> Result<Result<Claim, ProtocolError>, ProtocolError> {
        if !valid_session_id(id) {
            return Ok(Err(ProtocolError::new(
                ErrorCode::BadSession,
                format!(
                    "session id is malformed (1 to {MAX_SESSION_ID_LEN} characters of A-Z a-z 0-9 - _); a new session was started"
                ),
            )));
        }
        let in_use = || {
            ProtocolError::new(
                ErrorCode::SessionInUse,
                format!(
                    "session {id} is open in another connection (another tab, or another instance); close it, or start a new conversation"
                ),
            )
        };
        let deadline = tokio::time::Instant::now() + wait;
        let (reports, rx) = mpsc::unbounded_channel();
        loop {
            // Registered before the check, so a release in between wakes us.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut live = self.live();
                if !live.contains_key(id) {
                    live.insert(
                        id.to_string(),
                        Held {
                            token: None,
                            reports: reports.clone(),
                        },
                    );
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(in_use());
            }
        }
        // Holds the id from here: released on every path below by the lease.
        let mut lease = SessionLease::new(self.clone(), id.to_string(), None, reports, rx);
        // Then the store lease, which another instance may hold (invariant 1).
        let token = loop {
            match self
                .store
                .acquire_lease(id, &self.settings.instance_id, self.settings.lease_ttl)
                .await
            {
                Ok(Some(token)) => break token,
                Ok(None) if tokio::time::Instant::now() + LEASE_POLL <= deadline => {
                    tokio::time::sleep(LEASE_POLL).await;
                }
                Ok(None) => return Err(in_use()),
                Err(e) => {
                    return Ok(Err(ProtocolError::new(
                        ErrorCode::Journal,
                        format!(
                            "{e}; session {id} could not be resumed, a new session was started"
                        ),
                    )))
                }
            }
        };
        lease.set_token(token);
        let turns = self.store.turns(id).await;
        Ok(match turns {
            Ok(turns) => {
                lease.next_idx = turns.last().map_or(0, |t| t.index + 1);
                Ok(Claim {
                    lease: Some(lease),
                    turns,
                    error: None,
                })
            }
            Err(JournalError::NoSession { .. }) => Err(ProtocolError::new(
                ErrorCode::UnknownSession,
                format!("no session {id} in this server's journal; a new session was started"),
            )),
            Err(e) => Err(ProtocolError::new(
                ErrorCode::Journal,
                format!("{e}; session {id} could not be resumed, a new session was started"),
            )),
        })
    }

    /// Holds a new session (nobody else knows its id yet).
    fn hold(self: &Arc<Self>, id: String, token: Option<i64>) -> SessionLease {
        let (reports, rx) = mpsc::unbounded_channel();
        self.live().insert(
            id.clone(),
            Held {
                token,
                reports: reports.clone(),
            },
        );
        let mut lease = SessionLease::new(self.clone(), id, None, reports, rx);
        if let Some(t) = token {
            lease.set_token(t);
        }
        lease
    }
}

/// One connection's hold on a journal session and its link to the writer;
/// releases the id (and, after its writes, the store lease) on drop
/// (invariant 1).
pub struct SessionLease {
    journal: Arc<ServerJournal>,
    id: String,
    token: Option<i64>,
    /// Index of the next turn to write (invariant 2).
    next_idx: i64,
    next_seq: u64,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Turns queued and not yet reported written or lost.
    in_flight: usize,
}

impl SessionLease {
    fn new(
        journal: Arc<ServerJournal>,
        id: String,
        token: Option<i64>,
        reports_tx: mpsc::UnboundedSender<Report>,
        reports: mpsc::UnboundedReceiver<Report>,
    ) -> Self {
        Self {
            journal,
            id,
            token,
            next_idx: 0,
            next_seq: 0,
            reports_tx,
            reports,
            in_flight: 0,
        }
    }

    fn set_token(&mut self, token: i64) {
        self.token = Some(token);
        if let Some(h) = self.journal.live().get_mut(&self.id) {
            h.token = Some(token);
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Turns queued and not yet reported written or lost.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `rounds` (just drained from `session`) for the writer, in
    /// order; returns their sequence numbers (each will be reported, writer
    /// invariant 1). A round the queue refuses is reported lost at once
    /// (as an error event of the session) and gets no number (invariants
    /// 2, 3).
    pub fn record(&mut self, session: &mut Session, rounds: &[CommittedRound]) -> Vec<u64> {
        let mut queued = Vec::with_capacity(rounds.len());
        for round in rounds {
            super::metrics::observe_round(round);
            let (seq, idx) = (self.next_seq, self.next_idx);
            let op = Op::Append {
                session: self.id.clone(),
                idx,
                round: Box::new(round.clone()),
                fence: self.token,
                seq,
                reply: self.reports_tx.clone(),
            };
            match self.journal.writer.submit(op) {
                Ok(()) => {
                    self.next_seq += 1;
                    self.next_idx += 1;
                    self.in_flight += 1;
                    queued.push(seq);
                }
                Err(e) => {
                    tracing::error!(session = %self.id, turn = idx, error = %e, "journal: committed turn lost");
                    session.report_error(
                        "journal",
                        format!("{e}; turn {} of session {} is lost", idx + 1, self.id),
                    );
                }
            }
        }
        queued
    }

    /// The next report of the writer (or heartbeat) for this connection.
    pub async fn next_report(&mut self) -> Report {
        match self.reports.recv().await {
            Some(r) => {
                if matches!(r, Report::Written { .. } | Report::Lost { .. }) {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
                r
            }
            // The lease holds a sender: never closed while it lives.
            None => std::future::pending().await,
        }
    }

    /// Records the session's quarantined-result count at its end (queued
    /// after its turns).
    pub fn finish(&self, quarantined: u64) {
        let op = Op::Finish {
            session: self.id.clone(),
            quarantined,
        };
        if let Err(e) = self.journal.writer.submit(op) {
            tracing::warn!(error = %e, "journal: could not record the session summary");
        }
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            // After this session's queued writes (writer invariant 4).
            let op = Op::Release {
                session: self.id.clone(),
                token,
            };
            if self.journal.writer.submit(op).is_err() {
                tracing::warn!(session = %self.id, "journal: lease not released (it expires by itself)");
            }
        }
        self.journal.live().remove(&self.id);
        self.journal.released.notify_waiters();
    }
}

/// Whether `id` may name a session: 1 to [`MAX_SESSION_ID_LEN`] ASCII
/// letters, digits, `-` or `_` (journal ids are 16 hex digits).
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn journal() -> (tempfile::TempDir, Arc<ServerJournal>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = ServerJournal::open(&dir.path().join("j.sqlite"), FleetConfig::default())
            .await
            .expect("open");
        (dir, Arc::new(j))
    }

    #[test]
    fn session_ids_are_checked() {
        assert!(valid_session_id("0123abcdef456789"));
        assert!(valid_session_id("my-session_2"));
        for bad in ["", "a b", "../x", "é", &"x".repeat(65)] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_live_session_is_refused_until_its_lease_drops() {
        let (_dir, j) = journal().await;
        let first = j
            .claim(None, "parrot", "test", Duration::ZERO)
            .await
            .expect("new session");
        let lease = first.lease.expect("lease");
        let id = lease.id().to_string();
        let refused = j.claim(Some(&id), "parrot", "test", Duration::ZERO).await;
        assert!(
            matches!(&refused, Err(e) if e.code == ErrorCode::SessionInUse),
            "a second claim must be refused"
        );
        // A waiting claim gets the id as soon as the holder lets go.
        let waiter = {
            let j = j.clone();
            let id = id.clone();
            tokio::spawn(async move {
                j.claim(Some(&id), "parrot", "test", Duration::from_secs(30))
                    .await
                    .ok()
                    .and_then(|c| c.lease)
                    .map(|l| l.id().to_string())
            })
        };
        tokio::task::yield_now().await;
        drop(lease);
        let got = waiter.await.expect("waiter");
        assert_eq!(got.as_deref(), Some(id.as_str()));
    }

    #[tokio::test]
    async fn unknown_and_malformed_ids_get_an_error_and_a_new_session() {
        let (_dir, j) = journal().await;
        for (id, code) in [
            ("feedfacefeedface", ErrorCode::UnknownSession),
            ("not an id", ErrorCode::BadSession),
        ] {
            let claim = j
                .claim(Some(id), "parrot", "test", Duration::ZERO)
                .await
                .expect("a new session");
            assert_eq!(claim.error.as_ref().map(|e| e.code), Some(code), "{id}");
            let lease = claim.lease.expect("lease");
            assert_ne!(lease.id(), id);
        }
        // Every id was released again, the unknown one included.
        assert!(j.live().is_empty());
    }

    #[tokio::test]
    async fn a_resumed_session_sums_the_quarantined_results_of_its_connections() {
        let (_dir, j) = journal().await;
        let first = j
            .claim(None, "parrot", "test", Duration::ZERO)
            .await
            .expect("new session");
        let lease = first.lease.expect("lease");
        let id = lease.id().to_string();
        lease.finish(2);
        drop(lease);
        // The release runs after the summary on the writer: wait for it.
        let again = j
            .claim(Some(&id), "parrot", "test", Duration::from_secs(10))
            .await
            .expect("resumed");
        assert!(again.error.is_none());
        again.lease.expect("lease").finish(3);
        assert!(j.close(Duration::from_secs(10)).await, "writes done");
        let sessions = j.store().sessions().await.expect("sessions");
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].quarantined, 5);
    }
}
