//! The LLM router: each turn, the shared routing core ([`crate::route`])
//! orders the candidate models (the embedded one and hosted ones) from
//! rolling telemetry and load; the turn runs as a hedged race on the first
//! token with fallback to the next model.
//!
//! # Invariants
//! 1. Planning is the core's (route plan invariants): a model in cooldown is
//!    planned only when nothing else is left; the configured order is the
//!    preference within `prefer_within_ms`; hysteresis and a dwell prevent
//!    flapping; untried and recovering models are probed beside the chosen
//!    one; exploration is seeded.
//! 2. Hedged first token: when the chosen model has streamed no token by its
//!    rolling p90 (bounded by `hedge_min_ms`..`hedge_max_ms`) the next model
//!    starts; the first token wins. Each leg ends with exactly one terminal
//!    span event; a loser's is `cancelled` with reason `hedge_lost` (a hosted
//!    loser runs on as a shadow until its own first token, to be measured).
//! 3. Fallback: a leg failing before its first token (429, 5xx, reset,
//!    malformed stream, unreachable, first-token timeout) starts the next
//!    model at once. With more than one candidate a leg makes one attempt:
//!    the next model is the retry.
//! 4. A winner failing after it streamed text (a stall past `stall_ms`, an
//!    error) is *continued*: the next healthy model gets the request plus
//!    the text the consumer received as a final assistant message
//!    (`continuation`), and its text follows with no restart, a repeated
//!    prefix stripped — so what was said stays said, and the reply goes on
//!    within the stall limit plus the next model's first token. The
//!    continuation race is a race like the first (hedge, fallback) over the
//!    models not yet tried in this turn; its note's first attempt says
//!    `continue`. With no model left the turn ends with `Failed` and the
//!    consumer ends the reply cleanly with what was said. A winner that
//!    failed after a tool call (or only whitespace) restarts on the next
//!    model ([`TurnItem::Restart`]) while no audio was played, else fails.
//! 5. The consumer gets exactly one of `Done`, `Failed` or `Cancelled` last;
//!    a cancel carries its reason (barge-in, shutdown, deadline). The
//!    reason comes with the cancel itself (`frame::CancelSignal`): the job
//!    token's reason reaches every leg; a reply dropped while its turn was
//!    not cancelled ends its legs `reply_ended`.

use crate::frame::CancelReason;
use crate::llm::config::{key_env, resolve_key, ConfigError, Entry, LlmConfig};
use crate::llm::continuation::{continuation_request, RepeatGuard};
use crate::llm::leg::{CancelSignal, LegInput, LegItem, LegModel, LegOutcome, LegRunner};
use crate::llm::openai::OpenAiChat;
use crate::llm::span::SpanSink;
use crate::llm::telemetry::Telemetry;
use crate::llm::{ChatDelta, ChatModel, ChatRequest, ErrorClass, LlmError, Price};
use crate::route::note::Why;
use crate::route::{
    race, Loss, Notes, Observed, Plan, RaceEnd, RouteCore, RouteNote, RoutePolicy, Stage,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Routing knobs (the `[router]` table; shared by every stage).
pub type RouterPolicy = RoutePolicy;

/// A candidate model of the router.
pub type Candidate = LegModel;

impl LegModel {
    /// A candidate keyed `provider/model`.
    pub fn new(model: Arc<dyn ChatModel>, price: Option<Price>) -> Self {
        Self {
            key: format!("{}/{}", model.provider(), model.model()),
            price,
            local: model.provider() == crate::llm::EMBEDDED_PROVIDER,
            model,
        }
    }
}

/// The order a turn tries the candidates in.
pub type RoutePlan = Plan;

/// Picks models per turn and runs turns (see the module invariants).
#[derive(Debug)]
pub struct Router {
    candidates: Vec<Candidate>,
    runner: LegRunner,
    /// The runner without same-model retries (invariant 3).
    single_shot: LegRunner,
    core: RouteCore,
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
        // A turn already cancelled keeps its reason (a barge-in or shutdown
        // of the job token stays one: the child reads its parent's, frame
        // cancel invariant 3). Otherwise the consumer stopped reading.
        if !self.task.is_finished() && !self.cancel.is_cancelled() {
            self.cancel.cancel(CancelReason::ReplyEnded);
        }
    }
}

