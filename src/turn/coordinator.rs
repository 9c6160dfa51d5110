//! The coordinator's state machine (invariants are numbered in `turn/mod.rs`).

use super::history::History;
use super::playout::{Playout, SpokenChunk};
use crate::agent::{Agent, CostMode, Payload, Reporter, TaskId, TaskMessage, TurnJob};
use crate::frame::{samples_to_ms, CancelReason, CancelSignal, Event, TimedEvent, SAMPLE_RATE};
use crate::llm::{ChatMessage, ToolCall};
use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the bot does after a false interruption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ResumeMode {
    /// Continue from the exact sample where playback stopped.
    Resume,
    /// Restate the interrupted sentence from its start.
    #[default]
    Restate,
    /// Stay silent (the interrupted reply is committed as heard).
    Off,
}

/// Coordinator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorConfig {
    /// User speech over the bot must last this long to count as a barge-in.
    pub interrupt_min_ms: u64,
    /// Without transcripts, an interrupting utterance shorter than this is
    /// treated as a backchannel/noise (false interruption).
    pub backchannel_max_ms: u64,
    /// Words that alone make a backchannel, not an interruption.
    pub backchannel_words: Vec<String>,
    pub resume: ResumeMode,
    /// Longest carried-over user audio (seconds) when the user goes on
    /// talking before the reply starts.
    pub max_carry_secs: u32,
    /// Start answering at the first short pause (the turn detector's
    /// `pause_ms`), holding the reply until the endpoint confirms the turn;
    /// the user going on cancels it (invariant 8).
    pub speculative: bool,
    /// Plain messages of committed history kept in memory (the journal
    /// keeps them all; `history.rs` invariant 2).
    pub history_messages: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            interrupt_min_ms: 300,
            backchannel_max_ms: 700,
            backchannel_words: [
                "mm", "mhm", "mmhm", "hmm", "uh", "huh", "uhhuh", "um", "ah", "oh", "yeah", "yes",
                "yep", "ok", "okay", "right", "sure", "i", "see",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            resume: ResumeMode::Restate,
            max_carry_secs: 30,
            speculative: true,
            history_messages: super::history::DEFAULT_HISTORY_MESSAGES,
        }
    }
}

/// How a dispatched task ended (invariant 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Committed,
    Cancelled(CancelReason),
    Failed,
    /// Its results were all dropped without it being cancelled first (a task
    /// the coordinator did not know).
    Quarantined,
}

/// What the bot side is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnState {
    Idle,
    Thinking,
    Speaking,
}

/// A committed round, for the journal.
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedRound {
    pub epoch: u64,
    pub messages: Vec<ChatMessage>,
    pub interrupted: bool,
    pub committed_ms: u64,
    pub timing: TurnTiming,
    /// The model that answered, when the agent said.
    pub model: Option<String>,
}

/// When each stage of a turn happened (session ms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnTiming {
    pub end_of_speech_ms: Option<u64>,
    pub stt_ms: Option<u64>,
    pub first_token_ms: Option<u64>,
    pub first_audio_ms: Option<u64>,
}

struct InFlight {
    epoch: u64,
    cancel: CancelSignal,
    dispatched_ms: u64,
    started: std::time::Instant,
}

struct Staging {
    epoch: u64,
    task: TaskId,
    user_text: String,
    /// The utterance this turn answers (carried over if the turn is dropped).
    audio: Arc<[i16]>,
    /// The task's token (cancelled again on barge-in even after it finished).
    cancel: CancelSignal,
    tools: Vec<(ToolCall, String)>,
    chunks: Vec<(String, Arc<[i16]>)>,
    done: bool,
    /// Set when this turn's utterance interrupted a reply: decides between
    /// a real and a false interruption once the transcript is known.
    judging: bool,
    end_of_speech_ms: u64,
    stt_ms: Option<u64>,
    first_token_ms: Option<u64>,
    first_audio_ms: Option<u64>,
    model: Option<String>,
    /// The agent ended the call with this turn (hang up once committed).
    end_call: bool,
    /// The routed stages' races so far (for `turn_latency`).
    routes: Vec<crate::route::RouteNote>,
    /// Opened at a pause: results are kept, nothing plays, until the
    /// endpoint confirms the turn (invariant 8).
    held: bool,
}

impl Staging {
    fn timing(&self) -> TurnTiming {
        TurnTiming {
            end_of_speech_ms: Some(self.end_of_speech_ms),
            stt_ms: self.stt_ms,
            first_token_ms: self.first_token_ms,
            first_audio_ms: self.first_audio_ms,
        }
    }
}

