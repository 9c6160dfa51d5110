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
//! - Heard: the client's `played` reports (its playout position) go to the
//!   session, so an interrupted reply is committed as far as the client
//!   played it, not as far as it was sent.
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
//!    time, and each frame is sent once its start is within `lead` of wall
//!    time: the loop wakes at that instant (`next_send`), not at the next
//!    20 ms tick, so the reply stays a full `lead` ahead of playout.
//! 3. A bad client message costs the client an error event and the message,
//!    never the session's state; a client that goes on misbehaving (flood of
//!    messages, pings or audio faster than real time; oversized frames
//!    beyond the hard cap; idle, where pings do not count as activity) is
//!    closed with a close frame after an error event.
//! 4. A committed round is queued for the journal writer when drained; its
//!    `committed` event is held by the [`CommitGate`] until the write is
//!    durable (journal invariant 2).
//! 5. When the agent hangs up (`call_ended`, a flow's `end_call`), the
//!    connection is closed normally ("call ended") once the audio already
//!    sent has had its wall time to play.
//! 6. A drain (server shutdown) sends `draining`, waits (bounded by
//!    [`LAST_WRITES`]) for the journal's reports of the turns already
//!    queued, then closes with 1012 (service restart): the client may
//!    reconnect and resume at once.

use super::gate::CommitGate;
use super::journal::{Claim, SessionLease};
use super::limits::{Limiter, Verdict};
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
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_INTERNAL: u16 = 1011;
const CLOSE_RESTART: u16 = 1012;
/// Longest wait at the end of a connection for the journal to report the
/// turns already queued (invariant 6).
const LAST_WRITES: Duration = Duration::from_secs(3);

/// No client audio for this long: the driver feeds silence itself.
const QUIET_AFTER: Duration = Duration::from_millis(300);
/// Longest wait for the client's close frame after ours.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
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
    limiter: Limiter,
    last_rate_error: Option<Instant>,
    /// Last data message (text or binary; pings do not count).
    last_message: Instant,
    last_audio: Instant,
    /// Wall time up to which bot audio has been sent (invariant 2).
    sent_until: Instant,
    /// When the next frame of the reply playing is due to be sent
    /// (`sent_until − lead`), while it has more to send: the loop wakes
    /// then rather than at the next 20 ms tick (invariant 2).
    next_send: Option<Instant>,
    /// While the client is quiet: silence fed up to this instant.
    silence_fed: Option<Instant>,
    state: &'static str,
    user_speaking: bool,
    /// The journal session this conversation is written to (none: not
    /// journaled).
    journal: Option<SessionLease>,
    /// The resumed conversation, the session's starting context (taken
    /// when the session is built).
    context: Vec<ChatMessage>,
    /// Holds `committed` events until their write is durable (invariant 4).
    gate: CommitGate,
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
            let _ = flush(&mut socket, &mut out, shared.config.send_timeout).await;
            return;
        }
    };
    let (context, history) = (claim.context(), claim.history());
    let now = Instant::now();
    let limits = shared.config.rate_limit.clone();
    let mut d = Driver {
        id: id.clone(),
        live: None,
        out: Vec::with_capacity(16),
        limiter: Limiter::new(limits, now),
        last_rate_error: None,
        last_message: now,
        last_audio: now,
        sent_until: now,
        next_send: None,
        silence_fed: None,
        state: "",
        user_speaking: false,
        shared,
        journal: claim.lease,
        context,
        gate: CommitGate::default(),
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
        if let Err(end) = flush(&mut socket, &mut d.out, d.shared.config.send_timeout).await {
            break end;
        }
        if let Some(at) = d.next_send.take() {
            // Each frame goes out at its own send time, not at the tick
            // after it (up to 20 ms late); the tick's period stays 20 ms.
            tick.reset_at(at);
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                d.push_json(&serde_json::json!({"type": "draining", "reconnect": true}));
                break End::Close(CLOSE_RESTART, "server restarting");
            }
            report = journal_report(&mut d.journal) => {
                if let Err(end) = d.on_report(report) {
                    break end;
                }
            }
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
    if matches!(end, End::Close(..)) {
        d.last_writes().await;
    }
    if let End::Close(code, reason) = end {
        d.out.push(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })));
        if flush(&mut socket, &mut d.out, d.shared.config.send_timeout)
            .await
            .is_ok()
        {
            linger(&mut socket).await;
        }
    }
    tracing::info!(session = %id, "session closed");
}

