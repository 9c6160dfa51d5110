//! The file and device transports' link to the journal: one SQLite
//! [`Journal`] per run, written from the run's own thread (these transports
//! have no async runtime; `colloquy serve` uses [`super::store`] instead).
//!
//! # Invariants
//! 1. A failed write becomes an `error` event of the session; the
//!    conversation goes on (journal invariant 2).

use super::{Journal, JournalError};
use crate::llm::ChatMessage;
use crate::turn::CommittedRound;
use std::path::Path;

/// A transport's link to the journal for one conversation: opens (or
/// resumes) the journal session, writes each committed round as it is
/// drained from the session, and reports write failures as `error` events
/// while the conversation goes on (invariant 2).
pub struct SessionJournal {
    journal: Journal,
    id: String,
}

impl SessionJournal {
    /// Opens the journal at `path` and starts a session (or resumes
    /// `resume`); returns the committed history to start from.
    pub fn open(
        path: &Path,
        resume: Option<&str>,
        agent: &str,
        source: &str,
    ) -> Result<(Self, Vec<ChatMessage>), JournalError> {
        let mut journal = Journal::open(path)?;
        let id = journal.start_session(resume, agent, source)?;
        let history = match resume {
            Some(_) => journal.history(&id)?,
            None => Vec::new(),
        };
        Ok((Self { journal, id }, history))
    }

    /// [`SessionJournal::open`] when a journal path is given; no journal and
    /// no history otherwise.
    pub fn open_optional(
        path: Option<&Path>,
        resume: Option<&str>,
        agent: &str,
        source: &str,
    ) -> Result<(Option<Self>, Vec<ChatMessage>), JournalError> {
        match path {
            Some(p) => Self::open(p, resume, agent, source).map(|(j, h)| (Some(j), h)),
            None => Ok((None, Vec::new())),
        }
    }

    /// The journal session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes `rounds` (just drained from `session`); a failure becomes an
    /// `error` event of the session.
    pub fn record(&mut self, session: &mut crate::session::Session, rounds: &[CommittedRound]) {
        for round in rounds {
            if let Err(e) = self.journal.append_turn(&self.id, round) {
                session.report_error("journal", e.to_string());
            }
        }
    }

    /// Records the session's quarantined-result count at its end.
    pub fn finish(&mut self, quarantined: u64) {
        if let Err(e) = self.journal.finish_session(&self.id, quarantined) {
            tracing::warn!(error = %e, "journal: could not record the session summary");
        }
    }
}
