//! The voice agent: STT → LLM (through the router) → sentence chunker → TTS,
//! streaming sentence by sentence, each spoken chunk reported as soon as it
//! is synthesised.
//!
//! # Invariants
//! 1. The job's cancellation token is checked between every step (after STT,
//!    per LLM item, before and after each synthesis); a cancelled job stops
//!    without reporting anything more (agent invariant 3). Dropping the
//!    router's reply closes the model stream (llm invariant 1).
//! 2. A router `Restart` (fallback to another model) is only possible before
//!    any audio was reported; text of the failed attempt is discarded.
//! 3. Synthesis runs one sentence at a time, never beside itself, so TTS and
//!    LLM decode share the two cores in a known way (see README, "CPU
//!    scheduling").

use super::{Agent, Payload, Reporter, TurnJob};
use crate::audio::wav::mono_i16_to_16k;
use crate::frame::CancelReason;
use crate::llm::leg::CancelSignal;
use crate::llm::router::{Router, TurnItem};
use crate::llm::span::SpanEvent;
use crate::llm::{ChatDelta, ChatMessage, ChatRequest, Role};
use crate::stt::SpeechToText;
use crate::tts::chunker::SentenceChunker;
use crate::tts::TextToSpeech;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the voice agent.
#[derive(Clone, Debug)]
pub struct VoiceOptions {
    pub system_prompt: String,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Budget of one LLM turn, retries and fallbacks included.
    pub turn_budget: Duration,
    /// Longest chunk handed to TTS (characters).
    pub max_chunk_chars: usize,
    /// Most history messages sent with a request (oldest dropped first).
    pub max_history: usize,
}

impl Default for VoiceOptions {
    fn default() -> Self {
        Self {
            system_prompt: DEFAULT_SYSTEM_PROMPT.to_string(),
            max_tokens: 60,
            // Greedy: the small model's most likely answer, the same every time
            // for the same words (sampled answers sometimes stopped mid-sentence).
            temperature: 0.0,
            turn_budget: Duration::from_secs(20),
            max_chunk_chars: 180,
            max_history: 12,
        }
    }
}

/// The system prompt for small embedded models: short spoken answers.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful voice assistant. Answer in one or two short sentences of plain spoken English. No lists, no markdown, no emojis.";

/// STT → LLM → TTS.
pub struct VoiceAgent {
    stt: Arc<dyn SpeechToText>,
    router: Arc<Router>,
    tts: Arc<dyn TextToSpeech>,
    options: Arc<VoiceOptions>,
    runtime: tokio::runtime::Handle,
}

impl VoiceAgent {
    pub fn new(
        stt: Arc<dyn SpeechToText>,
        router: Arc<Router>,
        tts: Arc<dyn TextToSpeech>,
        options: VoiceOptions,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            stt,
            router,
            tts,
            options: Arc::new(options),
            runtime,
        }
    }
}

impl Agent for VoiceAgent {
    fn name(&self) -> &str {
        "voice"
    }

    fn transcribes(&self) -> bool {
        true
    }

    fn span_feed(&self) -> Option<tokio::sync::broadcast::Receiver<SpanEvent>> {
        Some(self.router.runner().sink.subscribe())
    }

    fn start(&self, job: TurnJob, reporter: Reporter) {
        let stt = self.stt.clone();
        let tts = self.tts.clone();
        let router = self.router.clone();
        let budget = self.options.turn_budget;
        let max_chunk = self.options.max_chunk_chars;
        let options = self.options.clone();
        self.runtime.spawn(async move {
            let cancel = job.cancel.clone();
            // 1. STT.
            let text = match stt.transcribe(&job.user_audio, &cancel).await {
                Ok(t) => t.text.trim().to_string(),
                Err(crate::stt::SttError::Cancelled) => return,
                Err(e) => {
                    reporter.send(Payload::Failed(e.to_string()));
                    return;
                }
            };
            if cancel.is_cancelled() || !reporter.send(Payload::Transcript(text.clone())) {
                return;
            }
            if crate::stt::normalize::normalize(&text).is_empty() {
                reporter.send(Payload::Done);
                return;
            }
            // 2. LLM through the router.
            let request = build_request(&options, &job.history, &text);
            let signal = CancelSignal::new(cancel.clone(), CancelReason::BargeIn);
            let deadline = tokio::time::Instant::now() + budget;
            let mut reply = router.start_turn(request, job.epoch, deadline, signal);
            let mut chunker = SentenceChunker::new(max_chunk).with_eager_first_clause(24);
            let mut spoke = false;
            loop {
                let item = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    item = reply.next() => item,
                };
                let finished = !matches!(item, Some(TurnItem::Delta(_)));
                let sentences = match item {
                    Some(TurnItem::Delta(ChatDelta::Text(t))) => {
                        reporter.send(Payload::Token(t.clone()));
                        chunker.push(&t)
                    }
                    Some(TurnItem::Delta(_)) => continue,
                    Some(TurnItem::Restart { .. }) => {
                        // Holds invariant 2.
                        chunker.clear();
                        continue;
                    }
                    Some(TurnItem::Done { model }) => {
                        reporter.send(Payload::Model(model));
                        chunker.finish()
                    }
                    None => chunker.finish(),
                    Some(TurnItem::Failed(e)) => {
                        if !spoke {
                            reporter.send(Payload::Failed(e.to_string()));
                            return;
                        }
                        chunker.finish()
                    }
                    Some(TurnItem::Cancelled(_)) => return,
                };
                for sentence in sentences {
                    // 3. TTS, one sentence at a time (invariant 3).
                    let speech = match tts.synthesize(&sentence, &cancel).await {
                        Ok(s) => s,
                        Err(crate::tts::TtsError::Cancelled) => return,
                        Err(e) => {
                            reporter.send(Payload::Failed(e.to_string()));
                            return;
                        }
                    };
                    if cancel.is_cancelled() {
                        return;
                    }
                    let audio = match mono_i16_to_16k(&speech.samples, speech.sample_rate) {
                        Ok(a) => a,
                        Err(e) => {
                            reporter.send(Payload::Failed(format!("tts output: {e}")));
                            return;
                        }
                    };
                    if !spoke {
                        reply.mark_audio_played();
                        spoke = true;
                    }
                    if !reporter.send(Payload::Speech {
                        text: sentence,
                        audio: audio.into(),
                    }) {
                        return;
                    }
                }
                if finished {
                    reporter.send(Payload::Done);
                    return;
                }
            }
        });
    }
}

/// Builds the chat request of a turn: system prompt, recent history, user text.
pub fn build_request(options: &VoiceOptions, history: &[ChatMessage], user: &str) -> ChatRequest {
    let mut messages = vec![ChatMessage::system(options.system_prompt.clone())];
    let keep = history.len().saturating_sub(options.max_history);
    messages.extend(
        history[keep..]
            .iter()
            .filter(|m| matches!(m.role, Role::User | Role::Assistant) && !m.content.is_empty())
            .cloned(),
    );
    messages.push(ChatMessage::user(user));
    let mut r = ChatRequest::new(messages);
    r.max_tokens = options.max_tokens;
    r.temperature = options.temperature;
    r
}
