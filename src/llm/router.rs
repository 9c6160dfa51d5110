//! The router: for each turn, orders the candidate models by expected time
//! to first token, with hysteresis and a little exploration, and runs the
//! turn's leg with fallback to the next model.
//!
//! # Invariants
//! 1. A model in a rate-limit cooldown, or whose recent success rate is
//!    below `min_success_rate`, is not healthy; unhealthy models are planned
//!    only when no healthy model is left.
//! 2. Hysteresis: the incumbent keeps the first place unless a challenger's
//!    score beats it by more than `hysteresis_ratio` *and* `hysteresis_ms`,
//!    or the incumbent is unhealthy. An exploration pick never changes the
//!    incumbent.
//! 3. With no latency known, the configured order is the preference.
//! 4. A turn falls back to the next model only while no audio of the turn was
//!    played; the consumer gets [`TurnItem::Restart`] before the next model's
//!    text, and exactly one of `Done`, `Failed` or `Cancelled` last.
//! 5. Exploration draws from a seeded RNG, so routing is reproducible under
//!    a fixed `seed`.

use crate::frame::CancelReason;
use crate::llm::config::{resolve_key, ConfigError, LlmConfig};
use crate::llm::leg::{CancelSignal, LegInput, LegItem, LegModel, LegOutcome, LegRunner};
use crate::llm::openai::OpenAiChat;
use crate::llm::span::SpanSink;
use crate::llm::telemetry::{ModelSummary, Telemetry};
use crate::llm::{ChatDelta, ChatModel, ChatRequest, ErrorClass, LlmError, Price};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Routing knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterPolicy {
    /// A challenger must be this much faster, relatively …
    pub hysteresis_ratio: f64,
    /// … and by this many milliseconds, to take the first place.
    pub hysteresis_ms: u64,
    /// Share of turns that try a random other healthy model first.
    pub exploration_rate: f64,
    /// Score added per unit of failure rate (ms).
    pub failure_penalty_ms: u64,
    /// Below this recent success rate (with `min_samples`) a model is unhealthy.
    pub min_success_rate: f64,
    pub min_samples: usize,
    /// RNG seed for exploration; random when absent.
    pub seed: Option<u64>,
}

impl Default for RouterPolicy {
    fn default() -> Self {
        Self {
            hysteresis_ratio: 0.2,
            hysteresis_ms: 50,
            exploration_rate: 0.05,
            failure_penalty_ms: 2_000,
            min_success_rate: 0.34,
            min_samples: 3,
            seed: None,
        }
    }
}

/// A candidate model of the router.
pub type Candidate = LegModel;

impl LegModel {
    /// A candidate keyed `provider/model`.
    pub fn new(model: Arc<dyn ChatModel>, price: Option<Price>) -> Self {
        Self {
            key: format!("{}/{}", model.provider(), model.model()),
            price,
            model,
        }
    }
}

/// The order a turn tries the candidates in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePlan {
    /// Candidate indices, first tried first.
    pub order: Vec<usize>,
    /// The first place is an exploration pick.
    pub explored: bool,
    /// How many of `order` are healthy (they come first).
    pub healthy: usize,
}

#[derive(Debug)]
struct RouterState {
    incumbent: Option<usize>,
    rng: StdRng,
    switches: u64,
}

/// Picks models per turn and runs turns (see the module invariants).
#[derive(Debug)]
pub struct Router {
    candidates: Vec<Candidate>,
    runner: LegRunner,
    policy: RouterPolicy,
    state: Mutex<RouterState>,
}

/// What a turn's consumer receives, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnItem {
    /// The reply's text and tool calls (its `Finished` comes just before `Done`).
    Delta(ChatDelta),
    /// Discard the text received so far; `model` starts over (invariant 4).
    Restart {
        model: String,
        after: ErrorClass,
    },
    /// The reply is complete; `model` answered.
    Done {
        model: String,
    },
    /// No model could answer.
    Failed(LlmError),
    Cancelled(CancelReason),
}

/// A running turn: a stream of [`TurnItem`]s. Dropping it cancels the turn.
#[derive(Debug)]
pub struct TurnReply {
    rx: mpsc::Receiver<TurnItem>,
    audio_played: Arc<AtomicBool>,
    cancel: CancelSignal,
    task: tokio::task::JoinHandle<()>,
}

impl TurnReply {
    /// The next item; `None` after the last.
    pub async fn next(&mut self) -> Option<TurnItem> {
        self.rx.recv().await
    }

