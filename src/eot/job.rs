//! The audio judge as a cancellable job: one Smart Turn call per pause, on
//! its own thread (never on the frame path), reporting the probability of
//! "turn complete" with its compute cost so replay can place it on the
//! timeline like any task result.
//!
//! # Invariants
//! 1. A job reports at most once, tagged with its id; a job cancelled before
//!    it ran reports nothing (the session has already forgotten it).
//! 2. `cost` is wall time of the call (`CostMode::Wall`) or zero
//!    (`CostMode::Zero`, deterministic replays).

use crate::agent::CostMode;
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// An audio end-of-turn model: probability that the user finished speaking.
pub trait TurnModel: Send + Sync {
    /// Name for logs and the event log.
    fn name(&self) -> &str;
    /// `audio` is the utterance so far, 16 kHz mono, ending at the pause.
    fn probability(&self, audio: &[i16]) -> Result<f32, String>;
}

/// What a job reports.
#[derive(Debug)]
pub struct JudgeResult {
    pub id: u64,
    pub probability: Result<f32, String>,
    pub cost: Duration,
}

/// Starts one job (invariant 1).
pub fn spawn(
    model: Arc<dyn TurnModel>,
    id: u64,
    audio: Vec<i16>,
    cancel: CancellationToken,
    tx: Sender<JudgeResult>,
    mode: CostMode,
) {
    let run = move || {
        if cancel.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let probability = model.probability(&audio);
        let cost = match mode {
            CostMode::Wall => started.elapsed(),
            CostMode::Zero => Duration::ZERO,
        };
        if !cancel.is_cancelled() {
            let _ = tx.send(JudgeResult {
                id,
                probability,
                cost,
            });
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("colloquy-eot".into())
        .spawn(run)
    {
        tracing::error!(error = %e, "cannot start the end-of-turn judge thread");
    }
}
