//! Spans of LLM requests: the [`SpanEvent`] catalogue, the [`SpanSink`] that
//! publishes them (tracing, broadcast channel for the web page and the JSONL
//! log), and [`LegSpan`], the handle one request attempt emits through.
//!
//! One span covers one HTTP request (one attempt of a leg); the attempts of a
//! leg share `leg_id`, each has its own `request_id`.
//!
//! # Invariants
//! 1. A span emits `started` first and exactly one terminal event
//!    (`completed`, `failed` or `cancelled`) last. The terminal methods take
//!    the span by value, so nothing can be emitted after them; a span dropped
//!    without a terminal emits `failed` with class `other`.
//! 2. `first_token` is emitted at most once, before any terminal.
//! 3. Events never carry an API key: messages are redacted by the backend
//!    that builds the [`LlmError`], and the sink carries only what
//!    [`SpanKind`] lists.
//! 4. Emitting never blocks and never fails: a full or receiver-less
//!    broadcast channel drops the event for lagging receivers only.

use crate::frame::{CancelReason, Event};
use crate::llm::{ErrorClass, FinishReason, LlmError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// What happened to a request, with its kind-specific fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SpanKind {
    /// The request was sent.
    Started {
        prompt_chars: usize,
        prompt_messages: usize,
    },
    /// The first token arrived (time to first token, from `started`).
    FirstToken { ttft_ms: u64 },
    /// A heartbeat while no token has arrived for `since_token_ms`
    /// (measured from the last token, or from `started` before the first).
    Stalled { since_token_ms: u64 },
    /// The reply finished.
    Completed {
        ttft_ms: Option<u64>,
        total_ms: u64,
        tokens_in: Option<u32>,
        tokens_out: u32,
        tokens_per_s: Option<f64>,
        cost_usd: Option<f64>,
        finish_reason: FinishReason,
    },
    /// The request failed.
    Failed {
        class: ErrorClass,
        status: Option<u16>,
        retry_after_ms: Option<u64>,
        message: String,
    },
    /// The request was cancelled.
    Cancelled { reason: CancelReason },
}

impl SpanKind {
    /// The snake_case name, as in the `type` tag.
    pub fn name(&self) -> &'static str {
        match self {
            SpanKind::Started { .. } => "started",
            SpanKind::FirstToken { .. } => "first_token",
            SpanKind::Stalled { .. } => "stalled",
            SpanKind::Completed { .. } => "completed",
            SpanKind::Failed { .. } => "failed",
            SpanKind::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether this kind ends a span.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SpanKind::Completed { .. } | SpanKind::Failed { .. } | SpanKind::Cancelled { .. }
        )
    }
}

/// One span event: who (request, leg, attempt, turn epoch, model), when
/// (`at_ms` since the span started) and what ([`SpanKind`], flattened with a
/// `type` tag).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub request_id: u64,
    pub leg_id: u64,
    pub attempt: u32,
    pub epoch: u64,
    pub provider: String,
    pub model: String,
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: SpanKind,
}

impl SpanEvent {
    /// The event as the crate's control-plane [`Event::Span`] for the JSONL log.
    pub fn to_frame_event(&self) -> Event {
        Event::Span {
            epoch: self.epoch,
            // Serialising plain data with string keys cannot fail.
            span: serde_json::to_value(self).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl From<&SpanEvent> for Event {
    fn from(e: &SpanEvent) -> Self {
        e.to_frame_event()
    }
}

/// Where span events go: a `tracing` event under the request's span, and a
/// broadcast channel (web page feed, JSONL log writer, tests).
#[derive(Clone, Debug)]
pub struct SpanSink {
    tx: broadcast::Sender<SpanEvent>,
}

impl SpanSink {
    /// A sink whose channel holds `capacity` events for slow receivers.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// A new receiver of every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SpanEvent> {
        self.tx.subscribe()
    }

    /// Spawns a task handing every event, as a control-plane [`Event::Span`],
    /// to `deliver` (the JSONL log writer, the web page feed) until the sink
    /// and all its clones are gone. A receiver that fell behind skips the
    /// events it lost and logs how many.
    pub fn forward_frame_events(
        &self,
        mut deliver: impl FnMut(Event) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let mut rx = self.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => deliver(e.to_frame_event()),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "span events dropped for a slow receiver");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }

    fn emit(&self, span: &tracing::Span, event: SpanEvent) {
        // Field values are only evaluated when the callsite is enabled.
        tracing::info!(
            parent: span,
            event = event.kind.name(),
            at_ms = event.at_ms,
            detail = %serde_json::to_string(&event.kind).unwrap_or_default(),
            "llm span"
        );
        // No receiver is fine (holds invariant 4).
        let _ = self.tx.send(event);
    }
}

impl Default for SpanSink {
    fn default() -> Self {
        Self::new(1024)
    }
}

/// Identity of one request attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanHeader {
    pub request_id: u64,
    pub leg_id: u64,
    pub attempt: u32,
    pub epoch: u64,
    pub provider: String,
    pub model: String,
}

