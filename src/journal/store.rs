//! The journal as a shared store: one async trait, one backend per file
//! ([`super::sqlite_store`], [`super::postgres`]), chosen by the location's
//! scheme ([`open_store`]). `colloquy serve` uses it (through
//! [`super::writer`] for writes); any number of instances may share one
//! PostgreSQL store.
//!
//! Leases make a session live in at most one connection across every
//! instance sharing the store: an owner row with an expiry, taken only when
//! absent or expired, renewed by a heartbeat and fenced by a token, so a
//! stale owner's renewal or write touches nothing ("0 rows = lease lost").
//!
//! # Invariants
//! 1. [`Store::append_turn`] at an index already written does nothing and
//!    succeeds (a retry after a lost acknowledgement is idempotent); with a
//!    fence token it writes only while the session's lease carries that token.
//! 2. [`Store::acquire_lease`] returns a token only when no unexpired lease
//!    of another token exists; [`Store::renew_leases`] extends only the
//!    leases whose token still matches (expired or not, as long as no one
//!    took them) and returns the sessions it extended.
//! 3. Times of leases and telemetry come from one clock: the database's
//!    (`now()`) on PostgreSQL, the machine's on SQLite (one machine).

use super::{JournalError, JournalLocation, SessionSummary, TurnRecord};
use crate::turn::CommittedRound;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A journal store (SQLite or PostgreSQL).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The location, redacted (for messages).
    fn location(&self) -> &str;
    /// The backend's name (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
    /// A cheap round trip: is the store reachable?
    async fn ping(&self) -> Result<(), JournalError>;
    /// Starts a new session; returns its id.
    async fn create_session(&self, agent: &str, source: &str) -> Result<String, JournalError>;
    /// The committed turns of `session`, in order (`NoSession` if unknown).
    async fn turns(&self, session: &str) -> Result<Vec<TurnRecord>, JournalError>;
    /// Writes one committed round at `idx` in one transaction (invariant 1).
    async fn append_turn(
        &self,
        session: &str,
        idx: i64,
        round: &CommittedRound,
        fence: Option<i64>,
    ) -> Result<(), JournalError>;
    /// Adds a run's quarantined-result count to the session's.
    async fn finish_session(&self, session: &str, quarantined: u64) -> Result<(), JournalError>;
    /// All sessions, newest first.
    async fn sessions(&self) -> Result<Vec<SessionSummary>, JournalError>;
    /// The flows' key-value store of `session`.
    async fn kv(&self, session: &str) -> Result<BTreeMap<String, String>, JournalError>;
    /// Takes `session`'s lease for `owner` for `ttl` (invariant 2); `None`
    /// when another live lease holds it.
    async fn acquire_lease(
        &self,
        session: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, JournalError>;
    /// Extends the given leases by `ttl`; returns the sessions extended
    /// (the others are lost, invariant 2).
    async fn renew_leases(
        &self,
        leases: &[(String, i64)],
        ttl: Duration,
    ) -> Result<Vec<String>, JournalError>;
    /// Gives up a lease (no-op when the token no longer holds it).
    async fn release_lease(&self, session: &str, token: i64) -> Result<(), JournalError>;
    /// Stores this instance's router telemetry snapshot (replacing its last).
    async fn save_telemetry(&self, instance: &str, snapshot: &str) -> Result<(), JournalError>;
    /// The snapshots saved within `window`, newest first, one per instance.
    async fn load_telemetry(&self, window: Duration) -> Result<Vec<String>, JournalError>;
}

/// Opens the store at `location` (migrations applied; refused at start when
/// unusable, journal invariant 2). `password_env` names the variable holding
/// a PostgreSQL password (`PGPASSWORD` when `None`).
pub async fn open_store(
    location: &JournalLocation,
    password_env: Option<&str>,
) -> Result<Arc<dyn Store>, JournalError> {
    Ok(match location {
        JournalLocation::Sqlite(path) => {
            Arc::new(super::sqlite_store::SqliteStore::open(path.clone()).await?)
        }
        JournalLocation::Postgres(url) => {
            Arc::new(super::postgres::PgStore::open(url, password_env).await?)
        }
    })
}

/// A fresh random session id (16 hex digits).
pub fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A fresh random lease token (never 0).
pub fn new_token() -> i64 {
    (rand::random::<u64>() >> 1).max(1) as i64
}
