//! [`StageRoute`]: the router of a one-shot stage (STT: one utterance → one
//! transcript; TTS: one sentence → its audio). An attempt's first result is
//! its whole result, so the hedged race decides the stage at once.
//!
//! # Invariants
//! 1. Telemetry: the winner is recorded as served (latency = start to
//!    result), a loser cancelled at once as censored at its elapsed time, a
//!    shadowed loser at its measured latency, a failure with its class (a
//!    429's `Retry-After` becomes the cooldown). A cancel of the turn and a
//!    caller's bad input are not the candidate's fault and are not recorded.
//! 2. The caller gets the winner's result and key, or — every candidate
//!    having failed — the last failure; a cancelled turn gets the stage's
//!    `cancelled` error.

use super::note::{Notes, RouteNote};
use super::{race, Loss, RaceEnd, RouteCore, RoutePolicy, Stage};
use crate::frame::CancelReason;
use crate::llm::leg::CancelSignal;
use crate::llm::telemetry::Telemetry;
use crate::llm::LlmError;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One candidate of a one-shot stage.
pub struct StageCandidate<S: ?Sized> {
    /// `provider/model` (the stage prefix is added, route invariant 1).
    pub name: String,
    pub backend: Arc<S>,
    /// Runs on this machine.
    pub local: bool,
}

/// How a stage's error reads to the route.
pub trait StageError: Send + 'static {
    /// The error a cancelled attempt returns.
    fn cancelled() -> Self;
    fn is_cancelled(&self) -> bool;
    /// The caller's input is at fault (no candidate would do better).
    fn is_input(&self) -> bool;
    /// The error as the store records it (class, status, retry-after).
    fn to_llm_error(&self, key: &str) -> LlmError;
}

/// A one-shot stage's router (see the module invariants).
pub struct StageRoute<S: ?Sized> {
    core: RouteCore,
    backends: Vec<Arc<S>>,
}

impl<S: ?Sized> std::fmt::Debug for StageRoute<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRoute")
            .field("keys", &self.core.keys())
            .finish_non_exhaustive()
    }
}

impl<S: ?Sized + Send + Sync + 'static> StageRoute<S> {
    pub fn new(
        stage: Stage,
        candidates: Vec<StageCandidate<S>>,
        policy: RoutePolicy,
        telemetry: Telemetry,
    ) -> Self {
        let keys = candidates
            .iter()
            .map(|c| (stage.key(&c.name), c.local))
            .collect();
        Self {
            core: RouteCore::new(stage, keys, policy, telemetry),
            backends: candidates.into_iter().map(|c| c.backend).collect(),
        }
    }

    pub fn core(&self) -> &RouteCore {
        &self.core
    }

    /// The first candidate's backend (the preferred one).
    pub fn first(&self) -> Option<&Arc<S>> {
        self.backends.first()
    }

    /// Runs one request through the race: `attempt(backend, cancel)` starts
    /// it on one candidate (holds the module invariants).
    pub async fn run<T, E>(
        &self,
        cancel: &CancellationToken,
        attempt: impl Fn(Arc<S>, CancellationToken) -> BoxFuture<'static, Result<T, E>>,
    ) -> Result<(T, String), E>
    where
        T: Send + 'static,
        E: StageError,
    {
        let plan = self.core.plan();
        let parent = CancelSignal::new(cancel.clone(), CancelReason::BargeIn);
        let spec = self.core.race_spec(Vec::new());
        let keys = self.core.keys().to_vec();
        let telemetry = self.core.telemetry().clone();
        let end = race(
            &plan,
            &spec,
            &parent,
            |i, signal| {
                let guard = self.core.in_flight(i);
                let fut = attempt(self.backends[i].clone(), signal.token().clone());
                async move {
                    let _guard = guard;
                    fut.await
                }
                .boxed()
            },
            || {
                let telemetry = telemetry.clone();
                let keys = keys.clone();
                Box::new(
                    move |i: usize, after: std::time::Duration, censored: bool| {
                        if let Some(k) = keys.get(i) {
                            telemetry.record_lost(k, after, censored);
                        }
                    },
                )
            },
        )
        .await;
        let losses = match &end {
            RaceEnd::Won { losses, .. }
            | RaceEnd::Failed { losses, .. }
            | RaceEnd::Cancelled { losses, .. } => losses,
        };
        let cancelled = matches!(end, RaceEnd::Cancelled { .. });
        if keys.len() > 1 && !cancelled {
            // Route note invariant 1: only a routed stage is noted.
            Notes::record(RouteNote::new(
                self.core.stage().name(),
                end.attempts(&keys),
            ));
        }
        for loss in losses {
            match loss {
                Loss::Failed { index, error, .. } => {
                    if !error.is_cancelled() && !error.is_input() {
                        let e = error.to_llm_error(&keys[*index]);
                        tracing::info!(stage = self.core.stage().name(), model = %keys[*index], error = %e, "candidate failed; trying the next");
                        telemetry.record_failure(&keys[*index], &e);
                    }
                }
                Loss::Lost { index, after } => {
                    let at_once = self.core.is_local(*index) || spec.shadow_cap.is_zero();
                    if !cancelled && at_once {
                        telemetry.record_lost(&keys[*index], *after, true);
                    }
                }
            }
        }
        match end {
            RaceEnd::Won {
                index,
                value,
                after,
                ..
            } => {
                telemetry.record_served(&keys[index], Some(after), Some(after), None);
                Ok((value, keys[index].clone()))
            }
            RaceEnd::Cancelled { .. } => Err(E::cancelled()),
            RaceEnd::Failed { losses, .. } => {
                let last = losses.into_iter().rev().find_map(|l| match l {
                    Loss::Failed { error, .. } => Some(error),
                    Loss::Lost { .. } => None,
                });
                Err(last.unwrap_or_else(E::cancelled))
            }
        }
    }
}
