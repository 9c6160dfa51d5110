//! One conversation: the data plane (input ring → resample → VAD → turn
//! detector → utterance buffer) feeding the turn coordinator, and the
//! delivery of task results on the session's timeline. Every transport
//! (file, WebSocket, local devices) drives a `Session` the same way:
//! push input into its ring, call [`Session::process`], read the output ring.
//!
//! Time is the input's sample clock: `now` is the end of the last processed
//! input frame, so replays are deterministic and need no wall clock.
//!
//! # Real-time
//! [`Session::process_frame`] — echo control, VAD, turn detector and utterance
//! capture — does not allocate in steady state (no turn event): buffers are
//! sized up front (`tests/no_alloc.rs` counts allocations, with the default
//! echo backend; the AEC3 canceller of `--echo aec` allocates inside the
//! `aec3` crate, see `echo/aec.rs`).
//!
//! # Invariants
//! 1. Task results are delivered to the coordinator no earlier than
//!    `dispatched + cost` on the timeline (`Pacing::Charged`), or on arrival
//!    (`Pacing::Arrival`); within one tick in arrival order.
//! 2. Frames are processed in order, each exactly once.

use crate::agent::{Agent, CostMode, TaskId, TaskMessage};
use crate::audio::{EdgeResampler, FrameAssembler, InputConsumer, OutputProducer, ResampleError};
use crate::frame::{samples_to_ms, AudioFrame, Event, TimedEvent, FRAME_SAMPLES, SAMPLE_RATE};
use crate::turn::{Coordinator, CoordinatorConfig, Playout};
use crate::vad::{TurnConfig, TurnDetector, TurnEvent, Vad, VadKind};
use crossbeam_channel::Receiver;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod delivery;
mod hold;
mod utterance;
pub use utterance::UtteranceBuffer;
mod warm;
// Echo control before the VAD (local devices transport): see src/echo/.
use crate::echo::EchoControl;
pub use crate::echo::{EchoGate, EchoStats};

/// How task results are placed on the session timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// At `dispatched + cost` (replay on the virtual clock).
    Charged,
    /// When they arrive (live transports, wall clock).
    Arrival,
}

/// Session settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub vad: VadKind,
    pub turn: TurnConfig,
    pub coordinator: CoordinatorConfig,
    /// End of turn: silence only, or the judge (`--turn smart`, session/hold.rs).
    pub eot: crate::eot::EotConfig,
    /// Rate and channels of what the transport pushes into the input ring.
    pub input_rate: u32,
    pub input_channels: u16,
    /// Rate at which the transport plays the output ring.
    pub output_rate: u32,
    pub cost_mode: CostMode,
    pub pacing: Pacing,
    /// Pre-roll kept before confirmed speech start (ms).
    pub preroll_ms: u64,
    /// Audio before the first voiced frame handed to the agent with the
    /// utterance (ms): the VAD's onset is a frame or more late, and Whisper
    /// transcribes clipped first words badly.
    pub lead_ms: u64,
    /// Longest utterance kept for STT (seconds).
    pub max_utterance_secs: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            vad: VadKind::default(),
            turn: TurnConfig::default(),
            coordinator: CoordinatorConfig::default(),
            eot: crate::eot::EotConfig::default(),
            input_rate: SAMPLE_RATE,
            input_channels: 1,
            output_rate: SAMPLE_RATE,
            cost_mode: CostMode::Wall,
            pacing: Pacing::Charged,
            preroll_ms: 500,
            lead_ms: 300,
            max_utterance_secs: 30,
        }
    }
}

/// Why a session could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("input format: {0}")]
    Input(ResampleError),
    #[error("output format: {0}")]
    Output(ResampleError),
    #[error("voice activity detector: {0}")]
    Vad(String),
}

