//! Running one leg on one model: a span per attempt, heartbeats, first-token
//! and stall timeouts, the turn's deadline, cancellation with a reason, and
//! retries with backoff — all on the tokio clock, so tests run on paused time.
//!
//! # Invariants
//! 1. The heartbeat interval is anchored at the attempt's start
//!    (`interval_at(start + every, every)`) and is dropped before the span's
//!    terminal event is emitted, so no `stalled` ever follows a terminal.
//! 2. Cancellation (barge-in, shutdown) and the deadline drop the model's
//!    stream at once, which closes its HTTP connection (ChatModel invariant 1).
//! 3. A cancelled leg is never retried; a retry never starts past the deadline
//!    (retry invariant 3).
//! 4. When an attempt already delivered deltas, a retry is only made while no
//!    audio of the turn was played, and [`LegItem::Restart`] is sent first so
//!    the consumer discards the partial text.
//! 5. Telemetry records every completed or failed attempt; a cancel is not
//!    the model's fault and is not recorded, except a deadline hit before the
//!    first token (recorded as a timeout) and a lost hedge (recorded as lost:
//!    at its time to first token, or censored at its elapsed time).

use crate::frame::CancelReason;
use crate::llm::lifecycle::{LegState, Transition};
use crate::llm::retry::{RetryDecision, RetryPolicy};
use crate::llm::span::{LegSpan, SpanHeader, SpanSink};
use crate::llm::telemetry::Telemetry;
use crate::llm::{ChatDelta, ChatModel, ChatRequest, ErrorClass, LlmError, Price};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};

/// Timing knobs of a leg (milliseconds in config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegTimeouts {
    /// No first token within this: the attempt fails with `timeout`.
    pub first_token_ms: u64,
    /// No token for this long after the first: the attempt fails with `timeout`.
    pub stall_ms: u64,
    /// Heartbeat interval for `stalled` events.
    pub heartbeat_ms: u64,
}

impl Default for LegTimeouts {
    fn default() -> Self {
        Self {
            first_token_ms: 4_000,
            stall_ms: 3_000,
            heartbeat_ms: 500,
        }
    }
}

pub use crate::frame::CancelSignal;

/// What a leg sends to its consumer.
#[derive(Clone, Debug, PartialEq)]
pub enum LegItem {
    /// A piece of the reply from `model`.
    Delta(ChatDelta),
    /// The text sent so far is void: a new attempt (or model) starts over
    /// (invariant 4).
    Restart { model: String, after: ErrorClass },
}

/// How a leg on one model ended.
#[derive(Clone, Debug, PartialEq)]
pub enum LegOutcome {
    Completed,
    /// Failed; `delivered` says whether any delta reached the consumer.
    Failed {
        error: LlmError,
        delivered: bool,
    },
    Cancelled(CancelReason),
}

/// One candidate model with what the leg needs to know about it.
#[derive(Clone)]
pub struct LegModel {
    /// `provider/model`: the key of the store.
    pub key: String,
    pub price: Option<Price>,
    pub model: Arc<dyn ChatModel>,
    /// Runs on this machine (its requests queue; never shadowed).
    pub local: bool,
}

impl std::fmt::Debug for LegModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegModel")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The turn-level inputs of a leg.
#[derive(Clone, Debug)]
pub struct LegInput {
    pub request: ChatRequest,
    pub epoch: u64,
    pub deadline: Instant,
    pub cancel: CancelSignal,
    /// Set by the consumer once audio of this turn was played.
    pub audio_played: Arc<AtomicBool>,
}

/// Runs legs: spans, retries, telemetry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LegRunner {
    pub sink: SpanSink,
    pub telemetry: Telemetry,
    pub retry: RetryPolicy,
    pub timeouts: LegTimeouts,
    ids: Arc<AtomicU64>,
}

enum Attempt {
    Completed,
    Failed { error: LlmError, delivered: bool },
    Cancelled(CancelReason),
    ConsumerGone,
}

enum Step {
    Item(Option<Result<ChatDelta, LlmError>>),
    Cancel(CancelReason),
    Timeout,
    Tick,
}