/// A reply stopped by a barge-in, waiting for the verdict on the interruption.
struct Suspended {
    user_text: String,
    tools: Vec<(ToolCall, String)>,
    chunks: Vec<(String, Arc<[i16]>)>,
    done: bool,
    played: u64,
    spoken: String,
    timing: TurnTiming,
    model: Option<String>,
    end_call: bool,
    /// The epoch whose `clear_playback` cut it, where it began in the
    /// output stream, and how much of it had been sent (16 kHz): a client's
    /// report of where that clear stopped it refines `played` (see
    /// [`Coordinator::on_played`]).
    epoch: u64,
    base: u64,
    sent: u64,
}

/// Outcomes kept in memory: the last this many tasks' (older ones are
/// only counted as settled).
const OUTCOMES_KEPT: usize = 64;

/// The turn coordinator. Single-threaded (invariant 6).
pub struct Coordinator {
    config: CoordinatorConfig,
    agent: Arc<dyn Agent>,
    results: Sender<TaskMessage>,
    cost_mode: CostMode,
    session_cancel: CancellationToken,
    playout: Playout,
    epoch: u64,
    next_task: TaskId,
    history: History,
    staging: Option<Staging>,
    suspended: Option<Suspended>,
    call_ended: bool,
    /// The first frame was seen (the greeting decision is made once).
    started: bool,
    in_flight: BTreeMap<TaskId, InFlight>,
    /// Outcomes of the last tasks (at most `2 × OUTCOMES_KEPT`); every
    /// task below `outcomes_floor` has one.
    outcomes: BTreeMap<TaskId, Outcome>,
    outcomes_floor: TaskId,
    state: TurnState,
    /// User speech start (sample) while the bot speaks: a barge-in candidate.
    candidate: Option<u64>,
    carried_audio: Vec<i16>,
    quarantined: u64,
    /// Attempts to give a task a second outcome (must stay 0: invariant 4).
    outcome_conflicts: u64,
    events: Vec<TimedEvent>,
    committed: Vec<CommittedRound>,
}

impl Coordinator {
    pub fn new(
        config: CoordinatorConfig,
        agent: Arc<dyn Agent>,
        results: Sender<TaskMessage>,
        cost_mode: CostMode,
        playout: Playout,
        session_cancel: CancellationToken,
    ) -> Self {
        let history = History::new(config.history_messages);
        Self {
            config,
            agent,
            results,
            cost_mode,
            session_cancel,
            playout,
            epoch: 0,
            next_task: 1,
            history,
            staging: None,
            suspended: None,
            call_ended: false,
            started: false,
            in_flight: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            outcomes_floor: 0,
            state: TurnState::Idle,
            candidate: None,
            carried_audio: Vec::new(),
            quarantined: 0,
            outcome_conflicts: 0,
            events: Vec::new(),
            committed: Vec::new(),
        }
    }

    /// Starts from committed history (a resumed session).
    pub fn with_history(mut self, history: Vec<ChatMessage>) -> Self {
        self.history.replace(history);
        self
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn state(&self) -> TurnState {
        self.state
    }
    pub fn history(&self) -> &[ChatMessage] {
        self.history.messages()
    }

    /// Plain messages of committed history dropped from memory so far
    /// (bounded history, `history.rs`).
    pub fn history_dropped(&self) -> u64 {
        self.history.dropped()
    }
    /// Outcomes of the recent tasks (older ones are dropped from memory).
    pub fn outcomes(&self) -> &BTreeMap<TaskId, Outcome> {
        &self.outcomes
    }
    pub fn quarantined(&self) -> u64 {
        self.quarantined
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    /// Running tasks: id, dispatch time (session ms), wall-clock start.
    pub fn running(&self) -> impl Iterator<Item = (TaskId, u64, std::time::Instant)> + '_ {
        self.in_flight
            .iter()
            .map(|(t, f)| (*t, f.dispatched_ms, f.started))
    }
    /// Whether reply audio is playing or queued (the echo gate uses this).
    pub fn bot_speaking(&self) -> bool {
        self.state == TurnState::Speaking
    }
    /// Whether a speculative turn is held (invariant 8).
    pub fn is_held(&self) -> bool {
        self.staging.as_ref().is_some_and(|s| s.held)
    }
    /// The held turn's transcript, once its agent reported one.
    pub fn held_transcript(&self) -> Option<&str> {
        self.staging
            .as_ref()
            .filter(|s| s.held && s.stt_ms.is_some())
            .map(|s| s.user_text.as_str())
    }
    /// Whether anything is still to happen (a task running or audio queued).
    pub fn busy(&self) -> bool {
        self.state != TurnState::Idle || !self.in_flight.is_empty() || self.suspended.is_some()
    }

    /// Takes the events produced since the last call.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, TimedEvent> {
        self.events.drain(..)
    }