/// One conversation's pipeline and coordinator.
pub struct Session {
    input: InputConsumer,
    resampler: EdgeResampler,
    assembler: FrameAssembler,
    pop_buf: Vec<f32>,
    /// Frames resampled but not yet processed (bounded, sized up front).
    frames: VecDeque<AudioFrame>,
    vad: Box<dyn Vad>,
    detector: TurnDetector,
    utterance: UtteranceBuffer,
    lead: u64,
    coordinator: Coordinator,
    results: Receiver<TaskMessage>,
    /// Results received, waiting for their time on the timeline.
    waiting: Vec<(u64, u64, TaskMessage)>,
    arrival_seq: u64,
    last_cost: BTreeMap<TaskId, Duration>,
    /// Tasks whose final message (done/failed) was received, not yet delivered.
    finished: std::collections::BTreeSet<TaskId>,
    pacing: Pacing,
    cost_mode: CostMode,
    /// End of the last processed frame (samples).
    now: u64,
    events: Vec<TimedEvent>,
    /// LLM span events (telemetry: logged, never fenced by epoch).
    span_feed: Option<tokio::sync::broadcast::Receiver<crate::llm::span::SpanEvent>>,
    cancel: CancellationToken,
    /// Echo control (src/echo/): the gate by default, inert until
    /// `set_playback_level` is called; transports may set another backend.
    echo: Box<dyn EchoControl>,
    /// The end-of-turn judge's hold (hold.rs).
    hold: hold::Hold,
    /// Warm start (prefill while the user speaks; warm.rs).
    warm: warm::WarmStart,
}

impl Session {
    /// Builds a session reading `input` and playing into `output`.
    pub fn new(
        config: SessionConfig,
        agent: Arc<dyn Agent>,
        input: InputConsumer,
        output: OutputProducer,
    ) -> Result<Self, SessionError> {
        let resampler = EdgeResampler::new(config.input_rate, config.input_channels, SAMPLE_RATE)
            .map_err(SessionError::Input)?;
        let playout = Playout::new(output, config.output_rate).map_err(SessionError::Output)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let cancel = CancellationToken::new();
        let span_feed = agent.span_feed();
        let hold = hold::Hold::new(
            config.eot.clone(),
            crate::eot::audio_model(&config.eot),
            agent.flow(),
            agent.transcribes(),
            config.cost_mode,
            config.pacing,
        );
        let warm = warm::WarmStart::new(agent.clone());
        let coordinator = Coordinator::new(
            config.coordinator.clone(),
            agent,
            tx,
            config.cost_mode,
            playout,
            cancel.clone(),
        );
        let pop_len = resampler.chunk_frames() * config.input_channels as usize;
        Ok(Self {
            input,
            pop_buf: vec![0.0; pop_len],
            frames: VecDeque::with_capacity(64),
            resampler,
            assembler: FrameAssembler::new(0),
            vad: config.vad.try_build().map_err(SessionError::Vad)?,
            detector: TurnDetector::new(config.turn),
            utterance: UtteranceBuffer::new(
                (config.preroll_ms * SAMPLE_RATE as u64 / 1000) as usize,
                config.max_utterance_secs as usize * SAMPLE_RATE as usize,
            ),
            lead: crate::frame::ms_to_samples(config.lead_ms),
            coordinator,
            results: rx,
            waiting: Vec::with_capacity(64),
            arrival_seq: 0,
            last_cost: BTreeMap::new(),
            finished: std::collections::BTreeSet::new(),
            pacing: config.pacing,
            cost_mode: config.cost_mode,
            now: 0,
            events: Vec::with_capacity(64),
            span_feed,
            cancel,
            echo: Box::new(EchoGate::new()),
            hold,
            warm,
        })
    }

    /// Starts from committed history (resumed session).
    pub fn with_history(mut self, history: Vec<crate::llm::ChatMessage>) -> Self {
        // The coordinator keeps the bounded window (turn/history.rs); the
        // warm-up prefills the same.
        self.coordinator = self.coordinator.with_history(history);
        self.warm.set_history(self.coordinator.history().to_vec());
        self
    }

    /// Session time (ms): end of the last processed frame.
    pub fn now_ms(&self) -> u64 {
        samples_to_ms(self.now)
    }

    /// Samples processed so far.
    pub fn now_samples(&self) -> u64 {
        self.now
    }

    // ---- echo control hooks (local devices transport) ----------------------

    /// Replaces the echo-control backend (src/echo/; `EchoMode::build`).
    pub fn set_echo(&mut self, echo: Box<dyn EchoControl>) {
        self.echo = echo;
    }

