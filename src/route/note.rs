//! Route notes: what a routed stage's race did in one turn — which
//! candidates started, why (first, probe, hedge, fallback, continue) and when, how
//! each ended, which one won and after how long. The voice agent collects
//! them while it runs a turn (a task-local [`Notes`]) and reports them to
//! the coordinator, which puts them into the turn's `turn_latency` event.
//!
//! # Invariants
//! 1. A note is made only for a stage with more than one candidate (the
//!    default embedded-only stack adds nothing to its events).
//! 2. Every started attempt appears once, in start order, with its start
//!    offset from the race's start and its end; a hedge's start offset is
//!    when the hedge began.
//! 3. Notes are recorded only inside a [`Notes::scope`]; outside one (a
//!    router driven directly, a benchmark) recording is a no-op.
//! 4. Races decided before the turn's first audio go into its
//!    `turn_latency`; a later one (a later sentence's TTS race, an LLM
//!    continuation) becomes its own `route` event when it is
//!    [`RouteNote::eventful`].

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Why an attempt started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The plan's first candidate.
    First,
    /// Beside the first: an untried or recovering candidate measured.
    Probe,
    /// The first had no result by the hedge deadline.
    Hedge,
    /// A running attempt failed before its first result.
    Fallback,
    /// The model streaming the reply stalled or failed after it sent
    /// text: this one continues that text (LLM only, after the first
    /// audio usually, so the note comes as a `route` event).
    Continue,
}

/// How an attempt ended (as far as the race saw).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    Won,
    /// Another won first (cancelled `hedge_lost`, or left as a shadow).
    Lost,
    Failed,
    /// The turn was cancelled (barge-in, shutdown, deadline).
    Cancelled,
}

/// One started attempt (invariant 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptNote {
    /// The candidate's store key.
    pub model: String,
    pub why: Why,
    /// From the race's start to this attempt's start.
    pub start_ms: u64,
    pub end: End,
    /// From this attempt's start to its end (its first result when it won).
    pub ms: u64,
}

/// One race of one stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteNote {
    /// `stt`, `llm` or `tts`.
    pub stage: String,
    /// The candidate that answered (`None`: none did).
    pub winner: Option<String>,
    /// More than one attempt ran (a probe, a hedge or a fallback).
    pub hedged: bool,
    /// When the hedge started, from the race's start (`None`: no hedge).
    pub hedge_ms: Option<u64>,
    pub attempts: Vec<AttemptNote>,
}

impl RouteNote {
    /// The note of a race from its attempts (in start order).
    pub fn new(stage: &str, attempts: Vec<AttemptNote>) -> Self {
        let winner = attempts
            .iter()
            .find(|a| a.end == End::Won)
            .map(|a| a.model.clone());
        let hedge_ms = attempts
            .iter()
            .find(|a| a.why == Why::Hedge)
            .map(|a| a.start_ms);
        Self {
            stage: stage.to_string(),
            winner,
            hedged: attempts.len() > 1,
            hedge_ms,
            attempts,
        }
    }

    /// The race did more than its first candidate answering alone: a
    /// probe, a hedge, a fallback or a continuation ran, or nothing won.
    /// After a turn's first audio only such notes become `route` events
    /// (one per later sentence otherwise).
    pub fn eventful(&self) -> bool {
        self.hedged || self.winner.is_none() || self.attempts.iter().any(|a| a.why != Why::First)
    }
}

tokio::task_local! {
    static NOTES: Notes;
}

/// The notes of one turn, shared by the tasks that run it.
#[derive(Clone, Debug, Default)]
pub struct Notes(Arc<Mutex<Vec<RouteNote>>>);

impl Notes {
    /// The notes of the running scope, if any (invariant 3).
    pub fn current() -> Option<Notes> {
        NOTES.try_with(|n| n.clone()).ok()
    }

    /// Records `note` in the running scope (a no-op outside one).
    pub fn record(note: RouteNote) {
        if let Some(n) = Self::current() {
            n.push(note);
        }
    }

    pub fn push(&self, note: RouteNote) {
        if let Ok(mut v) = self.0.lock() {
            v.push(note);
        }
    }

    /// Takes the notes recorded so far.
    pub fn take(&self) -> Vec<RouteNote> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Runs `f` with these notes as the current ones.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        NOTES.scope(self, f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(model: &str, why: Why, start_ms: u64, end: End) -> AttemptNote {
        AttemptNote {
            model: model.into(),
            why,
            start_ms,
            end,
            ms: 10,
        }
    }

    #[tokio::test]
    async fn a_note_names_the_winner_and_the_hedge_and_records_only_in_a_scope() {
        let note = RouteNote::new(
            "llm",
            vec![
                attempt("h/slow", Why::First, 0, End::Lost),
                attempt("embedded/smol", Why::Hedge, 300, End::Won),
            ],
        );
        assert_eq!(note.winner.as_deref(), Some("embedded/smol"));
        assert_eq!(note.hedge_ms, Some(300));
        assert!(note.hedged);
        assert!(note.eventful());
        let alone = RouteNote::new("tts", vec![attempt("tts:a/b", Why::First, 0, End::Won)]);
        assert!(!alone.eventful(), "the first candidate answering alone");
        let continued = RouteNote::new("llm", vec![attempt("a/b", Why::Continue, 0, End::Won)]);
        assert!(continued.eventful());
        Notes::record(note.clone());
        let notes = Notes::default();
        notes
            .clone()
            .scope(async { Notes::record(note.clone()) })
            .await;
        assert_eq!(notes.take(), [note]);
        assert!(notes.take().is_empty());
    }
}
