//! Warm start of a session: while the user is still speaking their first
//! words, the agent loads what every reply of this session starts with (the
//! system prompt and any resumed history) into the language model's cache,
//! so the first turn costs what a later turn costs. The session starts it
//! on its first frame ([`super::Agent::warm_up`]) and logs `prefill_done`
//! when it finishes.
//!
//! # Invariants
//! 1. A warm-up never touches the conversation: it only fills model caches,
//!    and a failed one is reported and otherwise ignored (the turn then
//!    pays its own prefill).
//! 2. The prefix is exactly what the next turn's request starts with: the
//!    same request builder, minus the user's message.

use super::voice::VoiceOptions;
use crate::flows::FlowState;
use crate::llm::router::Router;
use crate::llm::{ChatMessage, Prefilled};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What a warm-up did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Warmed {
    /// Tokens of the prefix, and how many were already cached.
    pub prefilled: Prefilled,
    /// Wall time it took.
    pub cost: Duration,
    /// Why it failed, if it did (invariant 1).
    pub error: Option<String>,
}

/// A running warm-up; [`WarmUp::result`] is set once it is finished.
/// (Not `Clone`: [`WarmUp::pending`] counts the handles.)
#[derive(Debug)]
pub struct WarmUp {
    done: Arc<OnceLock<Warmed>>,
    started: Instant,
}

impl WarmUp {
    /// Runs `work` on `runtime`; `Ok(None)` means there was nothing to warm
    /// (then no result is ever set).
    pub fn spawn<F>(runtime: &tokio::runtime::Handle, work: F) -> Self
    where
        F: Future<Output = Result<Option<Prefilled>, String>> + Send + 'static,
    {
        let done = Arc::new(OnceLock::new());
        let started = Instant::now();
        let slot = Arc::clone(&done);
        runtime.spawn(async move {
            let r = work.await;
            let cost = started.elapsed();
            let warmed = match r {
                Ok(Some(prefilled)) => Warmed {
                    prefilled,
                    cost,
                    error: None,
                },
                Ok(None) => return,
                Err(e) => Warmed {
                    cost,
                    error: Some(e),
                    ..Warmed::default()
                },
            };
            let _ = slot.set(warmed);
        });
        Self { done, started }
    }

    /// The result, once finished.
    pub fn result(&self) -> Option<&Warmed> {
        self.done.get()
    }

    /// Wall time since it started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether it can still report (not finished, and its task alive).
    pub fn pending(&self) -> bool {
        self.done.get().is_none() && Arc::strong_count(&self.done) > 1
    }
}

/// The messages every reply of a session with `history` starts with: the
/// system prompt (the flow node's, when there is a flow) and the recent
/// history (holds invariant 2).
pub fn prefix(options: &VoiceOptions, history: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut request = match &options.flow {
        Some(flow) => {
            let state = FlowState::from_history(flow, history);
            super::flow::model_request(flow, &state, options, history, "", None)
        }
        None => super::voice::build_request(options, history, ""),
    };
    // The user's (empty) message is the turn's own.
    request.messages.pop();
    request.messages
}

/// The voice agent's warm-up: every model of the router prefills the prefix
/// (hosted models do nothing).
pub fn voice_warm_up(
    router: &Arc<Router>,
    options: &VoiceOptions,
    history: &[ChatMessage],
    runtime: &tokio::runtime::Handle,
) -> Option<WarmUp> {
    let messages = prefix(options, history);
    let router = Arc::clone(router);
    Some(WarmUp::spawn(runtime, async move {
        let mut warmed = None;
        for candidate in router.candidates() {
            match candidate.model.prefill(&messages).await {
                Ok(Some(p)) => warmed = Some(p),
                Ok(None) => {}
                Err(e) => return Err(format!("{}: {e}", candidate.key)),
            }
        }
        Ok(warmed)
    }))
}