    /// Tells the echo backend the loudest playback energy (mean square, full
    /// scale 1.0) since the last call (the gate uses it). Real-time safe.
    pub fn set_playback_level(&mut self, mean_square: f32) {
        self.echo.set_playback_level(self.now, mean_square);
    }

    /// Tells the echo backend the devices' output + input latency (ms).
    pub fn set_echo_latency_ms(&mut self, ms: u32) {
        self.echo.set_device_latency_ms(ms);
    }

    /// The echo backend's name and counters.
    pub fn echo_stats(&self) -> (&'static str, EchoStats) {
        (self.echo.name(), self.echo.stats())
    }

    // ---- end echo control hooks --------------------------------------------

    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// The transport's client reports where its playback is (output-rate
    /// samples of the bot audio stream), `clear` the clear that stopped it
    /// there ([`Coordinator::on_played`]).
    pub fn report_played(&mut self, position: u64, clear: Option<u64>) {
        self.coordinator.on_played(position, clear);
    }

    /// The session's root cancellation token (cancel = shutdown).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Pulls what the input ring holds through the resampler into frames.
    /// Real-time safe.
    pub fn pull_input(&mut self) {
        loop {
            let n = self.input.pop(&mut self.pop_buf);
            if n == 0 {
                break;
            }
            let frames = &mut self.frames;
            let assembler = &mut self.assembler;
            self.resampler.process(&self.pop_buf[..n], |s| {
                assembler.push(s, |f| frames.push_back(*f))
            });
        }
    }

    /// Processes every pending input frame and delivers due results.
    /// `on_user_frame` sees each frame as the pipeline heard it.
    pub fn process(&mut self, mut on_user_frame: impl FnMut(&AudioFrame)) {
        self.warm.begin(self.now_ms());
        self.pull_input();
        self.receive();
        while let Some(frame) = self.frames.pop_front() {
            self.deliver_due();
            on_user_frame(&frame);
            self.process_frame(&frame);
        }
        self.deliver_due();
        self.collect_spans();
    }

    /// The per-frame data path: VAD → turn detector → utterance capture →
    /// coordinator tick. Real-time safe in steady state.
    pub fn process_frame(&mut self, frame: &AudioFrame) {
        // Echo control before the VAD: a canceller cleans the frame, a gate
        // may veto `p`; both pass everything unchanged until armed
        // (echo/mod.rs invariant 3).
        let mut cleaned = *frame;
        self.echo.process(&mut cleaned);
        let frame = &cleaned;
        let p = self.vad.speech_probability(frame);
        let p = self.echo.gate(p, frame);
        let event = self.detector.push(p, frame.start);
        self.utterance.push(
            &frame.samples,
            self.detector.is_speaking() || event.is_some(),
        );
        self.now = frame.start + FRAME_SAMPLES as u64;
        let now_ms = samples_to_ms(self.now);
        match event {
            Some(TurnEvent::Started { at }) => {
                if self.hold.on_user_went_on() {
                    // The user goes on after a held end of turn: drop the
                    // held turn; the whole utterance is answered at its end.
                    self.coordinator.on_user_continued(now_ms);
                }
                self.utterance.mark_start(at);
                self.coordinator.on_user_started(at, now_ms);
            }
            Some(TurnEvent::Stopped { start, end }) => {
                let start = self.hold.origin(start);
                let end_ms = samples_to_ms(end);
                if !self
                    .hold
                    .defer_stop(&self.coordinator, start, end, end_ms, now_ms)
                {
                    self.end_turn(start, end, now_ms);
                }
            }
            Some(TurnEvent::Paused { at }) => {
                self.push_event(
                    now_ms,
                    Event::SpeechPaused {
                        at_ms: samples_to_ms(at),
                    },
                );
                // Speculative turn: answer what was said so far while the
                // endpoint silence runs; the reply is held until it elapses.
                if let (true, Some(start)) = (
                    self.coordinator.can_speculate(),
                    self.detector.utterance_start(),
                ) {
                    let start = self.hold.origin(start);
                    let audio = self.utterance.copy(start.saturating_sub(self.lead), at);
                    self.coordinator.on_user_paused(
                        &audio,
                        samples_to_ms(at - start),
                        samples_to_ms(at),
                        now_ms,
                    );
                    if self.coordinator.is_held() {
                        let (utterance, now) = (&self.utterance, self.now);
                        let from = start.saturating_sub(self.lead);
                        self.hold.on_pause(|| utterance.copy(from, now), now_ms);
                    }
                }
            }
            Some(TurnEvent::Continued { .. }) => {
                self.hold.on_user_went_on();
                self.coordinator.on_user_continued(now_ms)
            }
            None => {}
        }
        if event.is_none() {
            self.judge(now_ms);
        }
        self.coordinator.on_frame(self.now, now_ms);
        self.collect_events();
    }