/// The closing handshake: reads (and drops) what the client still sends
/// until its close frame, for at most [`CLOSE_LINGER`]. Closing a socket
/// with unread input resets it, and the reset can overtake our close frame
/// (a flooding client would never see why it was closed).
async fn linger(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
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

/// The next journal report of this connection (pending without a journal).
async fn journal_report(journal: &mut Option<SessionLease>) -> crate::journal::writer::Report {
    match journal {
        Some(j) => j.next_report().await,
        None => std::future::pending().await,
    }
}

/// Sends everything queued (holds invariant 1: in order).
/// A client that does not take one batch within `timeout` counts as gone:
/// its own task waits, no other (invariant 3).
async fn flush(
    socket: &mut WebSocket,
    out: &mut Vec<Message>,
    timeout: Duration,
) -> Result<(), End> {
    if out.is_empty() {
        return Ok(());
    }
    let send = async {
        for m in out.drain(..) {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(timeout, send).await {
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

    /// Applies a journal report: releases held events, or ends the
    /// connection when the lease was lost (journal invariant 1).
    fn on_report(&mut self, report: crate::journal::writer::Report) -> Result<(), End> {
        if report == crate::journal::writer::Report::LeaseLost {
            self.fatal(
                ErrorCode::SessionInUse,
                "this session's lease was lost (it is open elsewhere now); closing. Reconnect to resume it",
            );
            return Err(End::Close(CLOSE_POLICY, "session lease lost"));
        }
        let t_ms = self.live.as_ref().map_or(0, |l| l.session.now_ms());
        let mut out = Vec::new();
        self.gate.report(&report, t_ms, &mut out);
        self.out
            .extend(out.into_iter().map(|t| Message::Text(t.into())));
        Ok(())
    }

    /// Waits (bounded, invariant 6) for the reports of the turns queued.
    async fn last_writes(&mut self) {
        let until = Instant::now() + LAST_WRITES;
        while self.journal.as_ref().is_some_and(|j| j.in_flight() > 0) {
            let Ok(report) =
                tokio::time::timeout_at(until, journal_report(&mut self.journal)).await
            else {
                break;
            };
            let _ = self.on_report(report);
        }
    }

    /// Queues a session event, through the commit gate (invariant 4).
    fn push_event(&mut self, event: &TimedEvent) {
        if let Ok(text) = serde_json::to_string(event) {
            let mut out = Vec::new();
            self.gate.event(event, text, &mut out);
            self.out
                .extend(out.into_iter().map(|t| Message::Text(t.into())));
        }
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

    /// Answers a rate-limit verdict: an error (throttled), or the close
    /// (invariant 3). `Ok(true)`: the message passes.
    fn rate_verdict(&mut self, verdict: Verdict) -> Result<bool, End> {
        match verdict {
            Verdict::Pass => Ok(true),
            Verdict::Drop(why) => {
                self.error(ErrorCode::RateLimited, why);
                Ok(false)
            }
            Verdict::Close => {
                self.fatal(
                    ErrorCode::RateLimited,
                    "too many messages dropped for rate; closing. Send one 20 ms audio frame per message in real time",
                );
                Err(End::Close(CLOSE_POLICY, "rate limit"))
            }
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<(), End> {
        let now = Instant::now();
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            // Control frames cost like any message (tungstenite answers
            // pings itself) and keep nothing alive (invariant 3).
            Message::Ping(p) | Message::Pong(p) => p.len(),
            Message::Close(_) => return Err(End::Gone),
        };
        // Rate limit first: a flood costs as little as possible (invariant 3).
        let verdict = self.limiter.admit(len, now);
        if !self.rate_verdict(verdict)? {
            return Ok(());
        }
        if matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return Ok(());
        }
        self.last_message = now;
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
            Ok(ClientMessage::Played { samples, clear }) => {
                // Before any session there is nothing to have heard.
                if let Some(live) = self.live.as_mut() {
                    live.session.report_played(samples, clear);
                }
                Ok(())
            }
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
        let rate = self.live.as_ref().map_or(SAMPLE_RATE, |l| l.input_rate);
        let verdict = self
            .limiter
            .admit_audio(bytes.len() / 2, rate, Instant::now());
        if !self.rate_verdict(verdict)? {
            return Ok(());
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
                // the session clock, playout and turn-taking go on. By wall
                // time, not per tick: the tick is moved to frames' send times
                // (invariant 2), which must not feed extra silence.
                let frame = Duration::from_millis(FRAME_MS);
                let fed = self.silence_fed.get_or_insert(now - frame);
                if now.saturating_duration_since(*fed) > frame * 5 {
                    // A stalled loop does not backfill more than a frame.
                    *fed = now - frame;
                }
                let n = (live.input_rate / 50) as usize;
                while *fed + frame <= now {
                    live.scratch[..n].fill(0.0);
                    live.input.push(&live.scratch[..n]);
                    *fed += frame;
                }
            } else {
                self.silence_fed = None;
            }
        }
        self.process();
        let ended = self
            .live
            .as_ref()
            .is_some_and(|l| l.session.coordinator().call_ended());
        if ended && self.sent_until <= Instant::now() && self.gate.is_clear() {
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
        // Holds invariant 4: queued before their events pass the gate.
        let rounds = live.session.drain_committed();
        if let Some(j) = self.journal.as_mut() {
            let queued = j.record(&mut live.session, &rounds);
            self.gate.queued(&queued);
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
            self.push_event(e);
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
        let lead = self.shared.config.lead;
        let horizon = now + lead;
        self.next_send = None;
        while self.sent_until < horizon {
            let n = live.output.read(&mut live.out_frame);
            if n == 0 {
                return;
            }
            let mut bytes = Vec::with_capacity(n * 2);
            for &s in &live.out_frame[..n] {
                bytes.extend_from_slice(&f32_to_i16(s).to_le_bytes());
            }
            self.out.push(Message::Binary(bytes.into()));
            self.shared.stats.frames_out.fetch_add(1, Ordering::Relaxed);
            self.sent_until += Duration::from_micros(n as u64 * 1_000_000 / SAMPLE_RATE as u64);
        }
        // Stopped by the lead, not by an empty ring: the next frame is due
        // once its start is within the lead.
        self.next_send = Some(self.sent_until - lead);
    }

    /// Ends the session: cancels tasks, commits what was heard (to the
    /// journal too), forwards the last events, closes the dump. The journal
    /// lease is released when the driver drops.
    fn finish(&mut self) {
        if let Some(mut live) = self.live.take() {
            live.session.shutdown();
            let rounds = live.session.drain_committed();
            if let Some(j) = self.journal.as_mut() {
                let queued = j.record(&mut live.session, &rounds);
                self.gate.queued(&queued);
                j.finish(live.session.coordinator().quarantined());
            }
            let events: Vec<TimedEvent> = live.session.drain_events().collect();
            for e in &events {
                self.push_event(e);
            }
            if let Some(w) = live.dump.take() {
                if let Err(e) = w.finalize() {
                    tracing::warn!(session = %self.id, error = %e, "cannot finish the session dump");
                }
            }
        }
    }
}