    /// Takes the rounds committed since the last call (for the journal).
    pub fn drain_committed(&mut self) -> std::vec::Drain<'_, CommittedRound> {
        self.committed.drain(..)
    }

    /// Records how a task ended; a second outcome is counted as a conflict
    /// and ignored (holds invariant 4).
    fn set_outcome(&mut self, task: TaskId, outcome: Outcome) {
        if self.has_outcome(&task) {
            self.outcome_conflicts += 1;
            tracing::error!(task, ?outcome, "task already has an outcome");
            return;
        }
        self.outcomes.insert(task, outcome);
        // Bounded memory: outcomes of tasks long settled are forgotten, and
        // every task below the floor counts as having one (invariant 4 is
        // still checked for them: a late second outcome is a conflict).
        if self.outcomes.len() > 2 * OUTCOMES_KEPT {
            let floor = self
                .next_task
                .saturating_sub(OUTCOMES_KEPT as TaskId)
                .min(self.in_flight.keys().next().copied().unwrap_or(TaskId::MAX));
            while self
                .outcomes
                .first_key_value()
                .is_some_and(|(t, _)| *t < floor)
            {
                self.outcomes.pop_first();
            }
            self.outcomes_floor = self.outcomes_floor.max(floor);
        }
    }

    /// Whether `task` has its outcome (holds invariant 4 past the pruning
    /// of old outcomes).
    fn has_outcome(&self, task: &TaskId) -> bool {
        *task < self.outcomes_floor || self.outcomes.contains_key(task)
    }

    /// Tasks given a second outcome (always 0 unless invariant 4 is broken).
    pub fn outcome_conflicts(&self) -> u64 {
        self.outcome_conflicts
    }

    fn emit(&mut self, t_ms: u64, event: Event) {
        self.events.push(TimedEvent { t_ms, event });
    }

    // ---- user side ---------------------------------------------------------

    /// The turn detector confirmed user speech starting at sample `at`.
    pub fn on_user_started(&mut self, at: u64, now_ms: u64) {
        self.emit(
            now_ms,
            Event::SpeechStarted {
                at_ms: samples_to_ms(at),
            },
        );
        match self.state {
            TurnState::Speaking => self.candidate = Some(at),
            TurnState::Thinking => {
                // The user goes on talking before any reply was heard: drop the
                // reply and answer the whole utterance later (nothing was heard,
                // so nothing is committed).
                self.cancel_all(CancelReason::BargeIn, now_ms);
                if let Some(st) = self.staging.take() {
                    self.emit(
                        now_ms,
                        Event::Interrupted {
                            epoch: st.epoch,
                            spoken: String::new(),
                            played_ms: 0,
                        },
                    );
                    self.carry_audio(&st.audio);
                }
                self.epoch += 1;
                self.state = TurnState::Idle;
            }
            TurnState::Idle => {}
        }
    }

    /// The user's turn ended; `audio` is the utterance (16 kHz).
    /// The user's turn ended: `audio` is the utterance (16 kHz), the speech
    /// itself ended at `end_ms` (the endpointing silence followed it).
    pub fn on_user_stopped(&mut self, audio: &[i16], speech_ms: u64, end_ms: u64, now_ms: u64) {
        self.emit(
            now_ms,
            Event::SpeechStopped {
                at_ms: end_ms,
                speech_ms,
            },
        );
        if self.staging.as_ref().is_some_and(|s| s.held) {
            // The pause was the end of the turn: the speculative turn is it.
            self.release_held(now_ms);
            return;
        }
        let was_candidate = self.candidate.take().is_some();
        if was_candidate
            && (self.state == TurnState::Speaking || speech_ms < self.config.interrupt_min_ms)
        {
            // Speech over the bot that never reached the barge-in threshold
            // (a cough, a click): the bot never stopped; nothing to answer.
            return;
        }
        let judging = self.suspended.is_some();
        if judging && !self.agent.transcribes() {
            if speech_ms < self.config.backchannel_max_ms {
                self.false_interruption(now_ms);
                return;
            }
            self.commit_suspended(now_ms);
        }
        let judging = self.suspended.is_some();
        let mut full: Vec<i16> = std::mem::take(&mut self.carried_audio);
        full.extend_from_slice(audio);
        self.open_turn(full.into(), judging, end_ms, now_ms);
    }

    /// Whether a pause now may open a speculative turn: enabled, nothing in
    /// progress on either side.
    pub fn can_speculate(&self) -> bool {
        self.config.speculative
            && self.state == TurnState::Idle
            && self.staging.is_none()
            && self.suspended.is_none()
            && self.candidate.is_none()
    }

    /// The user paused (not yet the end of turn): opens the turn on the audio
    /// so far, held (invariant 8). Carried-over audio is copied, not taken,
    /// so it is still there if the user goes on.
    pub fn on_user_paused(&mut self, audio: &[i16], speech_ms: u64, end_ms: u64, now_ms: u64) {
        if !self.can_speculate() || speech_ms < self.config.interrupt_min_ms.min(200) {
            return;
        }
        let mut full = self.carried_audio.clone();
        full.extend_from_slice(audio);
        self.open_turn(full.into(), false, end_ms, now_ms);
        if let Some(st) = self.staging.as_mut() {
            st.held = true;
        }
    }

    /// The user went on after a pause: a held turn is dropped (its results
    /// will be quarantined); the whole utterance is answered at its end.
    pub fn on_user_continued(&mut self, now_ms: u64) {
        if !self.staging.as_ref().is_some_and(|s| s.held) {
            return;
        }
        self.cancel_all(CancelReason::BargeIn, now_ms);
        if let Some(st) = self.staging.take() {
            st.cancel.cancel(CancelReason::BargeIn);
            // A job that had already finished is cancelled here.
            if !self.has_outcome(&st.task) {
                self.set_outcome(st.task, Outcome::Cancelled(CancelReason::BargeIn));
                self.emit(
                    now_ms,
                    Event::TaskCancelled {
                        epoch: st.epoch,
                        task: st.task,
                        reason: CancelReason::BargeIn,
                    },
                );
            }
        }
        self.epoch += 1;
        self.state = TurnState::Idle;
    }

    /// The endpoint confirmed a held turn: what it produced plays now.
    fn release_held(&mut self, now_ms: u64) {
        self.carried_audio.clear();
        let Some(st) = self.staging.as_mut() else {
            return;
        };
        st.held = false;
        let chunks = st.chunks.clone();
        let done = st.done;
        if !chunks.is_empty() {
            self.begin_speaking(now_ms);
            let epoch = self.epoch;
            for (text, audio) in &chunks {
                self.playout.enqueue(text, audio);
                self.emit(
                    now_ms,
                    Event::BotText {
                        epoch,
                        text: text.clone(),
                    },
                );
            }
            self.playout.pump();
        } else if done {
            self.commit_staging(now_ms, false);
        }
    }

    /// The first audio of a reply: state, events, latency.
    fn begin_speaking(&mut self, now_ms: u64) {
        let epoch = self.epoch;
        self.playout.begin_reply();
        self.state = TurnState::Speaking;
        self.emit(now_ms, Event::BotStartedSpeaking { epoch });
        if let Some(st) = self.staging.as_mut() {
            st.first_audio_ms.get_or_insert(now_ms);
        }
        if let Some(st) = &self.staging {
            self.events.push(TimedEvent {
                t_ms: now_ms,
                event: Event::TurnLatency {
                    epoch,
                    end_of_speech_ms: st.end_of_speech_ms,
                    stt_ms: st.stt_ms,
                    first_token_ms: st.first_token_ms,
                    first_audio_ms: now_ms,
                    routes: st.routes.clone(),
                },
            });
        }
    }

    /// Called once per input frame with the current sample position.
    pub fn on_frame(&mut self, now_sample: u64, now_ms: u64) {
        if !self.started {
            // The call starts (invariant 9): an agent that speaks first
            // greets a new conversation (not a resumed one).
            self.started = true;
            if self.agent.greets() && self.history.is_empty() && self.state == TurnState::Idle {
                self.open_job(Arc::from(Vec::new()), false, true, now_ms, now_ms);
            }
        }
        if let Some(start) = self.candidate {
            if self.state == TurnState::Speaking
                && samples_to_ms(now_sample.saturating_sub(start)) >= self.config.interrupt_min_ms
            {
                self.candidate = None;
                self.barge_in(now_ms);
            }
        }
        self.playout.pump();
        if self.state == TurnState::Speaking
            && self.staging.as_ref().is_some_and(|s| s.done)
            && self.playout.drained()
        {
            self.commit_staging(now_ms, false);
        }
    }

    // ---- bot side ----------------------------------------------------------

    fn open_turn(&mut self, audio: Arc<[i16]>, judging: bool, end_ms: u64, now_ms: u64) {
        self.open_job(audio, judging, false, end_ms, now_ms);
    }

    fn open_job(
        &mut self,
        audio: Arc<[i16]>,
        judging: bool,
        greeting: bool,
        end_ms: u64,
        now_ms: u64,
    ) {
        self.epoch += 1;
        let task = self.next_task;
        self.next_task += 1;
        // The job token carries its reason to the job's legs; the session's
        // root token cancelled by itself reads as a shutdown.
        let cancel = CancelSignal::new(self.session_cancel.child_token(), CancelReason::Shutdown);
        self.in_flight.insert(
            task,
            InFlight {
                epoch: self.epoch,
                cancel: cancel.clone(),
                dispatched_ms: now_ms,
                started: std::time::Instant::now(),
            },
        );
        self.staging = Some(Staging {
            epoch: self.epoch,
            task,
            user_text: String::new(),
            audio: audio.clone(),
            cancel: cancel.clone(),
            tools: Vec::new(),
            chunks: Vec::new(),
            done: false,
            judging,
            end_of_speech_ms: end_ms,
            stt_ms: None,
            first_token_ms: None,
            first_audio_ms: None,
            model: None,
            end_call: false,
            routes: Vec::new(),
            held: false,
        });
        self.state = TurnState::Thinking;
        self.emit(
            now_ms,
            Event::TurnOpened {
                epoch: self.epoch,
                greeting,
            },
        );
        let mut history = self.history.messages().to_vec();
        if let Some(s) = &self.suspended {
            // Provisional: what the new turn would see if the interruption is real.
            history.extend(interrupted_round(s));
        }
        let job = TurnJob {
            epoch: self.epoch,
            task,
            history,
            user_audio: audio,
            cancel,
            greeting,
        };
        let reporter = Reporter::new(
            self.results.clone(),
            self.epoch,
            task,
            now_ms,
            self.cost_mode,
        );
        self.agent.start(job, reporter);
    }

    /// A message from a task (holds invariant 2).
    pub fn on_message(&mut self, msg: TaskMessage, now_ms: u64) {
        let current = self
            .in_flight
            .get(&msg.task)
            .is_some_and(|f| f.epoch == self.epoch)
            && msg.epoch == self.epoch
            && self
                .staging
                .as_ref()
                .is_some_and(|s| s.task == msg.task && s.epoch == msg.epoch);
        if !current {
            self.quarantined += 1;
            // A task id never dispatched: its only outcome is this quarantine.
            if msg.task >= self.next_task && !self.has_outcome(&msg.task) {
                self.outcomes.insert(msg.task, Outcome::Quarantined);
            }
            self.emit(
                now_ms,
                Event::Quarantined {
                    epoch: msg.epoch,
                    current_epoch: self.epoch,
                    task: msg.task,
                    what: msg.payload.kind().to_string(),
                },
            );
            return;
        }
        let epoch = self.epoch;
        let what = msg.payload.kind();
        match msg.payload {
            Payload::Transcript(text) => {
                if let Some(st) = self.staging.as_mut() {
                    st.user_text = text.clone();
                    st.stt_ms = Some(now_ms);
                }
                self.emit(
                    now_ms,
                    Event::Transcript {
                        epoch,
                        text: text.clone(),
                        is_final: true,
                    },
                );
                if self.staging.as_ref().is_some_and(|s| s.judging) {
                    if self.is_backchannel(&text) {
                        self.drop_turn(msg.task, now_ms);
                        self.false_interruption(now_ms);
                        return;
                    }
                    self.commit_suspended(now_ms);
                    if let Some(st) = self.staging.as_mut() {
                        st.judging = false;
                    }
                }
            }
            Payload::Model(model) => {
                if let Some(st) = self.staging.as_mut() {
                    st.model = Some(model);
                }
            }
            Payload::Route(note) => {
                if self
                    .staging
                    .as_ref()
                    .is_some_and(|s| s.first_audio_ms.is_some())
                {
                    // `turn_latency` went out: a later race is its own event
                    // (route note invariant 4).
                    if note.eventful() {
                        self.emit(now_ms, Event::Route { epoch, route: note });
                    }
                } else if let Some(st) = self.staging.as_mut().filter(|s| s.routes.len() < 16) {
                    st.routes.push(note);
                }
            }
            Payload::Token(_) => {
                if let Some(st) = self.staging.as_mut() {
                    st.first_token_ms.get_or_insert(now_ms);
                }
            }
            Payload::Speech { text, audio } => {
                let held = self.staging.as_ref().is_some_and(|s| s.held);
                if !held {
                    if self.state != TurnState::Speaking {
                        self.begin_speaking(now_ms);
                    }
                    self.playout.enqueue(&text, &audio);
                    self.playout.pump();
                }
                if let Some(st) = self.staging.as_mut() {
                    st.chunks.push((text.clone(), audio));
                }
                if !held {
                    // A held turn's text is shown when it is released.
                    self.emit(now_ms, Event::BotText { epoch, text });
                }
            }
            Payload::Tool { call, result } => {
                self.emit(
                    now_ms,
                    Event::Tool {
                        epoch,
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                        result: result.clone(),
                    },
                );
                if let Some(st) = self.staging.as_mut() {
                    st.tools.push((call, result));
                }
            }
            Payload::EndCall => {
                if let Some(st) = self.staging.as_mut() {
                    st.end_call = true;
                }
            }
            Payload::Done => {
                self.in_flight.remove(&msg.task);
                if let Some(st) = self.staging.as_mut() {
                    st.done = true;
                }
                let held = self.staging.as_ref().is_some_and(|s| s.held);
                if self.state == TurnState::Thinking && !held {
                    // Nothing to say: commit the round with an empty reply.
                    self.commit_staging(now_ms, false);
                }
            }
            Payload::Failed(message) => {
                self.in_flight.remove(&msg.task);
                self.set_outcome(msg.task, Outcome::Failed);
                self.emit(
                    now_ms,
                    Event::Error {
                        source: "agent".into(),
                        message,
                    },
                );
                // Nothing the user heard is lost: a reply that already played
                // in part is committed as interrupted; otherwise roll back.
                if self.state == TurnState::Speaking {
                    self.playout.silence();
                    let played = self.playout.played_16k();
                    self.commit_staging_prefix(played, now_ms);
                } else {
                    self.staging = None;
                }
                self.state = TurnState::Idle;
                return;
            }
        }
        if !matches!(what, "token" | "model" | "route") {
            self.emit(
                now_ms,
                Event::Staged {
                    epoch,
                    task: msg.task,
                    what: what.to_string(),
                },
            );
        }
    }

    fn is_backchannel(&self, text: &str) -> bool {
        let norm = crate::stt::normalize::normalize(text);
        norm.split_whitespace()
            .all(|w| self.config.backchannel_words.iter().any(|b| b == w))
    }

    fn cancel_all(&mut self, reason: CancelReason, now_ms: u64) {
        let tasks: Vec<(TaskId, InFlight)> =
            std::mem::take(&mut self.in_flight).into_iter().collect();
        for (task, f) in tasks {
            f.cancel.cancel(reason);
            self.set_outcome(task, Outcome::Cancelled(reason));
            self.emit(
                now_ms,
                Event::TaskCancelled {
                    epoch: f.epoch,
                    task,
                    reason,
                },
            );
        }
    }

    /// Confirmed barge-in (invariant 3).
    fn barge_in(&mut self, now_ms: u64) {
        let played = self.playout.played_16k();
        let (base, sent) = (self.playout.reply_base(), self.playout.sent_16k());
        self.playout.silence();
        let old_epoch = self.epoch;
        self.emit(now_ms, Event::ClearPlayback { epoch: old_epoch });
        self.epoch += 1;
        self.cancel_all(CancelReason::BargeIn, now_ms);
        let spoken = self.playout.spoken_prefix(played);
        self.emit(
            now_ms,
            Event::Interrupted {
                epoch: old_epoch,
                spoken: spoken.clone(),
                played_ms: samples_to_ms(played),
            },
        );
        if let Some(st) = self.staging.take() {
            // A reply that had finished producing is cut here: its task ends
            // as cancelled by the barge-in (the heard prefix may still be
            // committed, see `commit_suspended`).
            st.cancel.cancel(CancelReason::BargeIn);
            if st.task != 0 && !self.has_outcome(&st.task) {
                self.set_outcome(st.task, Outcome::Cancelled(CancelReason::BargeIn));
            }
            let timing = st.timing();
            self.suspended = Some(Suspended {
                user_text: st.user_text,
                tools: st.tools,
                chunks: st.chunks,
                done: st.done,
                played,
                spoken,
                timing,
                model: st.model,
                end_call: st.end_call,
                epoch: old_epoch,
                base,
                sent,
            });
        }
        self.state = TurnState::Idle;
    }

    /// The transport's client reports its playout position (output-rate
    /// samples of the stream; playout invariant 3); `clear` names the
    /// `clear_playback` that stopped it there. A suspended reply cut by that
    /// clear and not yet committed is then heard up to exactly there: what
    /// is committed is what the user heard, not what was sent.
    pub fn on_played(&mut self, position: u64, clear: Option<u64>) {
        self.playout.report_position(position);
        let Some(s) = self.suspended.as_mut() else {
            return;
        };
        if clear != Some(s.epoch) {
            return;
        }
        let played = self.playout.heard_16k(s.base, position, s.sent);
        if played != s.played {
            s.played = played;
            s.spoken = super::playout::spoken_prefix(&spoken_chunks(&s.chunks), played);
        }
    }

    /// The interrupting utterance had no words: resume the suspended reply.
    fn false_interruption(&mut self, now_ms: u64) {
        let Some(s) = self.suspended.take() else {
            return;
        };
        self.emit(now_ms, Event::FalseInterruption { epoch: self.epoch });
        if self.config.resume == ResumeMode::Off {
            self.suspended = Some(s);
            self.commit_suspended(now_ms);
            return;
        }
        // Find the cut: chunk index and offset within it.
        let mut left = s.played;
        let mut idx = 0;
        while idx < s.chunks.len() && left >= s.chunks[idx].1.len() as u64 {
            left -= s.chunks[idx].1.len() as u64;
            idx += 1;
        }
        let offset = match self.config.resume {
            ResumeMode::Resume => left as usize,
            _ => 0,
        };
        self.epoch += 1;
        let from = s.chunks.get(idx).map(|c| c.0.clone()).unwrap_or_default();
        self.emit(
            now_ms,
            Event::Resumed {
                epoch: self.epoch,
                from,
            },
        );
        // The already-heard chunks stay as they were; the rest plays again.
        self.playout.begin_reply();
        let mut staging = Staging {
            epoch: self.epoch,
            task: 0,
            user_text: s.user_text,
            audio: Arc::from(Vec::new()),
            cancel: CancelSignal::new(CancellationToken::new(), CancelReason::BargeIn),
            tools: s.tools,
            chunks: Vec::new(),
            done: true,
            judging: false,
            end_of_speech_ms: now_ms,
            stt_ms: None,
            first_token_ms: None,
            first_audio_ms: None,
            model: None,
            end_call: s.end_call,
            routes: Vec::new(),
            held: false,
        };
        // Keep heard chunks in the text but not in the audio.
        staging.chunks.extend(s.chunks[..idx].iter().cloned());
        for (i, (text, audio)) in s.chunks[idx..].iter().enumerate() {
            let a = if i == 0 {
                &audio[offset.min(audio.len())..]
            } else {
                &audio[..]
            };
            self.playout.enqueue(text, a);
            staging.chunks.push((text.clone(), audio.clone()));
        }
        if !s.done {
            // The reply was cut before it was complete: what will be said is
            // all there is; commit it marked interrupted when played.
            staging.judging = true;
        }
        self.staging = Some(staging);
        self.state = TurnState::Speaking;
        self.playout.pump();
    }

    /// The interruption was real: commit what the user heard of the
    /// suspended reply, marked interrupted (invariants 1 and 5).
    fn commit_suspended(&mut self, now_ms: u64) {
        let Some(s) = self.suspended.take() else {
            return;
        };
        let messages = interrupted_round(&s);
        self.push_round(messages, true, s.timing, s.model, now_ms);
        if s.end_call {
            self.end_call(now_ms);
        }
    }

    /// Drops the current (judging) turn: the bot resumes instead.
    fn drop_turn(&mut self, task: TaskId, now_ms: u64) {
        if let Some(f) = self.in_flight.remove(&task) {
            f.cancel.cancel(CancelReason::BargeIn);
            self.emit(
                now_ms,
                Event::TaskCancelled {
                    epoch: f.epoch,
                    task,
                    reason: CancelReason::BargeIn,
                },
            );
        }
        if !self.has_outcome(&task) {
            self.set_outcome(task, Outcome::Cancelled(CancelReason::BargeIn));
        }
        self.staging = None;
    }

    fn commit_staging(&mut self, now_ms: u64, interrupted: bool) {
        let Some(st) = self.staging.take() else {
            return;
        };
        // A resumed reply that had been cut mid-generation is still partial.
        let interrupted = interrupted || (st.task == 0 && st.judging);
        let assistant = st
            .chunks
            .iter()
            .map(|c| c.0.trim())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let mut messages = round_messages(&st.user_text, &st.tools);
        let mut msg = ChatMessage::assistant(assistant);
        msg.interrupted = interrupted;
        messages.push(msg);
        if st.task != 0 {
            self.set_outcome(st.task, Outcome::Committed);
        }
        if self.state == TurnState::Speaking {
            self.emit(now_ms, Event::BotStoppedSpeaking { epoch: st.epoch });
        }
        self.state = TurnState::Idle;
        if st.user_text.trim().is_empty() && st.chunks.is_empty() && st.tools.is_empty() {
            // No words and no reply (noise the VAD let through): nothing to keep.
            if st.end_call {
                self.end_call(now_ms);
            }
            return;
        }
        let timing = st.timing();
        self.push_round(messages, interrupted, timing, st.model, now_ms);
        if st.end_call {
            self.end_call(now_ms);
        }
    }

    /// The call is over (holds invariant 7): said once, after the round
    /// that ended it was committed.
    fn end_call(&mut self, now_ms: u64) {
        if !self.call_ended {
            self.call_ended = true;
            self.emit(now_ms, Event::CallEnded { epoch: self.epoch });
        }
    }

    /// True once an agent ended the call and that turn was committed; the
    /// transport hangs up.
    pub fn call_ended(&self) -> bool {
        self.call_ended
    }

    fn commit_staging_prefix(&mut self, played: u64, now_ms: u64) {
        let Some(st) = self.staging.take() else {
            return;
        };
        let spoken = super::playout::spoken_prefix(&spoken_chunks(&st.chunks), played);
        let mut messages = round_messages(&st.user_text, &st.tools);
        let mut msg = ChatMessage::assistant(spoken);
        msg.interrupted = true;
        messages.push(msg);
        let timing = st.timing();
        self.push_round(messages, true, timing, st.model, now_ms);
        if st.end_call {
            self.end_call(now_ms);
        }
    }

    fn push_round(
        &mut self,
        messages: Vec<ChatMessage>,
        interrupted: bool,
        timing: TurnTiming,
        model: Option<String>,
        now_ms: u64,
    ) {
        let user = messages
            .iter()
            .find(|m| m.role == crate::llm::Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let assistant = messages
            .iter()
            .rev()
            .find(|m| m.role == crate::llm::Role::Assistant)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        // Holds invariant 1: one extend, whole round.
        self.history.push_round(&messages);
        self.committed.push(CommittedRound {
            epoch: self.epoch,
            messages,
            interrupted,
            committed_ms: now_ms,
            timing,
            model,
        });
        self.emit(
            now_ms,
            Event::Committed {
                epoch: self.epoch,
                user,
                assistant,
                interrupted,
            },
        );
    }

    /// Cancels everything (session end).
    /// Cancels everything (reason: shutdown). What the user already heard is
    /// committed, marked interrupted; nothing unheard is.
    pub fn shutdown(&mut self, now_ms: u64) {
        let played = self.playout.played_16k();
        self.playout.silence();
        self.cancel_all(CancelReason::Shutdown, now_ms);
        if let Some(st) = &self.staging {
            st.cancel.cancel(CancelReason::Shutdown);
            if st.task != 0 && !self.has_outcome(&st.task) {
                self.set_outcome(st.task, Outcome::Cancelled(CancelReason::Shutdown));
            }
        }
        if self.state == TurnState::Speaking {
            self.commit_staging_prefix(played, now_ms);
        }
        self.staging = None;
        self.state = TurnState::Idle;
        if self.suspended.is_some() {
            self.commit_suspended(now_ms);
        }
    }

    /// Keeps user audio of a dropped reply to answer it with the next utterance.
    pub fn carry_audio(&mut self, audio: &[i16]) {
        let cap = self.config.max_carry_secs as usize * SAMPLE_RATE as usize;
        self.carried_audio.extend_from_slice(audio);
        if self.carried_audio.len() > cap {
            let cut = self.carried_audio.len() - cap;
            self.carried_audio.drain(..cut);
        }
    }
}

fn round_messages(user_text: &str, tools: &[(ToolCall, String)]) -> Vec<ChatMessage> {
    let mut messages = vec![ChatMessage::user(user_text)];
    if !tools.is_empty() {
        let mut call_msg = ChatMessage::assistant("");
        call_msg.tool_calls = tools.iter().map(|(c, _)| c.clone()).collect();
        messages.push(call_msg);
        for (c, r) in tools {
            messages.push(ChatMessage::tool_result(c.id.clone(), r.clone()));
        }
    }
    messages
}

fn spoken_chunks(chunks: &[(String, Arc<[i16]>)]) -> Vec<SpokenChunk> {
    chunks
        .iter()
        .map(|(t, a)| SpokenChunk {
            text: t.clone(),
            samples: a.len() as u64,
        })
        .collect()
}

fn interrupted_round(s: &Suspended) -> Vec<ChatMessage> {
    let mut messages = round_messages(&s.user_text, &s.tools);
    let mut msg = ChatMessage::assistant(s.spoken.clone());
    msg.interrupted = true;
    messages.push(msg);
    messages
}