    /// Tells the turn that its audio started playing: from now on a failure
    /// is final, no fallback (invariant 4).
    pub fn mark_audio_played(&self) {
        self.audio_played.store(true, Ordering::Release);
    }

    /// The flag [`TurnReply::mark_audio_played`] sets, for another task.
    pub fn audio_played_flag(&self) -> Arc<AtomicBool> {
        self.audio_played.clone()
    }

    /// Cancels the turn with `reason`.
    pub fn cancel(&self, reason: CancelReason) {
        self.cancel.cancel(reason);
    }
}

impl futures::Stream for TurnReply {
    type Item = TurnItem;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<TurnItem>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for TurnReply {
    fn drop(&mut self) {
        if !self.task.is_finished() {
            self.cancel.cancel(CancelReason::Shutdown);
        }
    }
}

impl Router {
    /// A router over `candidates` (in preference order, invariant 3).
    pub fn new(candidates: Vec<Candidate>, runner: LegRunner, policy: RouterPolicy) -> Self {
        let rng = match policy.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Self {
            candidates,
            runner,
            policy,
            state: Mutex::new(RouterState {
                incumbent: None,
                rng,
                switches: 0,
            }),
        }
    }

    /// Builds OpenAI-compatible candidates from `config.models`, keys from `env`.
    pub fn from_config(
        config: &LlmConfig,
        sink: SpanSink,
        telemetry: Telemetry,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut candidates = Vec::new();
        for spec in &config.models {
            let key = resolve_key(spec.api_key_env.as_deref(), &spec.key(), env)?;
            let model = OpenAiChat::new(
                spec.provider_name(),
                &spec.base_url,
                spec.model.clone(),
                key,
            );
            candidates.push(Candidate::new(Arc::new(model), spec.price));
        }
        let runner = LegRunner::new(sink, telemetry, config.retry.clone(), config.leg.clone());
        Ok(Self::new(candidates, runner, config.router.clone()))
    }

    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    pub fn runner(&self) -> &LegRunner {
        &self.runner
    }