/// What the consumer of a turn received since its last restart.
#[derive(Debug, Default)]
struct Said {
    text: String,
    /// A tool call went out: such a reply is not continued.
    tool: bool,
}

/// A leg that streamed its first item: the rest follows on `rx`.
struct Leg {
    first: LegItem,
    rx: mpsc::Receiver<LegItem>,
    handle: tokio::task::JoinHandle<LegOutcome>,
}

/// How a leg ended before its first item.
#[derive(Debug)]
enum LegEnd {
    Failed(LlmError),
    Cancelled(CancelReason),
}

impl Router {
    /// A router over `candidates` (in preference order).
    pub fn new(candidates: Vec<Candidate>, runner: LegRunner, policy: RouterPolicy) -> Self {
        let mut single_shot = runner.clone();
        single_shot.retry.max_attempts = 1;
        let core = RouteCore::new(
            Stage::Llm,
            candidates
                .iter()
                .map(|c| (c.key.clone(), c.local))
                .collect(),
            policy,
            runner.telemetry.clone(),
        );
        Self {
            candidates,
            runner,
            single_shot,
            core,
        }
    }

    /// Builds the candidates of `config.models` (hosted ones from their
    /// spec, keys from `env`; `embedded` is `embedded`, which must then be
    /// given).
    pub fn from_config_with(
        config: &LlmConfig,
        embedded: Option<Candidate>,
        sink: SpanSink,
        telemetry: Telemetry,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut candidates = Vec::new();
        for entry in config.llm_candidates() {
            match entry {
                Entry::Embedded => {
                    match &embedded {
                        Some(c) => candidates.push(c.clone()),
                        None => return Err(ConfigError::Invalid {
                            origin: "--llm".into(),
                            message: "`embedded` is listed but no embedded model was loaded".into(),
                            hint:
                                "list BASE_URL::MODEL candidates, or run with the embedded models"
                                    .into(),
                        }),
                    }
                }
                Entry::Hosted(spec) => {
                    let var = key_env(spec.api_key_env.as_deref(), spec.default_key, env);
                    let key = resolve_key(var.as_deref(), &spec.key(), env)?;
                    let model = OpenAiChat::new(
                        spec.provider_name(),
                        &spec.base_url,
                        spec.model.clone(),
                        key,
                    );
                    candidates.push(Candidate::new(Arc::new(model), spec.price));
                }
            }
        }
        let runner = LegRunner::new(sink, telemetry, config.retry.clone(), config.leg.clone());
        Ok(Self::new(candidates, runner, config.router.clone()))
    }

    /// [`Router::from_config_with`] without an embedded model.
    pub fn from_config(
        config: &LlmConfig,
        sink: SpanSink,
        telemetry: Telemetry,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::from_config_with(config, None, sink, telemetry, env)
    }

    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    pub fn runner(&self) -> &LegRunner {
        &self.runner
    }

    /// The routing core (planner, in-flight counts).
    pub fn core(&self) -> &RouteCore {
        &self.core
    }

    /// How often the first place changed (excluding exploration picks).
    pub fn switches(&self) -> u64 {
        self.core.planner().switches()
    }

    /// The plan for the next turn (invariant 1).
    pub fn plan(&self) -> RoutePlan {
        self.core.plan()
    }

    /// [`Router::plan`] on given observations (one per candidate, in order).
    pub fn plan_from(&self, observed: &[Observed]) -> RoutePlan {
        self.core.planner().plan(observed)
    }

