//! [`ScriptedModel`]: a chat model whose replies are scripted per request
//! on the tokio clock (see the testkit invariants).

use crate::llm::{ChatDelta, ChatModel, ChatRequest, ChatStream, FinishReason, LlmError, Usage};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Script {
    /// Fail at once (before any token) with this error.
    pub connect_error: Option<LlmError>,
    pub first_token_delay: Duration,
    pub tokens: Vec<String>,
    pub token_interval: Duration,
    /// After this many tokens, pause this long.
    pub stall: Option<(usize, Duration)>,
    /// After this many tokens, fail with this error.
    pub error_after: Option<(usize, LlmError)>,
}

impl Script {
    /// These tokens, the first after `first_ms`, then one every `every_ms`.
    pub fn tokens<S: Into<String>>(
        tokens: impl IntoIterator<Item = S>,
        first_ms: u64,
        every_ms: u64,
    ) -> Self {
        Self {
            connect_error: None,
            first_token_delay: Duration::from_millis(first_ms),
            tokens: tokens.into_iter().map(Into::into).collect(),
            token_interval: Duration::from_millis(every_ms),
            stall: None,
            error_after: None,
        }
    }

    /// A reply of `n` tokens (`t0 t1 …`).
    pub fn n_tokens(n: usize, first_ms: u64, every_ms: u64) -> Self {
        Self::tokens((0..n).map(|i| format!("t{i} ")), first_ms, every_ms)
    }

    /// An immediate failure.
    pub fn error(e: LlmError) -> Self {
        Self {
            connect_error: Some(e),
            ..Self::tokens(Vec::<String>::new(), 0, 0)
        }
    }

    pub fn stall_after(mut self, tokens: usize, d: Duration) -> Self {
        self.stall = Some((tokens, d));
        self
    }

    pub fn fail_after(mut self, tokens: usize, e: LlmError) -> Self {
        self.error_after = Some((tokens, e));
        self
    }
}

/// A [`ChatModel`] playing [`Script`]s in order (the default when empty).
#[derive(Debug)]
pub struct ScriptedModel {
    provider: String,
    model: String,
    queue: Mutex<VecDeque<Script>>,
    default: Mutex<Script>,
    calls: AtomicUsize,
    dropped_early: Arc<AtomicUsize>,
    requests: Mutex<Vec<ChatRequest>>,
}

impl ScriptedModel {
    /// A model answering `default` whenever no script is queued.
    pub fn new(provider: &str, model: &str, default: Script) -> Self {
        Self {
            provider: provider.into(),
            model: model.into(),
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            calls: AtomicUsize::new(0),
            dropped_early: Arc::new(AtomicUsize::new(0)),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// Queues scripts for the next requests.
    pub fn push(&self, scripts: impl IntoIterator<Item = Script>) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(scripts);
    }

    /// Replaces the default script (e.g. the model gets slower).
    pub fn set_default(&self, script: Script) {
        *self.default.lock().unwrap_or_else(|p| p.into_inner()) = script;
    }

    /// Requests so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Streams dropped before their end (cancelled by the consumer).
    pub fn dropped_early(&self) -> usize {
        self.dropped_early.load(Ordering::Relaxed)
    }
}

struct DropGuard {
    count: Arc<AtomicUsize>,
    done: AtomicBool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Relaxed) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl ChatModel for ScriptedModel {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request);
        let popped = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let script = popped.unwrap_or_else(|| {
            self.default
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
        if let Some(e) = script.connect_error.clone() {
            return Err(e);
        }
        let guard = DropGuard {
            count: self.dropped_early.clone(),
            done: AtomicBool::new(false),
        };
        let stream = futures::stream::unfold(
            (0usize, script, guard, false),
            |(i, script, guard, ended)| async move {
                if ended {
                    return None;
                }
                let delay = if i == 0 {
                    script.first_token_delay
                } else {
                    script.token_interval
                };
                // A zero delay must not wait for the timer's next tick.
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some((after, d)) = script.stall {
                    if i == after && i > 0 {
                        tokio::time::sleep(d).await;
                    }
                }
                if let Some((after, e)) = &script.error_after {
                    if *after == i {
                        let e = e.clone();
                        guard.done.store(true, Ordering::Relaxed);
                        return Some((Err(e), (i, script, guard, true)));
                    }
                }
                if i < script.tokens.len() {
                    let t = script.tokens[i].clone();
                    return Some((Ok(ChatDelta::Text(t)), (i + 1, script, guard, false)));
                }
                guard.done.store(true, Ordering::Relaxed);
                let usage = Usage {
                    tokens_in: 10,
                    tokens_out: script.tokens.len() as u32,
                };
                let fin = ChatDelta::Finished {
                    reason: FinishReason::Stop,
                    usage: Some(usage),
                };
                Some((Ok(fin), (i, script, guard, true)))
            },
        );
        Ok(Box::pin(stream))
    }
}