    /// How often the first place changed (excluding exploration picks).
    pub fn switches(&self) -> u64 {
        self.lock().switches
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn healthy(&self, s: &ModelSummary, cooling: bool) -> bool {
        let failing = s.samples >= self.policy.min_samples
            && s.success_rate
                .is_some_and(|r| r < self.policy.min_success_rate);
        !cooling && !failing
    }

    fn score(&self, s: &ModelSummary) -> Option<f64> {
        let ttft = s.expected_ttft_ms? as f64;
        let fail = 1.0 - s.success_rate.unwrap_or(1.0);
        Some(ttft + fail * self.policy.failure_penalty_ms as f64)
    }

    /// The order for the next turn (invariants 1–3, 5).
    pub fn plan(&self) -> RoutePlan {
        let now = self.runner.telemetry.now_ms();
        let (summaries, cooling): (Vec<ModelSummary>, Vec<bool>) = {
            let store = self.runner.telemetry.lock();
            self.candidates
                .iter()
                .map(|c| (store.summary(&c.key, now), store.in_cooldown(&c.key, now)))
                .unzip()
        };
        self.plan_from(&summaries, &cooling)
    }

    /// [`Router::plan`] on given summaries (one per candidate, in order).
    pub fn plan_from(&self, summaries: &[ModelSummary], cooling: &[bool]) -> RoutePlan {
        let n = self.candidates.len();
        let healthy: Vec<bool> = (0..n)
            .map(|i| self.healthy(&summaries[i], cooling[i]))
            .collect();
        let scores: Vec<Option<f64>> = summaries.iter().map(|s| self.score(s)).collect();
        // Known scores first, fastest first; unknown after, in config order.
        let mut ranked: Vec<usize> = (0..n).filter(|&i| healthy[i]).collect();
        ranked.sort_by(|&a, &b| match (scores[a], scores[b]) {
            (Some(x), Some(y)) => x.total_cmp(&y).then(a.cmp(&b)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.cmp(&b),
        });
        let mut st = self.lock();
        // Invariant 2: hysteresis around the incumbent.
        if let Some(&best) = ranked.first() {
            let keep = st
                .incumbent
                .filter(|&inc| healthy.get(inc) == Some(&true))
                .filter(|&inc| {
                    if inc == best {
                        return true;
                    }
                    match (scores[inc], scores[best]) {
                        (Some(i), Some(b)) => {
                            let margin = (i * self.policy.hysteresis_ratio).max(0.0);
                            !(b < i - margin && b < i - self.policy.hysteresis_ms as f64)
                        }
                        // An incumbent without samples yet keeps its place
                        // until it has some.
                        (None, _) => true,
                        (Some(_), None) => true,
                    }
                });
            let first = keep.unwrap_or(best);
            if st.incumbent != Some(first) {
                if st.incumbent.is_some() {
                    st.switches += 1;
                }
                st.incumbent = Some(first);
            }
            ranked.retain(|&i| i != first);
            ranked.insert(0, first);
        }
        // Exploration (invariant 5): another healthy model first, sometimes.
        let mut explored = false;
        if ranked.len() > 1 && self.policy.exploration_rate > 0.0 {
            let roll: f64 = st.rng.gen();
            if roll < self.policy.exploration_rate {
                let pick = 1 + st.rng.gen_range(0..ranked.len() - 1);
                let chosen = ranked.remove(pick);
                ranked.insert(0, chosen);
                explored = true;
            }
        }
        drop(st);
        // Invariant 1: unhealthy models last, soonest-recovering first.
        let healthy_count = ranked.len();
        let mut rest: Vec<usize> = (0..n).filter(|&i| !healthy[i]).collect();
        rest.sort_by_key(|&i| summaries[i].cooldown_remaining_ms.unwrap_or(0));
        ranked.extend(rest);
        RoutePlan {
            order: ranked,
            explored,
            healthy: healthy_count,
        }
    }

    /// Starts a turn: plans, then runs the leg with fallback in a task.
    /// `deadline` bounds the whole turn (retries included); cancelling
    /// `cancel` (or a parent of its token) cancels the turn with that reason.
    pub fn start_turn(
        self: &Arc<Self>,
        request: ChatRequest,
        epoch: u64,
        deadline: Instant,
        cancel: CancelSignal,
    ) -> TurnReply {
        // Dropping the reply cancels only this turn's child signal.
        let cancel = cancel.child();
        let (tx, rx) = mpsc::channel(256);
        let audio_played = Arc::new(AtomicBool::new(false));
        let input = LegInput {
            request,
            epoch,
            deadline,
            cancel: cancel.clone(),
            audio_played: audio_played.clone(),
        };
        let router = self.clone();
        let task = tokio::spawn(async move { router.run_turn(input, tx).await });
        TurnReply {
            rx,
            audio_played,
            cancel,
            task,
        }
    }

    async fn run_turn(&self, input: LegInput, tx: mpsc::Sender<TurnItem>) {
        let plan = self.plan();
        let leg_id = self.runner.next_id();
        let mut last_error = LlmError::new(
            ErrorClass::Other,
            "router",
            "no LLM candidates configured (fix: add --llm BASE_URL::MODEL or [[llm.models]])",
        );
        let mut delivered_any = false;
        for (n, &i) in plan.order.iter().enumerate() {
            let cand = &self.candidates[i];
            if n > 0 && delivered_any {
                // Holds invariant 4.
                if input.audio_played.load(Ordering::Acquire) {
                    break;
                }
                let restart = TurnItem::Restart {
                    model: cand.key.clone(),
                    after: last_error.class,
                };
                if tx.send(restart).await.is_err() {
                    return;
                }
            }
            let (ltx, mut lrx) = mpsc::channel(64);
            let forward = async {
                while let Some(item) = lrx.recv().await {
                    let item = match item {
                        LegItem::Delta(d) => TurnItem::Delta(d),
                        LegItem::Restart { model, after } => TurnItem::Restart { model, after },
                    };
                    if tx.send(item).await.is_err() {
                        break;
                    }
                }
            };
            let run = async {
                let outcome = self.runner.run(cand, &input, leg_id, &ltx).await;
                drop(ltx);
                outcome
            };
            let (outcome, ()) = tokio::join!(run, forward);
            match outcome {
                LegOutcome::Completed => {
                    let _ = tx
                        .send(TurnItem::Done {
                            model: cand.key.clone(),
                        })
                        .await;
                    return;
                }
                LegOutcome::Cancelled(reason) => {
                    let _ = tx.send(TurnItem::Cancelled(reason)).await;
                    return;
                }
                LegOutcome::Failed { error, delivered } => {
                    delivered_any |= delivered;
                    tracing::info!(model = %cand.key, class = ?error.class, "llm leg failed; trying the next model");
                    last_error = error;
                    if input.cancel.is_cancelled() {
                        let _ = tx.send(TurnItem::Cancelled(input.cancel.reason())).await;
                        return;
                    }
                    if Instant::now() >= input.deadline {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(TurnItem::Failed(last_error)).await;
    }
}
