//! The voice agent: STT → LLM (through the router) → sentence chunker → TTS,
//! streaming sentence by sentence, each spoken chunk reported as soon as it
//! is synthesised. With a conversation flow, the flow's plan (`flow.rs`)
//! decides between a fixed line, the model, and silence, and the function a
//! transcript or the model fired runs here, inside the turn's fenced task.
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
//! 4. A model reply passes the reply guard (`guard.rs`): a loop or the
//!    spoken-length cap ends it at a sentence end, the model's stream is
//!    dropped, and what was spoken is what the turn commits.

use super::flow::FlowReply;
use super::guard::{ReplyCap, ReplyGuard};
use super::served::Served;
use super::{Agent, Payload, Reporter, TurnJob};
use crate::audio::wav::mono_i16_to_16k;
use crate::flows::{Flow, FlowState};
use crate::frame::CancelReason;
use crate::frame::CancelSignal;
use crate::llm::router::{Router, TurnItem};
use crate::llm::span::SpanEvent;
use crate::llm::{ChatDelta, ChatMessage, ChatRequest, Role, ToolCall};
use crate::route::Notes;
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
    /// The conversation flow; `None` is open chat with `system_prompt`.
    pub flow: Option<Arc<Flow>>,
    /// Spoken-length cap and loop guard of model replies (`guard.rs`).
    pub reply_cap: ReplyCap,
}

impl Default for VoiceOptions {
    fn default() -> Self {
        Self {
            system_prompt: DEFAULT_SYSTEM_PROMPT.to_string(),
            // A backstop: the reply guard's cap (3 sentences, or the first
            // sentence end after 60 tokens) ends replies before it.
            max_tokens: 100,
            // Greedy: the small model's most likely answer, the same every time
            // for the same words (sampled answers sometimes stopped mid-sentence).
            temperature: 0.0,
            turn_budget: Duration::from_secs(20),
            max_chunk_chars: 180,
            max_history: 12,
            flow: None,
            reply_cap: ReplyCap::default(),
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

    fn greets(&self) -> bool {
        self.options
            .flow
            .as_ref()
            .is_some_and(|f| f.initial().on_enter.say.is_some())
    }

    fn flow(&self) -> Option<Arc<Flow>> {
        self.options.flow.clone()
    }

    fn warm_up(&self, history: &[ChatMessage]) -> Option<super::warm::WarmUp> {
        super::warm::voice_warm_up(&self.router, &self.options, history, &self.runtime)
    }

    fn span_feed(&self) -> Option<tokio::sync::broadcast::Receiver<SpanEvent>> {
        Some(self.router.runner().sink.subscribe())
    }

    fn start(&self, job: TurnJob, reporter: Reporter) {
        let turn = Turn {
            tts: self.tts.clone(),
            router: self.router.clone(),
            options: self.options.clone(),
            cancel: job.cancel.clone(),
            reporter,
            epoch: job.epoch,
            spoke: false,
            after_cut: false,
            served: Served::default(),
            notes: Notes::default(),
        };
        let stt = self.stt.clone();
        let notes = turn.notes.clone();
        // The routers record their races in this turn's notes (route note
        // invariant 3); the turn reports them to the coordinator.
        self.runtime.spawn(notes.scope(async move {
            let mut turn = turn;
            if job.greeting {
                // The call starts: the initial node's line (Agent::greets).
                let line = turn.options.flow.as_ref().and_then(|f| {
                    let say = f.initial().on_enter.say.as_deref()?;
                    Some(FlowState::start(f).render(say, None))
                });
                if let Some(line) = line {
                    if turn.say(&line).await == Step::Stop {
                        return;
                    }
                }
                turn.reporter.send(Payload::Done);
                return;
            }
            // 1. STT.
            let text = match stt
                .transcribe_served(&job.user_audio, turn.cancel.token())
                .await
            {
                Ok((t, model)) => {
                    turn.served.set_stt(&model);
                    turn.report_routes();
                    t.text.trim().to_string()
                }
                Err(crate::stt::SttError::Cancelled) => return,
                Err(e) => {
                    turn.reporter.send(Payload::Failed(e.to_string()));
                    return;
                }
            };
            if turn.cancel.is_cancelled() || !turn.reporter.send(Payload::Transcript(text.clone()))
            {
                return;
            }
            if crate::stt::normalize::normalize(&text).is_empty() {
                turn.reporter.send(Payload::Done);
                return;
            }
            // 2. The flow's plan (or open chat), then 3. the answer.
            let step = match turn.options.flow.clone() {
                None => {
                    let request = build_request(&turn.options, &job.history, &text);
                    turn.model(request, None).await
                }
                Some(flow) => turn.flow_turn(&flow, &job.history, &text).await,
            };
            if step == Step::Go {
                turn.reporter.send(Payload::Done);
            }
        }));
    }
}

/// Whether a turn goes on after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Go,
    /// Cancelled, failed (already reported) or the session is gone.
    Stop,
}

/// One running turn of the voice agent.
struct Turn {
    tts: Arc<dyn TextToSpeech>,
    router: Arc<Router>,
    options: Arc<VoiceOptions>,
    /// The job token: its reason reaches the LLM legs' spans.
    cancel: CancelSignal,
    reporter: Reporter,
    epoch: u64,
    /// Audio was reported (no model restart any more, invariant 2).
    spoke: bool,
    /// The last chunk spoken was cut mid-sentence (eager first words).
    after_cut: bool,
    /// Which model served each stage (reported for the journal).
    served: Served,
    /// The routers' races of this turn, reported as they are decided.
    notes: Notes,
}

impl Turn {
    /// Reports the races decided since the last call (for `turn_latency`).
    fn report_routes(&self) {
        for note in self.notes.take() {
            self.reporter.send(Payload::Route(note));
        }
    }

