//! The SQLite backend of [`Store`]: one thread owns the [`Journal`]
//! connection and runs the calls sent to it over a bounded channel
//! (tokio-rusqlite's pattern), so no SQLite call ever runs on a tokio worker
//! or an audio thread. Leases and telemetry are rows of the same file; any
//! process on this machine that opens the file shares them.
//!
//! # Invariants
//! 1. Only the owner thread touches the connection; a caller awaits its
//!    reply and never holds a lock.
//! 2. The channel is bounded ([`QUEUE`]): a full queue makes callers wait
//!    (backpressure), never grows memory.
//! 3. Lease SQL follows store invariants 1–3 with times in ms of this
//!    machine's clock.

use super::store::{new_session_id, new_token, Store};
use super::{unix_now, Journal, JournalError, SessionSummary, TurnRecord};
use crate::turn::CommittedRound;
use rusqlite::{params, OptionalExtension};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Calls queued for the owner thread at most (invariant 2).
pub const QUEUE: usize = 256;

type Call = Box<dyn FnOnce(&mut Journal) + Send>;

/// A SQLite journal driven from its own thread.
pub struct SqliteStore {
    calls: mpsc::Sender<Call>,
    location: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Journal {
    fn store_err(&self, e: rusqlite::Error) -> JournalError {
        JournalError::Write {
            path: self.path.clone(),
            cause: e.to_string(),
        }
    }

    /// Takes `session`'s lease (store invariant 2).
    pub fn acquire_lease(
        &mut self,
        session: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, JournalError> {
        let token = new_token();
        let now = now_ms();
        let got: Option<i64> = self
            .conn
            .query_row(
                "INSERT INTO leases (session_id, owner, token, expires_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (session_id) DO UPDATE
                   SET owner = excluded.owner, token = excluded.token, expires_ms = excluded.expires_ms
                   WHERE leases.expires_ms < ?5
                 RETURNING token",
                params![session, owner, token, now + ttl.as_millis() as i64, now],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.store_err(e))?;
        Ok(got)
    }

    /// Extends the leases whose token still matches (store invariant 2).
    pub fn renew_leases(
        &mut self,
        leases: &[(String, i64)],
        ttl: Duration,
    ) -> Result<Vec<String>, JournalError> {
        let expires = now_ms() + ttl.as_millis() as i64;
        let path = self.path.clone();
        let err = |e: rusqlite::Error| JournalError::Write {
            path: path.clone(),
            cause: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut renewed = Vec::with_capacity(leases.len());
        for (session, token) in leases {
            let n = tx
                .execute(
                    "UPDATE leases SET expires_ms = ?3 WHERE session_id = ?1 AND token = ?2",
                    params![session, token, expires],
                )
                .map_err(err)?;
            if n == 1 {
                renewed.push(session.clone());
            }
        }
        tx.commit().map_err(err)?;
        Ok(renewed)
    }

    /// Gives up a lease held with `token`.
    pub fn release_lease(&mut self, session: &str, token: i64) -> Result<(), JournalError> {
        self.conn
            .execute(
                "DELETE FROM leases WHERE session_id = ?1 AND token = ?2",
                params![session, token],
            )
            .map_err(|e| self.store_err(e))?;
        Ok(())
    }

    /// Stores `instance`'s telemetry snapshot.
    pub fn save_telemetry(&mut self, instance: &str, snapshot: &str) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO telemetry (instance_id, saved_ms, snapshot) VALUES (?1, ?2, ?3)
                 ON CONFLICT (instance_id) DO UPDATE SET saved_ms = excluded.saved_ms, snapshot = excluded.snapshot",
                params![instance, now_ms(), snapshot],
            )
            .map_err(|e| self.store_err(e))?;
        Ok(())
    }

    /// The snapshots saved within `window`, newest first.
    pub fn load_telemetry(&self, window: Duration) -> Result<Vec<String>, JournalError> {
        let since = now_ms() - window.as_millis() as i64;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT snapshot FROM telemetry WHERE saved_ms >= ?1 ORDER BY saved_ms DESC, instance_id",
            )
            .map_err(|e| self.store_err(e))?;
        let rows = stmt
            .query_map([since], |r| r.get(0))
            .map_err(|e| self.store_err(e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.store_err(e))
    }

    /// Creates a session with a fresh id.
    pub fn create_session(&mut self, agent: &str, source: &str) -> Result<String, JournalError> {
        let id = new_session_id();
        self.conn
            .execute(
                "INSERT INTO sessions (id, started_at, agent, source) VALUES (?1, ?2, ?3, ?4)",
                params![id, unix_now(), agent, source],
            )
            .map_err(|e| self.store_err(e))?;
        Ok(id)
    }
}

impl SqliteStore {
    /// Opens the journal at `path` on its own thread (refused when
    /// unusable, journal invariant 2).
    pub async fn open(path: PathBuf) -> Result<Self, JournalError> {
        let location = path.display().to_string();
        let (calls, mut rx) = mpsc::channel::<Call>(QUEUE);
        let (ready_tx, ready) = oneshot::channel();
        std::thread::Builder::new()
            .name("journal-sqlite".into())
            .spawn(move || {
                let mut journal = match Journal::open(&path) {
                    Ok(j) => {
                        let _ = ready_tx.send(Ok(()));
                        j
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Holds invariant 1: the connection never leaves this thread.
                while let Some(call) = rx.blocking_recv() {
                    call(&mut journal);
                }
            })
            .map_err(|e| JournalError::Open {
                path: location.clone().into(),
                cause: format!("cannot start the journal thread: {e}"),
            })?;
        match ready.await {
            Ok(Ok(())) => Ok(Self { calls, location }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(JournalError::Open {
                path: location.into(),
                cause: "the journal thread ended at start".into(),
            }),
        }
    }

    /// Runs `f` on the owner thread and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (tx, rx) = oneshot::channel();
        let call: Call = Box::new(move |j| {
            let _ = tx.send(f(j));
        });
        let gone = || JournalError::Unreachable {
            location: self.location.clone(),
            cause: "the journal thread has stopped".into(),
        };
        self.calls.send(call).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn location(&self) -> &str {
        &self.location
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), JournalError> {
        self.call(|j| {
            j.conn
                .query_row("SELECT 1", [], |_| Ok(()))
                .map_err(|e| j.store_err(e))
        })
        .await
    }

    async fn create_session(&self, agent: &str, source: &str) -> Result<String, JournalError> {
        let (agent, source) = (agent.to_string(), source.to_string());
        self.call(move |j| j.create_session(&agent, &source)).await
    }

    async fn turns(&self, session: &str) -> Result<Vec<TurnRecord>, JournalError> {
        let session = session.to_string();
        self.call(move |j| j.turns(&session)).await
    }

    async fn append_turn(
        &self,
        session: &str,
        idx: i64,
        round: &CommittedRound,
        fence: Option<i64>,
    ) -> Result<(), JournalError> {
        let (session, round) = (session.to_string(), round.clone());
        self.call(move |j| j.write_turn(&session, Some(idx), &round, fence).map(|_| ()))
            .await
    }

    async fn finish_session(&self, session: &str, quarantined: u64) -> Result<(), JournalError> {
        let session = session.to_string();
        self.call(move |j| j.finish_session(&session, quarantined))
            .await
    }

    async fn sessions(&self) -> Result<Vec<SessionSummary>, JournalError> {
        self.call(|j| j.sessions()).await
    }

    async fn kv(&self, session: &str) -> Result<BTreeMap<String, String>, JournalError> {
        let session = session.to_string();
        self.call(move |j| j.kv(&session)).await
    }

    async fn acquire_lease(
        &self,
        session: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, JournalError> {
        let (session, owner) = (session.to_string(), owner.to_string());
        self.call(move |j| j.acquire_lease(&session, &owner, ttl))
            .await
    }

    async fn renew_leases(
        &self,
        leases: &[(String, i64)],
        ttl: Duration,
    ) -> Result<Vec<String>, JournalError> {
        let leases = leases.to_vec();
        self.call(move |j| j.renew_leases(&leases, ttl)).await
    }

    async fn release_lease(&self, session: &str, token: i64) -> Result<(), JournalError> {
        let session = session.to_string();
        self.call(move |j| j.release_lease(&session, token)).await
    }

    async fn save_telemetry(&self, instance: &str, snapshot: &str) -> Result<(), JournalError> {
        let (instance, snapshot) = (instance.to_string(), snapshot.to_string());
        self.call(move |j| j.save_telemetry(&instance, &snapshot))
            .await
    }

    async fn load_telemetry(&self, window: Duration) -> Result<Vec<String>, JournalError> {
        self.call(move |j| j.load_telemetry(window)).await
    }
}
