//! Agents: what answers a user turn. An agent receives a fenced [`TurnJob`]
//! from the coordinator and reports [`TaskMessage`]s back, each tagged with the
//! job's epoch and task id; it never touches the context itself.
//!
//! Backends: [`parrot`] (speaks the user's audio back; the loopback test of
//! the whole audio path) and [`voice`] (STT → LLM → sentence chunker → TTS).
//!
//! # Invariants
//! 1. Every job ends with exactly one `Done` or `Failed` message, unless it
//!    was cancelled, in which case it may stop sending at any point.
//! 2. `cost` in each message is the job's cumulative compute time at that
//!    point; replay charges it to the timeline (`--pace fast`).
//! 3. An agent checks its cancellation token between steps (per token, per
//!    sentence) and stops promptly.

use crate::frame::CancelSignal;
use crate::llm::ChatMessage;
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod flow;
pub mod guard;
pub mod parrot;
pub mod served;
pub mod stack;
pub mod voice;
pub mod warm;

/// Identifies one dispatched task (unique within a session).
pub type TaskId = u64;

/// What the coordinator hands an agent for one turn.
#[derive(Clone, Debug)]
pub struct TurnJob {
    pub epoch: u64,
    pub task: TaskId,
    /// Committed history, oldest first (system prompt excluded).
    pub history: Vec<ChatMessage>,
    /// The user's utterance, 16 kHz mono, with any earlier speech of this
    /// turn that was not answered yet (the user went on talking) before it.
    pub user_audio: Arc<[i16]>,
    /// The job token: cancelled with its reason (barge-in, shutdown), which
    /// the job's legs and spans report (`frame::CancelSignal`).
    pub cancel: CancelSignal,
    /// The call just started and the agent speaks first (`user_audio` is
    /// empty): see [`Agent::greets`].
    pub greeting: bool,
}

/// How an agent's compute time is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostMode {
    /// Wall-clock time since the job started (real models).
    Wall,
    /// Zero: results are charged nothing (deterministic tests).
    Zero,
}

/// A result of a task.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// The user's words (final transcript of the utterance).
    Transcript(String),
    /// Model text as it streams (for live display; not spoken by itself).
    Token(String),
    /// Which model served each stage so far (for the journal; the label of
    /// [`served::Served`]); the last one sent counts.
    Model(String),
    /// What a routed stage's race did (which candidate won, whether and
    /// when a hedge started): the coordinator puts it in `turn_latency`.
    Route(crate::route::RouteNote),
    /// A speakable chunk: its text and its audio at 16 kHz.
    Speech { text: String, audio: Arc<[i16]> },
    /// A tool call and its result, as one unit (never one without the other).
    Tool {
        call: crate::llm::ToolCall,
        result: String,
    },
    /// The agent ended the call with this turn: hang up once the turn is
    /// committed (its reply played).
    EndCall,
    /// The reply is complete.
    Done,
    /// The job failed; the message says why.
    Failed(String),
}

impl Payload {
    /// Short kind name for events.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Transcript(_) => "transcript",
            Payload::Token(_) => "token",
            Payload::Model(_) => "model",
            Payload::Route(_) => "route",
            Payload::Speech { .. } => "speech",
            Payload::Tool { .. } => "tool",
            Payload::EndCall => "end_call",
            Payload::Done => "done",
            Payload::Failed(_) => "failed",
        }
    }
}

/// A message from a task to the coordinator.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMessage {
    pub epoch: u64,
    pub task: TaskId,
    /// Session time (ms) at which the task was dispatched.
    pub dispatched_ms: u64,
    /// Cumulative compute time of the job so far (invariant 2).
    pub cost: Duration,
    pub payload: Payload,
}

/// The sending end handed to a running job.
#[derive(Clone)]
pub struct Reporter {
    tx: Sender<TaskMessage>,
    epoch: u64,
    task: TaskId,
    dispatched_ms: u64,
    started: Instant,
    mode: CostMode,
}

impl Reporter {
    pub fn new(
        tx: Sender<TaskMessage>,
        epoch: u64,
        task: TaskId,
        dispatched_ms: u64,
        mode: CostMode,
    ) -> Self {
        Self {
            tx,
            epoch,
            task,
            dispatched_ms,
            started: Instant::now(),
            mode,
        }
    }

    /// Sends a payload stamped with the job's cost so far. Returns false when
    /// the session is gone (the job should stop).
    pub fn send(&self, payload: Payload) -> bool {
        let cost = match self.mode {
            CostMode::Wall => self.started.elapsed(),
            CostMode::Zero => Duration::ZERO,
        };
        self.tx
            .send(TaskMessage {
                epoch: self.epoch,
                task: self.task,
                dispatched_ms: self.dispatched_ms,
                cost,
                payload,
            })
            .is_ok()
    }
}

/// Something that answers user turns.
pub trait Agent: Send + Sync {
    /// Name for logs (`parrot`, `voice`).
    fn name(&self) -> &str;
    /// Starts answering `job` in the background; results go to `reporter`.
    fn start(&self, job: TurnJob, reporter: Reporter);
    /// Whether the agent produces transcripts (so backchannels can be told
    /// from real interruptions by their words).
    fn transcribes(&self) -> bool;
    /// Whether the agent speaks first when a new call starts (a flow whose
    /// initial node says something on entry). The coordinator then opens a
    /// greeting turn on the first frame of a session with no history.
    fn greets(&self) -> bool {
        false
    }
    /// The conversation flow this agent follows, if any (the end-of-turn
    /// judge holds a turn whose words lack the value the node waits for).
    fn flow(&self) -> Option<Arc<crate::flows::Flow>> {
        None
    }
    /// Warm start: readies the agent's models for a session that starts
    /// with `history` (the LLM prefills the system prompt and history)
    /// while the user speaks. `None`: nothing to warm (see [`warm`]).
    fn warm_up(&self, _history: &[ChatMessage]) -> Option<warm::WarmUp> {
        None
    }
    /// LLM span events of this agent's requests, for the session's event log.
    fn span_feed(&self) -> Option<tokio::sync::broadcast::Receiver<crate::llm::span::SpanEvent>> {
        None
    }
}
