//! The control-plane event catalogue. Every stage reports what happened as an
//! [`Event`]; sinks (JSONL log, web page, terminal) consume [`TimedEvent`]s.
//!
//! # Invariants
//! 1. Events are serialised with a `type` tag (snake_case), one JSON object per
//!    event; the JSONL log and the WebSocket protocol share this encoding.
//! 2. `Display` prints the kind only; text fields are personal data and appear
//!    only in the serialised event, which the user asked to be written.

use serde::{Deserialize, Serialize};

/// Who produced some audio or text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    User,
    Bot,
}

/// Why an in-flight task was cancelled. Each reason is distinct on purpose:
/// a barge-in is the user's doing, a shutdown the operator's, a deadline the
/// turn's budget, a lost hedge the router's (another model answered first),
/// a reply ended the agent's (it stopped reading a model's stream: the reply
/// guard cut a looping or over-long reply, or speaking it failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    BargeIn,
    Shutdown,
    Deadline,
    HedgeLost,
    ReplyEnded,
}

/// One thing that happened on the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The turn detector confirmed the user started speaking.
    SpeechStarted { at_ms: u64 },
    /// The user paused for less than the endpointing silence so far.
    SpeechPaused { at_ms: u64 },
    /// The user's turn ended (endpointing silence elapsed after speech).
    SpeechStopped { at_ms: u64, speech_ms: u64 },
    /// The end-of-turn judge acted on a held turn (`--turn smart`): `action`
    /// is `hold` (past the endpoint), `release`, `backstop` (held too long)
    /// or `early` (ended before the endpoint).
    TurnJudged {
        verdict: String,
        action: String,
        /// What the words said (`None`: no transcript).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        words: Option<String>,
        /// Smart Turn's probability of "complete" (`None`: not run).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<f32>,
    },
    /// A transcript of the user's speech; `is_final` marks the turn's final one.
    Transcript {
        epoch: u64,
        text: String,
        is_final: bool,
    },
    /// A turn opened (the user's end of turn), with its epoch.
    TurnOpened {
        epoch: u64,
        /// The agent speaks first: no user words open this turn.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        greeting: bool,
    },
    /// A task result was accepted into the turn's staging area.
    Staged { epoch: u64, task: u64, what: String },
    /// A result of a stale or unknown task was dropped.
    Quarantined {
        epoch: u64,
        current_epoch: u64,
        task: u64,
        what: String,
    },
    /// A task was cancelled.
    TaskCancelled {
        epoch: u64,
        task: u64,
        reason: CancelReason,
    },
    /// Text the bot is about to say (one sentence/chunk).
    BotText { epoch: u64, text: String },
    /// The first sample of a reply reached the output.
    BotStartedSpeaking { epoch: u64 },
    /// The last sample of a reply was played.
    BotStoppedSpeaking { epoch: u64 },
    /// The turn's round was appended to history.
    Committed {
        epoch: u64,
        user: String,
        assistant: String,
        interrupted: bool,
    },
    /// A function (tool) of the turn ran; its call and result were staged
    /// together (they enter history with the turn's round, or not at all).
    Tool {
        epoch: u64,
        name: String,
        arguments: String,
        result: String,
    },
    /// The conversation is over (a flow hung up): sent once, after the
    /// round that ended it was committed; transports close the call.
    CallEnded { epoch: u64 },
    /// The user barged in over the bot; `spoken` is what the user heard.
    Interrupted {
        epoch: u64,
        spoken: String,
        played_ms: u64,
    },
    /// The output was cleared (transports drop buffered audio at once).
    ClearPlayback { epoch: u64 },
    /// An overlap turned out to be noise or a backchannel.
    FalseInterruption { epoch: u64 },
    /// The bot resumed after a false interruption.
    Resumed { epoch: u64, from: String },
    /// Voice-to-voice latency of a turn and its parts (ms on the timeline).
    TurnLatency {
        epoch: u64,
        end_of_speech_ms: u64,
        stt_ms: Option<u64>,
        first_token_ms: Option<u64>,
        first_audio_ms: u64,
        /// What each routed stage's race did up to the first audio (which
        /// candidate won, which started as probe, hedge or fallback, and
        /// when): `route::note`. Empty when every stage has one candidate.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        routes: Vec<crate::route::RouteNote>,
    },
    /// A routed stage's race decided after the turn's first audio (a later
    /// sentence's TTS race, an LLM continuation after a stall): what
    /// `turn_latency.routes` says of the races before it.
    Route {
        epoch: u64,
        route: crate::route::RouteNote,
    },
    /// The session's warm start finished (`agent::warm`): the system
    /// prompt and history are in the model's cache (`tokens`, of which
    /// `reused` were already there), after `ms` of compute; `error` if it
    /// failed (the first turn then pays the prefill).
    PrefillDone {
        tokens: u32,
        reused: u32,
        ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A span event of an LLM request, as JSON (see `llm::span`).
    Span { epoch: u64, span: serde_json::Value },
    /// The pipeline state for status displays.
    State { state: String },
    /// A stage reported a problem; the session goes on.
    Error { source: String, message: String },
}

/// The kind of an [`Event`] without its payload.
pub type EventKind = &'static str;

impl Event {
    /// The snake_case kind, as in the `type` tag.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::SpeechStarted { .. } => "speech_started",
            Event::SpeechPaused { .. } => "speech_paused",
            Event::SpeechStopped { .. } => "speech_stopped",
            Event::TurnJudged { .. } => "turn_judged",
            Event::Transcript { .. } => "transcript",
            Event::TurnOpened { .. } => "turn_opened",
            Event::Staged { .. } => "staged",
            Event::Quarantined { .. } => "quarantined",
            Event::TaskCancelled { .. } => "task_cancelled",
            Event::BotText { .. } => "bot_text",
            Event::BotStartedSpeaking { .. } => "bot_started_speaking",
            Event::BotStoppedSpeaking { .. } => "bot_stopped_speaking",
            Event::Committed { .. } => "committed",
            Event::CallEnded { .. } => "call_ended",
            Event::Tool { .. } => "tool",
            Event::Interrupted { .. } => "interrupted",
            Event::ClearPlayback { .. } => "clear_playback",
            Event::FalseInterruption { .. } => "false_interruption",
            Event::Resumed { .. } => "resumed",
            Event::TurnLatency { .. } => "turn_latency",
            Event::Route { .. } => "route",
            Event::PrefillDone { .. } => "prefill_done",
            Event::Span { .. } => "span",
            Event::State { .. } => "state",
            Event::Error { .. } => "error",
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// An event with its time on the session's audio timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedEvent {
    /// Milliseconds since the session started, on the session clock.
    pub t_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_a_type_tag_and_display_hides_text() {
        let e = TimedEvent {
            t_ms: 40,
            event: Event::Transcript {
                epoch: 1,
                text: "my secret".into(),
                is_final: true,
            },
        };
        let json = serde_json::to_string(&e).expect("serialise");
        assert!(json.contains(r#""type":"transcript""#), "{json}");
        assert!(json.contains(r#""t_ms":40"#), "{json}");
        assert_eq!(e.event.to_string(), "transcript");
        let back: TimedEvent = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, e);
    }
}