    /// Starts a turn: plans, then runs the race with fallback in a task.
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
        // The turn's route notes (the caller's scope, if any) go with the
        // turn's task.
        let notes = Notes::current().unwrap_or_default();
        let task = tokio::spawn(notes.scope(async move { router.run_turn(input, tx).await }));
        TurnReply {
            rx,
            audio_played,
            cancel,
            task,
        }
    }

    /// Starts candidate `i`'s leg in its own task; the future resolves at
    /// its first item or its end (invariant 2).
    fn start_leg(
        &self,
        i: usize,
        signal: CancelSignal,
        input: &LegInput,
        leg_id: u64,
        runner: &LegRunner,
    ) -> BoxFuture<'static, Result<Leg, LegEnd>> {
        let cand = self.candidates[i].clone();
        let guard = self.core.in_flight(i);
        let (ltx, mut lrx) = mpsc::channel(64);
        let leg_input = LegInput {
            cancel: signal,
            ..input.clone()
        };
        let runner = runner.clone();
        let handle = tokio::spawn(async move {
            let _guard = guard;
            runner.run(&cand, &leg_input, leg_id, &ltx).await
        });
        async move {
            match lrx.recv().await {
                Some(first) => Ok(Leg {
                    first,
                    rx: lrx,
                    handle,
                }),
                None => Err(match handle.await {
                    Ok(LegOutcome::Failed { error, .. }) => LegEnd::Failed(error),
                    Ok(LegOutcome::Cancelled(r)) => LegEnd::Cancelled(r),
                    Ok(LegOutcome::Completed) => LegEnd::Failed(LlmError::new(
                        ErrorClass::Malformed,
                        "router",
                        "the leg completed without any output",
                    )),
                    Err(e) => LegEnd::Failed(LlmError::new(
                        ErrorClass::Other,
                        "router",
                        format!("the leg task ended abnormally: {e}"),
                    )),
                }),
            }
        }
        .boxed()
    }

    /// Forwards a winning leg to the consumer, keeping in `said` the text
    /// it received (since its last restart); a continuation's text goes
    /// through `guard` (invariant 4). Returns how the leg ended.
    async fn forward(
        leg: Leg,
        tx: &mpsc::Sender<TurnItem>,
        said: &mut Said,
        mut guard: Option<RepeatGuard>,
    ) -> LegOutcome {
        let Leg {
            first,
            mut rx,
            handle,
        } = leg;
        let mut next = Some(first);
        while let Some(item) = next {
            let item = match item {
                LegItem::Delta(ChatDelta::Text(t)) => {
                    let t = match guard.as_mut() {
                        Some(g) => g.push(&t),
                        None => t,
                    };
                    if t.is_empty() {
                        next = rx.recv().await;
                        continue;
                    }
                    said.text.push_str(&t);
                    TurnItem::Delta(ChatDelta::Text(t))
                }
                LegItem::Delta(d) => {
                    if matches!(d, ChatDelta::ToolCall(_)) {
                        said.tool = true;
                    }
                    if matches!(d, ChatDelta::Finished { .. }) {
                        if let Some(g) = guard.as_mut() {
                            g.finish();
                        }
                    }
                    TurnItem::Delta(d)
                }
                LegItem::Restart { model, after } => {
                    *said = Said::default();
                    TurnItem::Restart { model, after }
                }
            };
            if tx.send(item).await.is_err() {
                break;
            }
            next = rx.recv().await;
        }
        drop(rx);
        handle
            .await
            .unwrap_or(LegOutcome::Cancelled(CancelReason::Shutdown))
    }

    async fn run_turn(self: Arc<Self>, input: LegInput, tx: mpsc::Sender<TurnItem>) {
        let plan = self.core.plan();
        let leg_id = self.runner.next_id();
        // Holds invariant 3.
        let runner = if self.candidates.len() > 1 {
            &self.single_shot
        } else {
            &self.runner
        };
        let mut last_error = LlmError::new(
            ErrorClass::Other,
            "router",
            "no LLM candidates configured (fix: add --llm embedded or --llm BASE_URL::MODEL)",
        );
        let mut exclude: Vec<usize> = Vec::new();
        let mut delivered_any = false;
        // What the consumer received, and whether the next race continues it.
        let mut said = Said::default();
        let mut continuing = false;
        loop {
            // Holds invariant 4.
            if delivered_any && !continuing && input.audio_played.load(Ordering::Acquire) {
                break;
            }
            let race_input = if continuing {
                LegInput {
                    request: continuation_request(&input.request, &said.text),
                    ..input.clone()
                }
            } else {
                input.clone()
            };
            let spec = self.core.race_spec(exclude.clone());
            let end = race(
                &plan,
                &spec,
                &input.cancel,
                |i, signal| self.start_leg(i, signal, &race_input, leg_id, runner),
                // Shadowed legs record their own latency (leg invariant 5).
                || Box::new(|_: usize, _: std::time::Duration, _: bool| {}),
            )
            .await;
            if self.candidates.len() > 1 && !matches!(end, RaceEnd::Cancelled { .. }) {
                // Route note invariant 1; recorded before the winner's first
                // item is forwarded, so the consumer finds it there.
                let keys: Vec<String> = self.candidates.iter().map(|c| c.key.clone()).collect();
                let mut attempts = end.attempts(&keys);
                if continuing {
                    for a in attempts.iter_mut().filter(|a| a.why == Why::First) {
                        a.why = Why::Continue;
                    }
                }
                Notes::record(RouteNote::new("llm", attempts));
            }
            match end {
                RaceEnd::Won {
                    index,
                    value,
                    hedged,
                    losses,
                    ..
                } => {
                    for loss in &losses {
                        if let Loss::Failed { index, .. } = loss {
                            exclude.push(*index);
                        }
                    }
                    exclude.push(index);
                    let key = self.candidates[index].key.clone();
                    if hedged {
                        tracing::info!(model = %key, epoch = input.epoch, "llm hedge won");
                    }
                    if delivered_any && !continuing {
                        let restart = TurnItem::Restart {
                            model: key.clone(),
                            after: last_error.class,
                        };
                        if tx.send(restart).await.is_err() {
                            return;
                        }
                        said = Said::default();
                    }
                    let guard = continuing.then(|| RepeatGuard::new(&said.text));
                    if continuing {
                        tracing::info!(model = %key, epoch = input.epoch, chars = said.text.len(), "llm reply continued on the next model");
                    }
                    match Self::forward(value, &tx, &mut said, guard).await {
                        LegOutcome::Completed => {
                            let _ = tx.send(TurnItem::Done { model: key }).await;
                            return;
                        }
                        LegOutcome::Cancelled(reason) => {
                            let _ = tx.send(TurnItem::Cancelled(reason)).await;
                            return;
                        }
                        LegOutcome::Failed { error, delivered } => {
                            delivered_any |= delivered;
                            tracing::info!(model = %key, class = ?error.class, "llm leg failed after its first token");
                            last_error = error;
                            if input.cancel.is_cancelled() {
                                let _ = tx.send(TurnItem::Cancelled(input.cancel.reason())).await;
                                return;
                            }
                            if Instant::now() >= input.deadline {
                                break;
                            }
                            // Holds invariant 4.
                            continuing = !said.text.trim().is_empty() && !said.tool;
                        }
                    }
                }
                RaceEnd::Failed { losses, .. } => {
                    for loss in losses {
                        match loss {
                            Loss::Failed {
                                error: LegEnd::Failed(e),
                                ..
                            } => last_error = e,
                            Loss::Failed {
                                error: LegEnd::Cancelled(reason),
                                ..
                            } => {
                                let _ = tx.send(TurnItem::Cancelled(reason)).await;
                                return;
                            }
                            Loss::Lost { .. } => {}
                        }
                    }
                    break;
                }
                RaceEnd::Cancelled { reason, .. } => {
                    let _ = tx.send(TurnItem::Cancelled(reason)).await;
                    return;
                }
            }
        }
        let _ = tx.send(TurnItem::Failed(last_error)).await;
    }
}