    /// A flow turn: plan, run the fired function's tool, answer.
    async fn flow_turn(&mut self, flow: &Arc<Flow>, history: &[ChatMessage], text: &str) -> Step {
        let now = crate::tools::time::now_local();
        let plan = super::flow::plan_turn(flow, &self.options, history, text, self.epoch, now);
        if let Some((call, result)) = plan.tool {
            // The tool ran inside this fenced task; its call and result go
            // to the coordinator as one unit (flow invariant 1).
            if self.cancel.is_cancelled() || !self.reporter.send(Payload::Tool { call, result }) {
                return Step::Stop;
            }
        }
        let step = match plan.reply {
            FlowReply::Say(line) => self.say(&line).await,
            FlowReply::Model(request) => {
                let state = FlowState::from_history(flow, history);
                self.model(request, Some((flow, state, history, text)))
                    .await
            }
            FlowReply::Silent => Step::Go,
        };
        if step == Step::Go && plan.end_call && !self.reporter.send(Payload::EndCall) {
            return Step::Stop;
        }
        step
    }

    /// Speaks a fixed line, sentence by sentence.
    async fn say(&mut self, line: &str) -> Step {
        let mut chunker = SentenceChunker::new(self.options.max_chunk_chars)
            .with_eager_first_words(crate::tts::chunker::EAGER_FIRST_WORDS);
        let mut sentences = chunker.push(line);
        sentences.extend(chunker.finish());
        for sentence in sentences {
            if self.speak(sentence).await == Step::Stop {
                return Step::Stop;
            }
        }
        Step::Go
    }

    /// Synthesises one sentence and reports it (invariant 3: one at a time).
    async fn speak(&mut self, sentence: String) -> Step {
        let speech = match self
            .tts
            .synthesize_served(&sentence, self.cancel.token())
            .await
        {
            Ok((s, voice)) => {
                self.report_routes();
                if self.served.add_tts(&voice) {
                    self.reporter.send(Payload::Model(self.served.label()));
                }
                s
            }
            Err(crate::tts::TtsError::Cancelled) => return Step::Stop,
            Err(e) => {
                self.reporter.send(Payload::Failed(e.to_string()));
                return Step::Stop;
            }
        };
        if self.cancel.is_cancelled() {
            return Step::Stop;
        }
        let audio = match mono_i16_to_16k(&speech.samples, speech.sample_rate) {
            Ok(a) => a,
            Err(e) => {
                self.reporter
                    .send(Payload::Failed(format!("tts output: {e}")));
                return Step::Stop;
            }
        };
        // The voice's silent pad before a reply's first chunk is latency, and
        // around a mid-sentence cut it is a pause the sentence lacks.
        let cut = !super::guard::is_sentence_end(&sentence);
        let edges = crate::tts::edges::Edges {
            lead_ms: (!self.spoke || self.after_cut).then_some(10),
            tail_ms: cut.then_some(40),
        };
        let audio =
            crate::tts::edges::trim_edges(&audio, crate::frame::SAMPLE_RATE, edges).to_vec();
        self.spoke = true;
        self.after_cut = cut;
        if self.reporter.send(Payload::Speech {
            text: sentence,
            audio: audio.into(),
        }) {
            Step::Go
        } else {
            Step::Stop
        }
    }