impl LegRunner {
    pub fn new(
        sink: SpanSink,
        telemetry: Telemetry,
        retry: RetryPolicy,
        timeouts: LegTimeouts,
    ) -> Self {
        Self {
            sink,
            telemetry,
            retry,
            timeouts,
            ids: Arc::new(AtomicU64::new(1)),
        }
    }

    /// A fresh id (requests and legs share one counter).
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs a leg on `m` with retries, sending its items to `out`.
    pub async fn run(
        &self,
        m: &LegModel,
        input: &LegInput,
        leg_id: u64,
        out: &mpsc::Sender<LegItem>,
    ) -> LegOutcome {
        let mut state = LegState::Pending;
        let mut backoff = self.retry.backoff();
        let mut delivered_any = false;
        let mut attempt = 1u32;
        state = state.apply(Transition::Start).unwrap_or(state);
        loop {
            match self.attempt(m, input, leg_id, attempt, out).await {
                Attempt::Completed => {
                    debug_assert!(state.apply(Transition::Complete).is_ok());
                    return LegOutcome::Completed;
                }
                Attempt::Cancelled(reason) => return LegOutcome::Cancelled(reason),
                Attempt::ConsumerGone => return LegOutcome::Cancelled(input.cancel.reason()),
                Attempt::Failed { error, delivered } => {
                    delivered_any |= delivered;
                    let give_up = |error: LlmError| LegOutcome::Failed {
                        error,
                        delivered: delivered_any,
                    };
                    // Holds invariant 4.
                    if delivered_any && input.audio_played.load(Ordering::Acquire) {
                        return give_up(error);
                    }
                    let delay = match backoff.decide(
                        &error,
                        attempt,
                        Instant::now(),
                        input.deadline,
                    ) {
                        RetryDecision::RetryAfter(d) => d,
                        RetryDecision::GiveUp(why) => {
                            tracing::debug!(model = %m.key, ?why, "llm leg gives up on this model");
                            return give_up(error);
                        }
                    };
                    // Holds invariant 3: a cancel during the backoff ends the leg.
                    tokio::select! {
                        biased;
                        reason = input.cancel.cancelled() => return LegOutcome::Cancelled(reason),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    if delivered {
                        let restart = LegItem::Restart {
                            model: m.key.clone(),
                            after: error.class,
                        };
                        if out.send(restart).await.is_err() {
                            return LegOutcome::Cancelled(input.cancel.reason());
                        }
                    }
                    state = state.apply(Transition::Retry).unwrap_or(state);
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(
        &self,
        m: &LegModel,
        input: &LegInput,
        leg_id: u64,
        attempt: u32,
        out: &mpsc::Sender<LegItem>,
    ) -> Attempt {
        let header = SpanHeader {
            request_id: self.next_id(),
            leg_id,
            attempt,
            epoch: input.epoch,
            provider: m.model.provider().to_string(),
            model: m.model.model().to_string(),
        };
        let mut span = LegSpan::start(
            self.sink.clone(),
            header,
            input.request.prompt_chars(),
            input.request.messages.len(),
        );
        let start = span.started_at();
        let every = Duration::from_millis(self.timeouts.heartbeat_ms.max(1));
        // Holds invariant 1: anchored at the start.
        let mut heartbeat = interval_at(start + every, every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let first_token_timeout = Duration::from_millis(self.timeouts.first_token_ms);
        let stall_timeout = Duration::from_millis(self.timeouts.stall_ms);

        let model = m.model.clone();
        let request = input.request.clone();
        let mut stream = futures::stream::once(async move { model.stream(request).await })
            .map(|r| match r {
                Ok(s) => s.left_stream(),
                Err(e) => futures::stream::once(futures::future::ready(Err(e))).right_stream(),
            })
            .flatten()
            .boxed();
        let mut delivered = false;

        // Timers are registered once and moved, not re-created per token.
        let deadline = sleep_until(input.deadline);
        tokio::pin!(deadline);
        let mut timeout_at = start + first_token_timeout;
        let timeout = sleep_until(timeout_at);
        tokio::pin!(timeout);
        let cancelled = input.cancel.cancelled();
        tokio::pin!(cancelled);

        let end = loop {
            let due = if span.has_token() {
                span.last_token_at() + stall_timeout
            } else {
                start + first_token_timeout
            };
            if due != timeout_at {
                timeout_at = due;
                timeout.as_mut().reset(due);
            }
            let step = tokio::select! {
                biased;
                reason = &mut cancelled => Step::Cancel(reason),
                _ = &mut deadline => Step::Cancel(CancelReason::Deadline),
                item = stream.next() => Step::Item(item),
                _ = &mut timeout => Step::Timeout,
                _ = heartbeat.tick() => Step::Tick,
            };
            match step {
                Step::Tick => {
                    span.heartbeat(every);
                }
                Step::Cancel(reason) => break Err(Ok(reason)),
                Step::Timeout => {
                    let what = if span.has_token() {
                        "no token for"
                    } else {
                        "no first token within"
                    };
                    let limit = if span.has_token() {
                        stall_timeout
                    } else {
                        first_token_timeout
                    };
                    break Err(Err(LlmError::new(
                        ErrorClass::Timeout,
                        m.model.provider(),
                        format!("{what} {} ms", limit.as_millis()),
                    )));
                }
                Step::Item(None) => {
                    break Err(Err(LlmError::new(
                        ErrorClass::Malformed,
                        m.model.provider(),
                        "the reply ended without a finish",
                    )))
                }
                Step::Item(Some(Err(e))) => break Err(Err(e)),
                Step::Item(Some(Ok(ChatDelta::Finished { reason, usage }))) => {
                    let finished = ChatDelta::Finished {
                        reason: reason.clone(),
                        usage,
                    };
                    break Ok((finished, reason, usage));
                }
                Step::Item(Some(Ok(delta))) => {
                    span.token();
                    delivered = true;
                    let sent = tokio::select! {
                        biased;
                        reason = input.cancel.cancelled() => Err(Some(reason)),
                        r = out.send(LegItem::Delta(delta)) => r.map_err(|_| None),
                    };
                    match sent {
                        Ok(()) => {}
                        Err(Some(reason)) => break Err(Ok(reason)),
                        Err(None) => {
                            drop(stream);
                            drop(heartbeat);
                            span.cancel(input.cancel.reason());
                            return Attempt::ConsumerGone;
                        }
                    }
                }
            }
        };
        // Holds invariants 1 and 2: the stream (and its connection) and the
        // heartbeat go before the terminal event.
        drop(stream);
        drop(heartbeat);
        match end {
            Ok((finished, reason, usage)) => {
                let total = start.elapsed();
                let measured = span.complete(reason, usage, m.price.as_ref());
                self.telemetry.record_served(
                    &m.key,
                    measured.ttft,
                    Some(total),
                    measured.tokens_per_s,
                );
                if out.send(LegItem::Delta(finished)).await.is_err() {
                    return Attempt::ConsumerGone;
                }
                Attempt::Completed
            }
            Err(Ok(reason)) => {
                // Holds invariant 5.
                if reason == CancelReason::Deadline && !span.has_token() {
                    let e = LlmError::new(
                        ErrorClass::Timeout,
                        m.model.provider(),
                        "turn deadline before the first token",
                    );
                    self.telemetry.record_failure(&m.key, &e);
                }
                // A loser's latency, censored when it had no first result:
                // cancelled as the loser, or (a shadow) when the reply it
                // lost ended first.
                let lost = reason == CancelReason::HedgeLost
                    || (reason == CancelReason::ReplyEnded && !span.has_token());
                if lost {
                    match span.ttft() {
                        Some(ttft) => self.telemetry.record_lost(&m.key, ttft, false),
                        None => self.telemetry.record_lost(&m.key, start.elapsed(), true),
                    }
                }
                span.cancel(reason);
                Attempt::Cancelled(reason)
            }
            Err(Err(error)) => {
                span.fail(&error);
                self.telemetry.record_failure(&m.key, &error);
                Attempt::Failed { error, delivered }
            }
        }
    }
}
