//! The session's warm start ([`crate::agent::warm`]): started once, when the
//! session processes its first input, and reported as `prefill_done` on the
//! session's timeline.
//!
//! # Invariants
//! 1. Started at most once per session, outside the per-frame path (the
//!    agent spawns it; the frame path only reads a finished flag).
//! 2. On a charged timeline (replay), `prefill_done` is placed at
//!    `start + cost`, like a task result, and the driver waits for a
//!    running warm-up exactly as for a running task (`must_wait`), so the
//!    event order is the one a live user would see.

use crate::agent::warm::WarmUp;
use crate::agent::{Agent, CostMode};
use crate::frame::Event;
use crate::llm::ChatMessage;
use std::sync::Arc;

use super::Pacing;

pub(super) struct WarmStart {
    agent: Arc<dyn Agent>,
    history: Vec<ChatMessage>,
    started: bool,
    running: Option<(WarmUp, u64)>,
}

impl WarmStart {
    pub(super) fn new(agent: Arc<dyn Agent>) -> Self {
        Self {
            agent,
            history: Vec::new(),
            started: false,
            running: None,
        }
    }

    /// The resumed history the session starts from.
    pub(super) fn set_history(&mut self, history: Vec<ChatMessage>) {
        self.history = history;
    }

    /// Starts the warm-up at session time `now_ms` (holds invariant 1).
    pub(super) fn begin(&mut self, now_ms: u64) {
        if self.started {
            return;
        }
        self.started = true;
        self.running = self.agent.warm_up(&self.history).map(|w| (w, now_ms));
        self.history = Vec::new();
    }

    fn due(&self, w: &WarmUp, start_ms: u64, mode: CostMode) -> u64 {
        match (w.result(), mode) {
            (_, CostMode::Zero) => start_ms,
            (Some(r), CostMode::Wall) => start_ms + r.cost.as_millis() as u64,
            (None, CostMode::Wall) => start_ms + w.elapsed().as_millis() as u64,
        }
    }

    /// Whether the driver must wait for a running warm-up before advancing
    /// past `now_ms` (holds invariant 2).
    pub(super) fn must_wait(&self, now_ms: u64, mode: CostMode) -> bool {
        match &self.running {
            Some((w, start)) => w.pending() && self.due(w, *start, mode) <= now_ms,
            None => false,
        }
    }

    /// The `prefill_done` event, once the warm-up is finished and due.
    pub(super) fn poll(&mut self, now_ms: u64, mode: CostMode, pacing: Pacing) -> Option<Event> {
        let (w, start) = self.running.as_ref()?;
        let r = match w.result() {
            Some(r) => r.clone(),
            None => {
                if !w.pending() {
                    // Nothing to warm after all.
                    self.running = None;
                }
                return None;
            }
        };
        if pacing == Pacing::Charged && self.due(w, *start, mode) > now_ms {
            return None;
        }
        self.running = None;
        Some(Event::PrefillDone {
            tokens: r.prefilled.tokens,
            reused: r.prefilled.reused,
            ms: r.cost.as_millis() as u64,
            error: r.error,
        })
    }
}
