//! One WebSocket connection: owns its [`Session`] (which is `Send` but not
//! `Sync`, so it lives inside this one task) and drives it from two sources,
//! the client's messages and a 20 ms tick.
//!
//! - Binary message: PCM16 LE mono samples → `f32` → input ring →
//!   `session.process`. The session is built at the client's `hello` (its
//!   rate) or at the first audio (16 kHz).
//! - Tick: `session.process` (task results arrive), silence is fed while the
//!   client sends no audio (so the session clock and the bot go on), idle
//!   timeout, and bot audio is sent.
//! - Bot audio: read from the output ring in 20 ms frames and sent paced in
//!   real time, at most `lead` ahead, so a `clear_playback` stops what the
//!   person hears within `lead` plus the page's buffer.
//! - Events: every session event is forwarded as JSON text, plus `state`
//!   changes (listening, user_speaking, thinking, speaking).
//! - Journal: before its `hello` the connection claims a journal session
//!   (new, or resumed from `?session=`; [`super::journal`]); the resumed
//!   turns are the session's starting context and are sent as `history`
//!   right after the `hello`; each committed round is written when drained.
//!
//! # Invariants
//! 1. Within one step, events are sent before audio read after them, so a
//!    `clear_playback` reaches the client before any audio of the next reply
//!    (the ring flush is applied at the read, ring invariant 1).
//! 2. Bot audio sent never runs more than `lead` (+ one frame) ahead of wall
//!    time.
//! 3. A bad client message costs the client an error event and the message,
//!    never the session's state; a client that goes on misbehaving (flood,
//!    oversized frames beyond the hard cap, idle) is closed with a close
//!    frame after an error event.
//! 4. A committed round is written to the journal before the events drained
//!    with it are queued, so its `committed` event follows the write
//!    (journal invariant 2).
//! 5. When the agent hangs up (`call_ended`, a flow's `end_call`), the
//!    connection is closed normally ("call ended") once the audio already
//!    sent has had its wall time to play.