/// What a completed span measured, for the telemetry store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    pub ttft: Option<Duration>,
    pub total: Duration,
    pub tokens_out: u32,
    pub tokens_per_s: Option<f64>,
}

/// The live span of one request attempt (invariant 1).
#[derive(Debug)]
pub struct LegSpan {
    header: Arc<SpanHeader>,
    sink: SpanSink,
    span: tracing::Span,
    start: Instant,
    first_token: Option<Instant>,
    last_token: Instant,
    tokens: u32,
    ended: bool,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl LegSpan {
    /// Starts a span now and emits `started`.
    pub fn start(
        sink: SpanSink,
        header: SpanHeader,
        prompt_chars: usize,
        prompt_messages: usize,
    ) -> Self {
        let span = tracing::info_span!(
            "llm_leg",
            request_id = header.request_id,
            leg_id = header.leg_id,
            attempt = header.attempt,
            epoch = header.epoch,
            provider = %header.provider,
            model = %header.model,
        );
        let now = Instant::now();
        let me = Self {
            header: Arc::new(header),
            sink,
            span,
            start: now,
            first_token: None,
            last_token: now,
            tokens: 0,
            ended: false,
        };
        me.emit_at(
            now,
            SpanKind::Started {
                prompt_chars,
                prompt_messages,
            },
        );
        me
    }

    fn emit_at(&self, now: Instant, kind: SpanKind) {
        let event = SpanEvent {
            request_id: self.header.request_id,
            leg_id: self.header.leg_id,
            attempt: self.header.attempt,
            epoch: self.header.epoch,
            provider: self.header.provider.clone(),
            model: self.header.model.clone(),
            at_ms: ms(now.saturating_duration_since(self.start)),
            kind,
        };
        self.sink.emit(&self.span, event);
    }

    /// When the span started.
    pub fn started_at(&self) -> Instant {
        self.start
    }

    /// When the last token arrived (the start before the first token).
    pub fn last_token_at(&self) -> Instant {
        self.last_token
    }

    /// Time to the first token, once it arrived.
    pub fn ttft(&self) -> Option<Duration> {
        self.first_token.map(|t| t - self.start)
    }

    /// Whether a token has arrived.
    pub fn has_token(&self) -> bool {
        self.first_token.is_some()
    }

    /// Tokens seen so far.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// Records a token; the first one emits `first_token` (invariant 2).
    pub fn token(&mut self) {
        let now = Instant::now();
        self.tokens += 1;
        self.last_token = now;
        if self.first_token.is_none() {
            self.first_token = Some(now);
            self.emit_at(
                now,
                SpanKind::FirstToken {
                    ttft_ms: ms(now - self.start),
                },
            );
        }
    }

    /// Emits a `stalled` heartbeat if no token came for at least `interval`;
    /// returns whether it did.
    pub fn heartbeat(&mut self, interval: Duration) -> bool {
        let now = Instant::now();
        let gap = now.saturating_duration_since(self.last_token);
        if gap >= interval {
            self.emit_at(
                now,
                SpanKind::Stalled {
                    since_token_ms: ms(gap),
                },
            );
            true
        } else {
            false
        }
    }

    /// Ends the span with `completed` (invariant 1). `tokens_out` falls back
    /// to the number of tokens seen when the backend reported no usage.
    pub fn complete(
        mut self,
        finish_reason: FinishReason,
        usage: Option<crate::llm::Usage>,
        price: Option<&crate::llm::Price>,
    ) -> Measured {
        let now = Instant::now();
        let ttft = self.first_token.map(|t| t - self.start);
        let total = now - self.start;
        let tokens_out = usage.map(|u| u.tokens_out).unwrap_or(self.tokens);
        let gen = self.first_token.map(|t| now - t);
        let tokens_per_s = gen
            .filter(|g| !g.is_zero() && tokens_out > 1)
            .map(|g| (tokens_out.saturating_sub(1)) as f64 / g.as_secs_f64());
        let cost_usd = match (price, usage) {
            (Some(p), Some(u)) => Some(p.cost_usd(u.tokens_in, u.tokens_out)),
            _ => None,
        };
        self.ended = true;
        self.emit_at(
            now,
            SpanKind::Completed {
                ttft_ms: ttft.map(ms),
                total_ms: ms(total),
                tokens_in: usage.map(|u| u.tokens_in),
                tokens_out,
                tokens_per_s,
                cost_usd,
                finish_reason,
            },
        );
        Measured {
            ttft,
            total,
            tokens_out,
            tokens_per_s,
        }
    }

    /// Ends the span with `failed` (invariant 1).
    pub fn fail(mut self, error: &LlmError) {
        self.ended = true;
        self.emit_at(
            Instant::now(),
            SpanKind::Failed {
                class: error.class,
                status: error.status,
                retry_after_ms: error.retry_after.map(ms),
                message: error.message.clone(),
            },
        );
    }

    /// Ends the span with `cancelled` (invariant 1).
    pub fn cancel(mut self, reason: CancelReason) {
        self.ended = true;
        self.emit_at(Instant::now(), SpanKind::Cancelled { reason });
    }
}

impl Drop for LegSpan {
    fn drop(&mut self) {
        if !self.ended {
            // Holds invariant 1: no span ends without a terminal event.
            self.emit_at(
                Instant::now(),
                SpanKind::Failed {
                    class: ErrorClass::Other,
                    status: None,
                    retry_after_ms: None,
                    message: "span dropped without a terminal event".into(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SpanHeader {
        SpanHeader {
            request_id: 7,
            leg_id: 3,
            attempt: 1,
            epoch: 2,
            provider: "p".into(),
            model: "m".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_span_emits_started_first_token_and_one_terminal_in_order() {
        let sink = SpanSink::new(16);
        let mut rx = sink.subscribe();
        let mut span = LegSpan::start(sink.clone(), header(), 10, 1);
        tokio::time::advance(Duration::from_millis(120)).await;
        span.token();
        span.token();
        let m = span.complete(FinishReason::Stop, None, None);
        assert_eq!(m.ttft, Some(Duration::from_millis(120)));
        let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.kind.name())
            .collect();
        assert_eq!(kinds, ["started", "first_token", "completed"]);
    }

    #[tokio::test(start_paused = true)]
    async fn completed_reports_tokens_per_second_and_cost_when_priced() {
        let sink = SpanSink::new(16);
        let mut rx = sink.subscribe();
        let mut span = LegSpan::start(sink.clone(), header(), 10, 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        span.token();
        tokio::time::advance(Duration::from_millis(500)).await;
        let price = crate::llm::Price {
            input_per_mtok: 1.0,
            output_per_mtok: 4.0,
        };
        let usage = crate::llm::Usage {
            tokens_in: 1000,
            tokens_out: 11,
        };
        span.complete(FinishReason::Stop, Some(usage), Some(&price));
        let last = std::iter::from_fn(|| rx.try_recv().ok())
            .last()
            .expect("event");
        match last.kind {
            SpanKind::Completed {
                tokens_per_s,
                cost_usd,
                total_ms,
                ..
            } => {
                assert_eq!(total_ms, 600);
                assert_eq!(
                    tokens_per_s,
                    Some(20.0),
                    "10 tokens after the first in 0.5 s"
                );
                let cost = cost_usd.expect("priced");
                assert!((cost - (1000.0 * 1.0 + 11.0 * 4.0) / 1e6).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_span_fails_with_class_other() {
        let sink = SpanSink::new(16);
        let mut rx = sink.subscribe();
        drop(LegSpan::start(sink.clone(), header(), 0, 0));
        let _started = rx.try_recv().expect("started");
        let last = rx.try_recv().expect("terminal");
        assert!(matches!(
            last.kind,
            SpanKind::Failed {
                class: ErrorClass::Other,
                ..
            }
        ));
        assert!(rx.try_recv().is_err(), "nothing after the terminal");
    }

    #[tokio::test(start_paused = true)]
    async fn forwarded_frame_events_arrive_in_order_until_the_sink_goes() {
        let sink = SpanSink::new(16);
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        let task = sink.forward_frame_events(move |e| g.lock().expect("lock").push(e.kind()));
        let span = LegSpan::start(sink.clone(), header(), 1, 1);
        span.cancel(CancelReason::Deadline);
        drop(sink);
        task.await.expect("forwarder ends when the sink is gone");
        assert_eq!(*got.lock().expect("lock"), ["span", "span"]);
    }

    #[test]
    fn span_events_serialise_with_a_type_tag_and_convert_to_frame_events() {
        let e = SpanEvent {
            request_id: 1,
            leg_id: 1,
            attempt: 1,
            epoch: 4,
            provider: "p".into(),
            model: "m".into(),
            at_ms: 5,
            kind: SpanKind::Cancelled {
                reason: CancelReason::BargeIn,
            },
        };
        let json = serde_json::to_string(&e).expect("serialise");
        assert!(json.contains(r#""type":"cancelled""#), "{json}");
        assert!(json.contains(r#""reason":"barge_in""#), "{json}");
        let back: SpanEvent = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, e);
        match e.to_frame_event() {
            Event::Span { epoch, span } => {
                assert_eq!(epoch, 4);
                assert_eq!(span["type"], "cancelled");
            }
            other => panic!("not a span event: {other:?}"),
        }
    }
}
