//! The server's journal: one SQLite connection for every WebSocket
//! conversation of `colloquy serve`, and the leases that let a connection
//! write (or resume) one journal session.
//!
//! A connection claims a session at its start ([`ServerJournal::claim`]):
//! a new one, or the one the client names (`?session=ID`), whose committed
//! turns become the new pipeline's starting context and the page's
//! `history`. The claim is a [`SessionLease`]; while it lives, no other
//! connection of this server can claim that id.
//!
//! # Invariants
//! 1. A journal session is written by at most one live connection of this
//!    server at a time: ids are claimed in `live` under its lock and released
//!    only when the [`SessionLease`] drops.
//! 2. Committed rounds are written at commit time, one transaction each
//!    ([`crate::journal::Journal::append_turn`]), before the connection
//!    forwards the `committed` event: a client that saw `committed` finds the
//!    turn in the history of its next connection.
//! 3. The journal never ends a conversation: a session that cannot be
//!    claimed is an error event (then a fresh session, or a close for one in
//!    use), a write that fails is an `error` event from `"journal"`, and the
//!    conversation goes on (invariant 2 of [`crate::journal`]).
//! 4. The `journal` mutex is held for one SQLite call at a time, never across
//!    an `.await`.

use super::protocol::{ErrorCode, HistoryTurn, ProtocolError};
use crate::journal::{Journal, JournalError, TurnRecord};
use crate::llm::ChatMessage;
use crate::session::Session;
use crate::turn::CommittedRound;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Longest session id a client may send.
pub const MAX_SESSION_ID_LEN: usize = 64;

/// The journal shared by every connection of one server.
pub struct ServerJournal {
    journal: Mutex<Journal>,
    /// Session ids held by live connections (invariant 1).
    live: Mutex<HashSet<String>>,
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
    /// Opens the journal at `path` (refused at start when unusable,
    /// invariant 2 of [`crate::journal`]).
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        Ok(Self {
            journal: Mutex::new(Journal::open(path)?),
            live: Mutex::new(HashSet::new()),
            released: Notify::new(),
        })
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        // A panic while holding the lock leaves SQLite consistent (each
        // write is one transaction): go on with the inner value.
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims a session for one connection: the one named by `requested`
    /// (resumed, its turns returned), or a new one. A malformed or unknown
    /// id gets an error and a new session; an id held by another connection
    /// is waited for up to `wait` (a reloading page's old socket may still
    /// be closing), then refused: the `Err` is a `session_in_use` error and
    /// the connection is to be closed (invariant 1).
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
        let created = self.journal().start_session(None, agent, source);
        Ok(match created {
            Ok(id) => {
                self.live().insert(id.clone());
                Claim {
                    lease: Some(self.lease(id)),
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
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a release in between wakes us.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.live().insert(id.to_string()) {
                break;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(ProtocolError::new(
                    ErrorCode::SessionInUse,
                    format!(
                        "session {id} is open in another connection (another tab?); close it, or start a new conversation"
                    ),
                ));
            }
        }
        // Holds the id from here: released on every path below by the lease.
        let lease = self.lease(id.to_string());
        let turns = self.journal().turns(id);
        Ok(match turns {
            Ok(turns) => Ok(Claim {
                lease: Some(lease),
                turns,
                error: None,
            }),
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

    fn lease(self: &Arc<Self>, id: String) -> SessionLease {
        SessionLease {
            journal: self.clone(),
            id,
        }
    }
}

/// One connection's hold on a journal session; releases the id on drop
/// (invariant 1).
pub struct SessionLease {
    journal: Arc<ServerJournal>,
    id: String,
}

impl SessionLease {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes `rounds` (just drained from `session`), one transaction each; a
    /// failure becomes an `error` event of the session (invariants 2, 3).
    pub fn record(&self, session: &mut Session, rounds: &[CommittedRound]) {
        for round in rounds {
            let written = self.journal.journal().append_turn(&self.id, round);
            if let Err(e) = written {
                session.report_error("journal", e.to_string());
            }
        }
    }

    /// Records the session's quarantined-result count at its end.
    pub fn finish(&self, quarantined: u64) {
        let done = self.journal.journal().finish_session(&self.id, quarantined);
        if let Err(e) = done {
            tracing::warn!(error = %e, "journal: could not record the session summary");
        }
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
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

    fn journal() -> (tempfile::TempDir, Arc<ServerJournal>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = ServerJournal::open(&dir.path().join("j.sqlite")).expect("open");
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
        let (_dir, j) = journal();
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
        let (_dir, j) = journal();
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
        let (_dir, j) = journal();
        let first = j
            .claim(None, "parrot", "test", Duration::ZERO)
            .await
            .expect("new session");
        let lease = first.lease.expect("lease");
        let id = lease.id().to_string();
        lease.finish(2);
        drop(lease);
        let again = j
            .claim(Some(&id), "parrot", "test", Duration::ZERO)
            .await
            .expect("resumed");
        assert!(again.error.is_none());
        again.lease.expect("lease").finish(3);
        let sessions = j.journal().sessions().expect("sessions");
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].quarantined, 5);
    }
}