    /// Ends input: closes an open user turn (a held end of turn is
    /// released: hold invariant 2).
    pub fn finish_input(&mut self) {
        let frames = &mut self.frames;
        self.assembler.flush(|f| frames.push_back(*f));
        while let Some(frame) = self.frames.pop_front() {
            self.process_frame(&frame);
        }
        let now = self.now_ms();
        if let Some(TurnEvent::Stopped { start, end }) = self.detector.finish() {
            let start = self.hold.origin(start);
            self.hold.finish_turn();
            self.end_turn(start, end, now);
        } else if let Some((start, end)) = self.hold.release_now(now) {
            self.end_turn(start, end, now);
        }
        self.collect_events();
    }

    /// Hands the utterance `start..end` to the coordinator as ended.
    fn end_turn(&mut self, start: u64, end: u64, now_ms: u64) {
        let audio = self.utterance.take(start.saturating_sub(self.lead), end);
        self.coordinator.on_user_stopped(
            &audio,
            samples_to_ms(end - start),
            samples_to_ms(end),
            now_ms,
        );
    }

    /// The end-of-turn judge's decisions between detector events (hold.rs).
    fn judge(&mut self, now_ms: u64) {
        let in_pause = self.detector.is_speaking();
        match self.hold.tick(&self.coordinator, in_pause, now_ms) {
            hold::Action::None => {}
            hold::Action::Release { start, end } => self.end_turn(start, end, now_ms),
            hold::Action::EndNow => {
                if let Some(TurnEvent::Stopped { start, end }) = self.detector.finish() {
                    let start = self.hold.origin(start);
                    self.hold.finish_turn();
                    self.end_turn(start, end, now_ms);
                }
            }
        }
    }

    /// Cancels everything in flight (reason: shutdown) and commits what was heard.
    pub fn shutdown(&mut self) {
        self.cancel.cancel();
        let now = self.now_ms();
        self.coordinator.shutdown(now);
        self.collect_events();
    }

    /// Takes the events produced since the last call.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, TimedEvent> {
        self.events.drain(..)
    }

    /// Takes the rounds committed since the last call.
    pub fn drain_committed(&mut self) -> Vec<crate::turn::CommittedRound> {
        self.coordinator.drain_committed().collect()
    }

    /// Whether a task is running or reply audio is still to play.
    pub fn busy(&self) -> bool {
        self.coordinator.busy() || !self.waiting.is_empty()
    }

    /// Reports a problem outside the pipeline (journal, device) as an `error`
    /// event at the current time; the session goes on.
    pub fn report_error(&mut self, source: &str, message: String) {
        let now = self.now_ms();
        self.push_event(
            now,
            Event::Error {
                source: source.to_string(),
                message,
            },
        );
    }

    fn push_event(&mut self, t_ms: u64, event: Event) {
        self.events.push(TimedEvent { t_ms, event });
    }

    fn collect_spans(&mut self) {
        let Some(feed) = self.span_feed.as_mut() else {
            return;
        };
        let now_ms = samples_to_ms(self.now);
        loop {
            match feed.try_recv() {
                Ok(span) => self.events.push(TimedEvent {
                    t_ms: now_ms,
                    event: span.to_frame_event(),
                }),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "span events dropped from the session log")
                }
                Err(_) => break,
            }
        }
    }

    fn collect_events(&mut self) {
        let events = &mut self.events;
        events.extend(self.hold.drain_events());
        events.extend(self.coordinator.drain_events());
    }
}