    /// Streams the model's reply through the router, speaking it sentence
    /// by sentence. In a flow, a tool call of the model runs the node's
    /// function (once per turn) and its line, or a second request without
    /// tools, answers.
    async fn model(
        &mut self,
        request: ChatRequest,
        flow: Option<(&Arc<Flow>, FlowState, &[ChatMessage], &str)>,
    ) -> Step {
        // The router's legs are children of the job token: a barge-in or a
        // shutdown reaches their spans with its own reason.
        let signal = self.cancel.clone();
        let deadline = tokio::time::Instant::now() + self.options.turn_budget;
        let mut reply = self
            .router
            .start_turn(request, self.epoch, deadline, signal);
        // Holds invariant 4: the guard ends loops and over-long replies.
        let cap = super::guard::cap_for(
            self.options.reply_cap,
            flow.as_ref().and_then(|(f, state, ..)| state.current(f)),
        );
        let max_chunk_chars = self.options.max_chunk_chars;
        let eager = move || {
            ReplyGuard::new(
                cap,
                max_chunk_chars,
                Some(crate::tts::chunker::EAGER_FIRST_CLAUSE_CHARS),
            )
            .with_eager_first_words(crate::tts::chunker::EAGER_FIRST_WORDS)
        };
        let mut chunker = eager();
        let mut tool_call = None;
        let mut cut = false;
        loop {
            let item = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Step::Stop,
                item = reply.next() => item,
            };
            // The LLM race was decided before its first item came.
            self.report_routes();
            let mut finished = !matches!(item, Some(TurnItem::Delta(_)));
            let sentences = match item {
                Some(TurnItem::Delta(ChatDelta::Text(t))) => {
                    self.reporter.send(Payload::Token(t.clone()));
                    let guarded = chunker.push(&t);
                    // A stopped reply is over: the loop below drops the
                    // model's stream, which stops its decoding.
                    finished = guarded.stop.is_some();
                    guarded.chunks
                }
                Some(TurnItem::Delta(ChatDelta::Finished { reason, .. })) => {
                    cut = reason == crate::llm::FinishReason::Length;
                    continue;
                }
                Some(TurnItem::Delta(ChatDelta::ToolCall(call))) => {
                    tool_call.get_or_insert(call);
                    continue;
                }
                Some(TurnItem::Restart { .. }) => {
                    // Holds invariant 2.
                    chunker = eager();
                    tool_call = None;
                    continue;
                }
                Some(TurnItem::Done { model }) => {
                    self.served.llm = Some(model);
                    self.reporter.send(Payload::Model(self.served.label()));
                    chunker.finish(cut)
                }
                None => chunker.finish(cut),
                Some(TurnItem::Failed(e)) => {
                    if !self.spoke {
                        self.reporter.send(Payload::Failed(e.to_string()));
                        return Step::Stop;
                    }
                    chunker.finish(true)
                }
                Some(TurnItem::Cancelled(_)) => return Step::Stop,
            };
            for sentence in sentences {
                let first = !self.spoke;
                if self.speak(sentence).await == Step::Stop {
                    return Step::Stop;
                }
                if first {
                    reply.mark_audio_played();
                }
            }
            if finished {
                break;
            }
        }
        // The agent stops reading (a guard cut, or the reply is over): a leg
        // still streaming ends `reply_ended`, not as the user's or the
        // operator's doing.
        reply.cancel(CancelReason::ReplyEnded);
        drop(reply);
        match (tool_call, flow) {
            (Some(call), Some((flow, mut state, history, text))) => {
                self.model_tool_call(flow, &mut state, call, history, text)
                    .await
            }
            _ => Step::Go,
        }
    }

    /// The model called a function of the node: run it like a fired one.
    async fn model_tool_call(
        &mut self,
        flow: &Arc<Flow>,
        state: &mut FlowState,
        call: ToolCall,
        history: &[ChatMessage],
        text: &str,
    ) -> Step {
        let Some(function) = state
            .current(flow)
            .and_then(|n| n.functions.iter().find(|f| f.name == call.name))
            .cloned()
        else {
            tracing::warn!(function = %call.name, "the model called a function the node does not offer");
            return Step::Go;
        };
        let arguments = serde_json::from_str(&call.arguments).unwrap_or_default();
        let now = crate::tools::time::now_local();
        let ran = super::flow::call_function(flow, state, &function, arguments, self.epoch, now);
        let (call, result) = (ran.call, ran.result);
        if self.cancel.is_cancelled()
            || !self.reporter.send(Payload::Tool {
                call: call.clone(),
                result: result.clone(),
            })
        {
            return Step::Stop;
        }
        let ended = state.ended(flow);
        let step = match ran.say {
            Some(line) => self.say(&line).await,
            None => {
                let request = super::flow::model_request(
                    flow,
                    state,
                    &self.options,
                    history,
                    text,
                    Some((&call, &result)),
                );
                Box::pin(self.model(request, None)).await
            }
        };
        if step == Step::Go && ended && !self.reporter.send(Payload::EndCall) {
            return Step::Stop;
        }
        step
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