use super::journal::{Claim, SessionLease};
use super::protocol::{
    check_hello, parse_client_text, ClientMessage, EchoAnswer, ErrorCode, History, Pong,
    ProtocolError, ServerHello, PROTOCOL_VERSION,
};
use super::{ServerShared, ServerStats};
use crate::agent::CostMode;
use crate::audio::resample::f32_to_i16;
use crate::audio::{input_ring, output_ring, InputProducer, OutputConsumer};
use crate::frame::{AudioFrame, Event, TimedEvent, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
use crate::llm::ChatMessage;
use crate::session::{Pacing, Session};
use crate::turn::TurnState;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::SinkExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// Close codes (RFC 6455).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_INTERNAL: u16 = 1011;

/// No client audio for this long: the driver feeds silence itself.
const QUIET_AFTER: Duration = Duration::from_millis(300);
/// Longest wait for one batch of sends before the client counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Protocol errors of one kind are sent at most this often.
const ERROR_EVERY: Duration = Duration::from_secs(1);

/// A taken session slot; released on drop (holds invariant 3 of the server).
pub struct SessionSlot {
    stats: Arc<ServerStats>,
}

impl SessionSlot {
    /// Takes a slot if fewer than `max` sessions are active.
    pub fn take(stats: Arc<ServerStats>, max: usize) -> Option<Self> {
        let active: &AtomicUsize = &stats.active_sessions;
        let mut cur = active.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match active.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        stats.sessions_total.fetch_add(1, Ordering::Relaxed);
        Some(Self { stats })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.stats.active_sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket.
struct Bucket {
    level: f64,
    cap: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        let cap = burst.max(1.0);
        Self {
            level: cap,
            cap,
            rate,
            at: Instant::now(),
        }
    }

    fn allow(&mut self, cost: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.level = (self.level + dt * self.rate).min(self.cap);
        if self.level >= cost {
            self.level -= cost;
            true
        } else {
            false
        }
    }
}

/// The live session and its rings.
struct Live {
    session: Session,
    input: InputProducer,
    output: OutputConsumer,
    input_rate: u32,
    /// Conversion scratch (sized to the input ring).
    scratch: Vec<f32>,
    out_frame: [f32; FRAME_SAMPLES],
    dump: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
}

/// Why the connection loop stopped.
enum End {
    /// Close with this code and reason (after the queued messages).
    Close(u16, &'static str),
    /// The client went away or the socket failed: nothing more to send.
    Gone,
}

/// Per-connection state outside the session.
struct Driver {
    shared: Arc<ServerShared>,
    id: String,
    live: Option<Live>,
    out: Vec<Message>,
    messages: Bucket,
    bytes: Bucket,
    dropped_for_rate: u64,
    last_rate_error: Option<Instant>,
    last_message: Instant,
    last_audio: Instant,
    /// Wall time up to which bot audio has been sent (invariant 2).
    sent_until: Instant,
    state: &'static str,
    user_speaking: bool,
    /// The journal session this conversation is written to (none: not
    /// journaled).
    journal: Option<SessionLease>,
    /// The resumed conversation, the session's starting context (taken
    /// when the session is built).
    context: Vec<ChatMessage>,
}

/// Runs one connection to its end.
pub(crate) async fn run_connection(
    mut socket: WebSocket,
    shared: Arc<ServerShared>,
    slot: SessionSlot,
    resume: Option<String>,
) {
    let _slot = slot;
    let id = format!("s{:08x}", rand::random::<u32>());
    let cancel = shared.cancel.child_token();
    let agent_name = (shared.agents)().name().to_string();
    let claim = tokio::select! {
        _ = cancel.cancelled() => return,
        claim = claim_journal(&shared, resume.as_deref(), &agent_name, &id) => claim,
    };
    let claim = match claim {
        Ok(c) => c,
        Err(refused) => {
            // Holds journal invariant 1: the id stays with its connection.
            let mut out = vec![
                Message::Text(refused.to_json().into()),
                Message::Close(Some(CloseFrame {
                    code: CLOSE_POLICY,
                    reason: "session in use".into(),
                })),
            ];
            shared
                .stats
                .messages_rejected
                .fetch_add(1, Ordering::Relaxed);
            let _ = flush(&mut socket, &mut out).await;
            return;
        }
    };
    let (context, history) = (claim.context(), claim.history());
    let limits = shared.config.rate_limit.clone();
    let now = Instant::now();
    let mut d = Driver {
        id: id.clone(),
        live: None,
        out: Vec::with_capacity(16),
        messages: Bucket::new(limits.messages_per_sec, limits.message_burst),
        bytes: Bucket::new(limits.bytes_per_sec, limits.byte_burst),
        dropped_for_rate: 0,
        last_rate_error: None,
        last_message: now,
        last_audio: now,
        sent_until: now,
        state: "",
        user_speaking: false,
        shared,
        journal: claim.lease,
        context,
    };
    tracing::info!(session = %id, journal = d.journal.as_ref().map(|j| j.id()), "session opened");
    if let Some(e) = claim.error {
        d.error(e.code, e.message);
    }
    let conversation = d.journal.as_ref().map(|j| j.id().to_string());
    let hello = ServerHello {
        kind: "hello".into(),
        version: PROTOCOL_VERSION,
        session: conversation.clone().unwrap_or_else(|| id.clone()),
        resumable: conversation.is_some(),
        connection: id.clone(),
        output_rate: SAMPLE_RATE,
        input_rate: SAMPLE_RATE,
        frame_ms: FRAME_MS,
        max_message_bytes: d.shared.config.max_message_bytes,
        agent: agent_name,
    };
    d.push_json(&hello);
    if let Some(session) = conversation {
        d.push_json(&History {
            kind: "history".into(),
            session,
            turns: history,
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(FRAME_MS));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = loop {
        if let Err(end) = flush(&mut socket, &mut d.out).await {
            break end;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break End::Close(CLOSE_GOING_AWAY, "server shutting down"),
            msg = socket.recv() => {
                match msg {
                    None => break End::Gone,
                    Some(Err(e)) => {
                        break d.on_socket_error(&e);
                    }
                    Some(Ok(msg)) => {
                        if let Err(end) = d.on_message(msg) {
                            break end;
                        }
                    }
                }
            }
            deadline = tick.tick() => {
                if let Err(end) = d.on_tick(deadline) {
                    break end;
                }
            }
        }
    };
    d.finish();
    if let End::Close(code, reason) = end {
        d.out.push(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })));
        let _ = flush(&mut socket, &mut d.out).await;
    }
    tracing::info!(session = %id, "session closed");
}

/// Claims this connection's journal session (journal invariants 1 and 3);
/// `Err` refuses the connection (the session is live elsewhere).
async fn claim_journal(
    shared: &ServerShared,
    resume: Option<&str>,
    agent: &str,
    connection: &str,
) -> Result<Claim, ProtocolError> {
    let Some(journal) = &shared.journal else {
        return Ok(Claim {
            lease: None,
            turns: Vec::new(),
            error: resume.map(|_| {
                ProtocolError::new(
                    ErrorCode::UnknownSession,
                    "this server keeps no journal (started with --no-journal), so no session can be resumed; a new conversation was started",
                )
            }),
        });
    };
    let source = format!("serve {connection}");
    journal
        .claim(resume, agent, &source, shared.config.resume_wait)
        .await
}

/// Sends everything queued (holds invariant 1: in order).
async fn flush(socket: &mut WebSocket, out: &mut Vec<Message>) -> Result<(), End> {
    if out.is_empty() {
        return Ok(());
    }
    let send = async {
        for m in out.drain(..) {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => {
            out.clear();
            Err(End::Gone)
        }
    }
}

impl Driver {
    fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    fn push_json<T: serde::Serialize>(&mut self, value: &T) {
        if let Ok(text) = serde_json::to_string(value) {
            self.out.push(Message::Text(text.into()));
        }
    }

    /// Queues a protocol error; `rate_limited` at most once per
    /// `ERROR_EVERY` (a flood must not be answered by a flood).
    fn error(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.stats()
            .messages_rejected
            .fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if code == ErrorCode::RateLimited {
            if let Some(at) = self.last_rate_error {
                if now.saturating_duration_since(at) < ERROR_EVERY {
                    return;
                }
            }
            self.last_rate_error = Some(now);
        }
        let text = ProtocolError::new(code, message).to_json();
        self.out.push(Message::Text(text.into()));
    }

    /// Queues an error that ends the connection (never throttled).
    fn fatal(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.last_rate_error = None;
        self.error(code, message);
    }

    fn on_socket_error(&mut self, e: &axum::Error) -> End {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        // tungstenite's capacity errors ("Message too long: …", "Space limit
        // exceeded: …"); axum does not expose the error type itself.
        if lower.contains("too long") || lower.contains("space limit") || lower.contains("too big")
        {
            self.fatal(
                ErrorCode::MessageTooLarge,
                format!(
                    "message over the hard limit ({text}); send audio in 20 ms frames of at most {} bytes",
                    self.shared.config.max_message_bytes
                ),
            );
            End::Close(CLOSE_TOO_BIG, "message too big")
        } else {
            tracing::debug!(session = %self.id, error = %text, "socket error");
            End::Gone
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<(), End> {
        let now = Instant::now();
        self.last_message = now;
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
            Message::Close(_) => return Err(End::Gone),
        };
        // Rate limit first: a flood costs as little as possible (invariant 3).
        let ok_msgs = self.messages.allow(1.0, now);
        let ok_bytes = self.bytes.allow(len as f64, now);
        if !(ok_msgs && ok_bytes) {
            self.dropped_for_rate += 1;
            let limit = self.shared.config.rate_limit.clone();
            if self.dropped_for_rate > limit.close_after_dropped {
                self.fatal(
                    ErrorCode::RateLimited,
                    "too many messages dropped for rate; closing. Send one 20 ms audio frame per message in real time",
                );
                return Err(End::Close(CLOSE_POLICY, "rate limit"));
            }
            self.error(
                ErrorCode::RateLimited,
                format!(
                    "message rate over the limit ({} messages/s, {} bytes/s); excess dropped",
                    limit.messages_per_sec, limit.bytes_per_sec
                ),
            );
            return Ok(());
        }
        let max = self.shared.config.max_message_bytes;
        if len > max {
            self.error(
                ErrorCode::MessageTooLarge,
                format!("message of {len} bytes over the limit of {max}; dropped. Send audio in 20 ms frames"),
            );
            return Ok(());
        }
        match msg {
            Message::Text(text) => self.on_text(text.as_str()),
            Message::Binary(bytes) => self.on_audio(&bytes),
            _ => Ok(()),
        }
    }

    fn on_text(&mut self, text: &str) -> Result<(), End> {
        match parse_client_text(text) {
            Err(e) => {
                self.error(e.code, e.message);
                Ok(())
            }
            Ok(ClientMessage::Ping { id }) => {
                self.push_json(&Pong {
                    kind: "pong".into(),
                    id,
                });
                Ok(())
            }
            Ok(ClientMessage::Bye) => Err(End::Close(CLOSE_NORMAL, "bye")),
            Ok(ClientMessage::Hello {
                version,
                sample_rate,
                echo_cancellation,
            }) => {
                // Who cancels the echo (the browser's canceller, never a
                // second one here): docs/protocol.md.
                self.push_json(&EchoAnswer::for_client(echo_cancellation));
                let rate = match check_hello(version, sample_rate) {
                    Ok(rate) => rate,
                    Err(e) => {
                        self.error(e.code, e.message);
                        return Ok(());
                    }
                };
                if let Some(live) = &self.live {
                    if live.input_rate != rate {
                        self.error(
                            ErrorCode::BadHello,
                            format!(
                                "hello after audio started; the session stays at {} Hz. Send hello before the first audio",
                                live.input_rate
                            ),
                        );
                    }
                    return Ok(());
                }
                self.start_session(rate)
            }
        }
    }

    fn start_session(&mut self, input_rate: u32) -> Result<(), End> {
        let mut config = self.shared.config.session.clone();
        config.input_rate = input_rate;
        config.input_channels = 1;
        config.output_rate = SAMPLE_RATE;
        config.pacing = Pacing::Arrival;
        config.cost_mode = CostMode::Wall;
        let ring = (input_rate as usize / 5).max(FRAME_SAMPLES * 4);
        let (input, in_cons) = input_ring(ring);
        let (out_prod, output) = output_ring(SAMPLE_RATE as usize / 2);
        let agent = (self.shared.agents)();
        let session = match Session::new(config, agent, in_cons, out_prod) {
            Ok(s) => s.with_history(std::mem::take(&mut self.context)),
            Err(e) => {
                self.fatal(
                    ErrorCode::Internal,
                    format!("cannot start the session: {e}"),
                );
                return Err(End::Close(CLOSE_INTERNAL, "session failed"));
            }
        };
        let dump = self.shared.config.dump_dir.as_ref().and_then(|dir| {
            let path = dir.join(format!("{}-in.wav", self.id));
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: SAMPLE_RATE,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            match hound::WavWriter::create(&path, spec) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the session dump");
                    None
                }
            }
        });
        self.live = Some(Live {
            session,
            input,
            output,
            input_rate,
            scratch: vec![0.0; ring],
            out_frame: [0.0; FRAME_SAMPLES],
            dump,
        });
        self.set_state("listening");
        Ok(())
    }

    fn on_audio(&mut self, bytes: &[u8]) -> Result<(), End> {
        if bytes.len() % 2 != 0 {
            self.error(
                ErrorCode::BadAudio,
                format!(
                    "binary message of {} bytes is not whole PCM16 samples; dropped. Send 16-bit little-endian mono",
                    bytes.len()
                ),
            );
            return Ok(());
        }
        if self.live.is_none() {
            self.start_session(SAMPLE_RATE)?;
        }
        self.last_audio = Instant::now();
        let mut pos = 0;
        while pos < bytes.len() {
            let Some(live) = self.live.as_mut() else {
                break;
            };
            let room = live.input.vacant().min(live.scratch.len());
            if room == 0 {
                // process() empties the ring; if it is still full, stop.
                break;
            }
            let take = room.min((bytes.len() - pos) / 2);
            for (dst, pair) in live.scratch[..take]
                .iter_mut()
                .zip(bytes[pos..pos + take * 2].chunks_exact(2))
            {
                *dst = crate::audio::resample::i16_to_f32(i16::from_le_bytes([pair[0], pair[1]]));
            }
            live.input.push(&live.scratch[..take]);
            pos += take * 2;
            self.process();
        }
        Ok(())
    }

    fn on_tick(&mut self, deadline: Instant) -> Result<(), End> {
        let now = Instant::now();
        let late = now.saturating_duration_since(deadline);
        if late > Duration::from_millis(FRAME_MS) {
            self.stats().ticks_late.fetch_add(1, Ordering::Relaxed);
        }
        self.stats()
            .max_tick_late_us
            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
        if now.saturating_duration_since(self.last_message) > self.shared.config.idle_timeout {
            self.fatal(
                ErrorCode::IdleTimeout,
                format!(
                    "nothing received for {} s; closing. Reconnect to talk again",
                    self.shared.config.idle_timeout.as_secs()
                ),
            );
            return Err(End::Close(CLOSE_NORMAL, "idle timeout"));
        }
        if let Some(live) = self.live.as_mut() {
            if now.saturating_duration_since(self.last_audio) > QUIET_AFTER {
                // The client is quiet (mic off): feed silence in real time so
                // the session clock, playout and turn-taking go on.
                let n = (live.input_rate / 50) as usize;
                live.scratch[..n].fill(0.0);
                live.input.push(&live.scratch[..n]);
            }
        }
        self.process();
        let ended = self
            .live
            .as_ref()
            .is_some_and(|l| l.session.coordinator().call_ended());
        if ended && self.sent_until <= Instant::now() {
            // The flow hung up and the goodbye has played (invariant 5).
            return Err(End::Close(CLOSE_NORMAL, "call ended"));
        }
        Ok(())
    }

    /// Runs the session over what arrived, forwards its events, sends due
    /// audio (invariants 1 and 2).
    fn process(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let stats = &self.shared.stats;
        let dump = &mut live.dump;
        live.session.process(|frame: &AudioFrame| {
            stats.frames_in.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = dump.as_mut() {
                for &s in frame.samples.iter() {
                    let _ = w.write_sample(s);
                }
            }
        });
        // Holds invariant 4: the journal before the events.
        let rounds = live.session.drain_committed();
        if let Some(j) = &self.journal {
            j.record(&mut live.session, &rounds);
        }
        let events: Vec<TimedEvent> = live.session.drain_events().collect();
        let coord_state = live.session.coordinator().state();
        let now_ms = live.session.now_ms();
        for e in &events {
            match e.event {
                Event::SpeechStarted { .. } => self.user_speaking = true,
                Event::SpeechStopped { .. } => self.user_speaking = false,
                _ => {}
            }
            self.push_json(e);
        }
        let state = match coord_state {
            TurnState::Speaking => "speaking",
            TurnState::Thinking => "thinking",
            TurnState::Idle if self.user_speaking => "user_speaking",
            TurnState::Idle => "listening",
        };
        if state != self.state {
            self.state = state;
            self.push_json(&TimedEvent {
                t_ms: now_ms,
                event: Event::State {
                    state: state.to_string(),
                },
            });
        }
        self.send_audio();
    }

    fn set_state(&mut self, state: &'static str) {
        self.state = state;
        let t_ms = self.live.as_ref().map_or(0, |l| l.session.now_ms());
        self.push_json(&TimedEvent {
            t_ms,
            event: Event::State {
                state: state.to_string(),
            },
        });
    }

    /// Sends bot audio up to `lead` ahead of wall time (invariant 2).
    fn send_audio(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let now = Instant::now();
        if self.sent_until < now {
            self.sent_until = now;
        }
        let horizon = now + self.shared.config.lead;
        while self.sent_until < horizon {
            let n = live.output.read(&mut live.out_frame);
            if n == 0 {
                break;
            }
            let mut bytes = Vec::with_capacity(n * 2);
            for &s in &live.out_frame[..n] {
                bytes.extend_from_slice(&f32_to_i16(s).to_le_bytes());
            }
            self.out.push(Message::Binary(bytes.into()));
            self.shared.stats.frames_out.fetch_add(1, Ordering::Relaxed);
            self.sent_until += Duration::from_micros(n as u64 * 1_000_000 / SAMPLE_RATE as u64);
        }
    }

    /// Ends the session: cancels tasks, commits what was heard (to the
    /// journal too), forwards the last events, closes the dump. The journal
    /// lease is released when the driver drops.
    fn finish(&mut self) {
        if let Some(mut live) = self.live.take() {
            live.session.shutdown();
            let rounds = live.session.drain_committed();
            if let Some(j) = &self.journal {
                j.record(&mut live.session, &rounds);
                j.finish(live.session.coordinator().quarantined());
            }
            let events: Vec<TimedEvent> = live.session.drain_events().collect();
            for e in &events {
                self.push_json(e);
            }
            if let Some(w) = live.dump.take() {
                if let Err(e) = w.finalize() {
                    tracing::warn!(session = %self.id, error = %e, "cannot finish the session dump");
                }
            }
        }
    }
}
