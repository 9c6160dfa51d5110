//! What a routed turn tells in its events (issue 13).
//!
//! Hedges show in `turn_latency`: which candidate won, which started as a
//! probe, a hedge or a fallback, and when. A race decided after the first
//! audio (an LLM continuation after a stall, a later sentence's voice
//! falling back) is a `route` event of its own.
//!
//! Cancel reasons travel with the cancel: the coordinator's job
//! token carries why it was cancelled, and every LLM leg of the job ends
//! with exactly one terminal span event naming the same reason as the
//! coordinator's `task_cancelled` event — `shutdown` (the coordinator's
//! shutdown, and the session's order: its root token first, then the
//! coordinator), `barge_in` (the user goes on talking), `hedge_lost` (the
//! local model probed beside the hosted one lost), `reply_ended` (the agent
//! stopped reading a model's stream).
//!
//! Deterministic: the whole path (coordinator → voice agent → router →
//! legs) runs on a paused tokio clock with scripted models, a fixed
//! transcript and a tone voice.

mod common;

use async_trait::async_trait;
use colloquy::agent::voice::{VoiceAgent, VoiceOptions};
use colloquy::agent::{Agent, CostMode};
use colloquy::audio::output_ring;
use colloquy::frame::{CancelReason, Event};
use colloquy::llm::span::{SpanEvent, SpanKind};
use colloquy::llm::testkit::{Script, ScriptedModel};
use colloquy::llm::{ErrorClass, LegTimeouts, LlmError, RouterPolicy};
use colloquy::route::note::{AttemptNote, End, Why};
use colloquy::route::{RouteNote, RoutePolicy, StageCandidate};
use colloquy::tts::routed::RoutedTts;
use colloquy::tts::{Speech, TextToSpeech, TtsError};
use colloquy::turn::{Coordinator, CoordinatorConfig, Outcome, Playout};
use common::route::{self, legs, FixedStt, ToneTts};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

struct Rig {
    coord: Coordinator,
    session: CancellationToken,
    spans: broadcast::Receiver<SpanEvent>,
    _out: colloquy::audio::OutputConsumer,
    results: crossbeam_channel::Receiver<colloquy::agent::TaskMessage>,
}

/// A coordinator whose voice agent routes over a hosted model streaming
/// `hosted` and a local one (first token after 1 s): cold, so the local
/// one is probed beside the hosted one.
fn rig(hosted: Script) -> Rig {
    rig_with(hosted, Script::n_tokens(20, 1_000, 50), false)
}

/// [`rig`] with the local model's script; `warm`: both models have a
/// rolling first-token latency of 100 ms already (no probe; the hedge
/// deadline is the 300 ms floor).
fn rig_with(hosted: Script, local: Script, warm: bool) -> Rig {
    let seeds: &[(&str, u64, u64)] = if warm {
        &[("h/fast", 100, 500), ("embedded/smol", 100, 500)]
    } else {
        &[]
    };
    session(agent(hosted, local, seeds, false))
}

/// A voice agent routing over the hosted model `h/fast` and the local
/// `embedded/smol` (in that order, or local first), its store seeded with
/// three served requests per `(key, first result ms, whole request ms)`.
fn agent(
    hosted: Script,
    local: Script,
    seeds: &[(&str, u64, u64)],
    local_first: bool,
) -> Arc<dyn Agent> {
    agent_with_tts(hosted, local, seeds, local_first, Arc::new(ToneTts(160)))
}

/// [`agent`] speaking with `tts`.
fn agent_with_tts(
    hosted: Script,
    local: Script,
    seeds: &[(&str, u64, u64)],
    local_first: bool,
    tts: Arc<dyn TextToSpeech>,
) -> Arc<dyn Agent> {
    let h = Arc::new(ScriptedModel::new("h", "fast", hosted));
    let local = Arc::new(ScriptedModel::new("embedded", "smol", local));
    let policy = RouterPolicy {
        exploration_rate: 0.0,
        seed: Some(3),
        ..RouterPolicy::default()
    };
    let models = if local_first {
        [&local, &h]
    } else {
        [&h, &local]
    };
    let router = route::scripted_router(
        &models,
        route::seeded(seeds),
        policy,
        LegTimeouts::default(),
    );
    Arc::new(VoiceAgent::new(
        Arc::new(FixedStt("Tell me a story.")),
        router,
        tts,
        VoiceOptions::default(),
        tokio::runtime::Handle::current(),
    ))
}

/// One session's coordinator over `agent`.
fn session(agent: Arc<dyn Agent>) -> Rig {
    let spans = agent.span_feed().expect("the voice agent's span feed");
    // The job's reports are kept (read only where a test feeds them to the
    // coordinator), so a job never stops because its session went away.
    let (tx, results) = crossbeam_channel::unbounded();
    let (prod, out) = output_ring(16_000 * 4);
    let playout = Playout::new(prod, 16_000).expect("playout");
    let session = CancellationToken::new();
    let coord = Coordinator::new(
        CoordinatorConfig::default(),
        agent,
        tx,
        CostMode::Zero,
        playout,
        session.clone(),
    );
    Rig {
        coord,
        session,
        spans,
        _out: out,
        results,
    }
}

fn terminals(kinds: &[SpanKind]) -> Vec<&SpanKind> {
    kinds
        .iter()
        .filter(|k| {
            matches!(
                k,
                SpanKind::Completed { .. } | SpanKind::Failed { .. } | SpanKind::Cancelled { .. }
            )
        })
        .collect()
}

/// The one terminal event of `model`'s leg.
fn terminal_of(legs: &[(String, Vec<SpanKind>)], model: &str) -> SpanKind {
    let mine: Vec<_> = legs.iter().filter(|(m, _)| m == model).collect();
    assert_eq!(mine.len(), 1, "one leg of {model}: {legs:?}");
    let t = terminals(&mine[0].1);
    assert_eq!(t.len(), 1, "exactly one terminal for {model}: {legs:?}");
    t[0].clone()
}

fn cancelled(reason: CancelReason) -> SpanKind {
    SpanKind::Cancelled { reason }
}

/// How the running turn is stopped.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `Coordinator::shutdown`.
    Shutdown,
    /// The session's order: its root token, then the coordinator.
    SessionShutdown,
    /// The user goes on talking before any reply was heard.
    BargeIn,
}

async fn run(stop: Stop) -> (Vec<(String, Vec<SpanKind>)>, Vec<Event>, Vec<Outcome>) {
    // The hosted model streams slowly (no sentence end), so it is still
    // running when the turn is stopped at 400 ms.
    let mut r = rig(Script::n_tokens(40, 100, 100));
    let audio = [0i16; 16_000];
    r.coord.on_user_stopped(&audio, 1_000, 1_000, 1_000);
    tokio::time::sleep(Duration::from_millis(400)).await;
    match stop {
        Stop::Shutdown => r.coord.shutdown(1_400),
        Stop::SessionShutdown => {
            r.session.cancel();
            r.coord.shutdown(1_400);
        }
        Stop::BargeIn => r.coord.on_user_started(22_400, 1_400),
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events = r.coord.drain_events().map(|e| e.event).collect();
    let outcomes = r.coord.outcomes().values().cloned().collect();
    (legs(&mut r.spans), events, outcomes)
}

fn task_cancelled(events: &[Event]) -> Vec<CancelReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::TaskCancelled { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn shutdown_barge_in_and_a_lost_hedge_each_name_their_own_reason() {
    for (stop, expected) in [
        (Stop::Shutdown, CancelReason::Shutdown),
        (Stop::SessionShutdown, CancelReason::Shutdown),
        (Stop::BargeIn, CancelReason::BargeIn),
    ] {
        let (legs, events, outcomes) = run(stop).await;
        assert_eq!(legs.len(), 2, "{stop:?}: two legs: {legs:?}");
        // The local model, probed beside the hosted one, lost at 100 ms.
        assert_eq!(
            terminal_of(&legs, "smol"),
            cancelled(CancelReason::HedgeLost),
            "{stop:?}"
        );
        // The hosted winner was streaming: it ends with the job's reason.
        assert_eq!(
            terminal_of(&legs, "fast"),
            cancelled(expected),
            "{stop:?}: {legs:?}"
        );
        assert_eq!(task_cancelled(&events), [expected], "{stop:?}");
        assert_eq!(outcomes, [Outcome::Cancelled(expected)], "{stop:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_reply_the_agent_stops_reading_ends_its_leg_reply_ended() {
    // Sentence after sentence, past the reply guard's three-sentence cap:
    // the agent ends the reply and drops the model's stream.
    let tokens: Vec<String> = (0..30).map(|i| format!("Sentence {i}. ")).collect();
    let mut r = rig(Script::tokens(tokens, 100, 10));
    r.coord
        .on_user_stopped(&[0i16; 16_000], 1_000, 1_000, 1_000);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let legs = legs(&mut r.spans);
    assert_eq!(
        terminal_of(&legs, "smol"),
        cancelled(CancelReason::HedgeLost)
    );
    assert_eq!(
        terminal_of(&legs, "fast"),
        cancelled(CancelReason::ReplyEnded),
        "{legs:?}"
    );
    // Nothing was cancelled by the coordinator.
    let events: Vec<Event> = r.coord.drain_events().map(|e| e.event).collect();
    assert!(task_cancelled(&events).is_empty(), "{events:?}");
}

/// Runs one turn to its first audio, feeding the job's reports to the
/// coordinator; returns its `turn_latency` routes.
async fn first_audio_routes(mut r: Rig) -> Vec<RouteNote> {
    r.coord
        .on_user_stopped(&[0i16; 16_000], 1_000, 1_000, 1_000);
    let mut now = 1_000;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        now += 20;
        while let Ok(msg) = r.results.try_recv() {
            r.coord.on_message(msg, now);
        }
        for e in r.coord.drain_events() {
            if let Event::TurnLatency { routes, .. } = e.event {
                return routes;
            }
        }
    }
    panic!("no turn_latency within 2 s");
}

fn attempt(model: &str, why: Why, start_ms: u64, end: End, ms: u64) -> AttemptNote {
    AttemptNote {
        model: model.into(),
        why,
        start_ms,
        end,
        ms,
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_shows_in_turn_latency_with_its_winner_and_when_it_started() {
    // Warm: the hosted model leads; it sends no first token for 2 s, so the
    // local model starts at the 300 ms hedge deadline and wins 100 ms later.
    let r = rig_with(
        Script::n_tokens(5, 2_000, 50),
        Script::tokens(["Local answer."], 100, 10),
        true,
    );
    let routes = first_audio_routes(r).await;
    // Only the LLM stage is routed (one STT and one TTS candidate).
    assert_eq!(
        routes,
        [RouteNote {
            stage: "llm".into(),
            winner: Some("embedded/smol".into()),
            hedged: true,
            hedge_ms: Some(300),
            attempts: vec![
                attempt("h/fast", Why::First, 0, End::Lost, 400),
                attempt("embedded/smol", Why::Hedge, 300, End::Won, 100),
            ],
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_of_an_untried_model_shows_in_turn_latency() {
    // Cold: the local model is probed beside the hosted one and loses.
    let r = rig(Script::tokens(["Hosted answer."], 100, 10));
    let routes = first_audio_routes(r).await;
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].winner.as_deref(), Some("h/fast"));
    assert_eq!(routes[0].hedge_ms, None);
    assert_eq!(
        routes[0].attempts,
        [
            attempt("h/fast", Why::First, 0, End::Won, 100),
            attempt("embedded/smol", Why::Probe, 0, End::Lost, 100),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn three_sessions_at_once_overflow_from_the_busy_local_model_to_the_hosted_one() {
    // One instance, one router: the local model (preferred, first token
    // 300 ms, a reply occupies it 1.3 s) and a hosted one (500 ms).
    let local_reply: Vec<String> = std::iter::once("Local answer.".to_string())
        .chain((0..20).map(|i| format!(" t{i}")))
        .collect();
    let agent = agent(
        Script::tokens(["Hosted answer."], 500, 10),
        Script::tokens(local_reply, 300, 50),
        &[("embedded/smol", 300, 1_300), ("h/fast", 500, 700)],
        true,
    );
    let mut sessions: Vec<Rig> = (0..3).map(|_| session(agent.clone())).collect();
    // The three users stop speaking at the same moment.
    for s in &mut sessions {
        s.coord
            .on_user_stopped(&[0i16; 16_000], 1_000, 1_000, 1_000);
    }
    let mut latency: Vec<Option<(u64, Vec<RouteNote>)>> = vec![None, None, None];
    let mut now = 1_000;
    while latency.iter().any(Option::is_none) && now < 5_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        now += 10;
        for (i, s) in sessions.iter_mut().enumerate() {
            while let Ok(msg) = s.results.try_recv() {
                s.coord.on_message(msg, now);
            }
            for e in s.coord.drain_events() {
                if let Event::TurnLatency {
                    end_of_speech_ms,
                    first_audio_ms,
                    routes,
                    ..
                } = e.event
                {
                    latency[i].get_or_insert((first_audio_ms - end_of_speech_ms, routes));
                }
            }
        }
    }
    let latency: Vec<(u64, Vec<RouteNote>)> = latency
        .into_iter()
        .map(|l| l.expect("every session heard a first audio"))
        .collect();
    let winners: Vec<Option<String>> = latency
        .iter()
        .map(|(_, r)| r.first().and_then(|n| n.winner.clone()))
        .collect();
    println!(
        "three at once: {:?}",
        latency.iter().map(|l| l.0).collect::<Vec<_>>()
    );
    assert_eq!(
        winners,
        [
            Some("embedded/smol".into()),
            Some("h/fast".into()),
            Some("h/fast".into())
        ],
        "the first takes the idle local model, the others overflow"
    );
    // Hosted latency (500 ms) plus its hedge deadline (p90 500 ms + 20 %).
    let bound = 500 + 600;
    for (ms, routes) in &latency {
        assert!(*ms <= bound, "first audio after {ms} ms > {bound} ms");
        assert_eq!(routes[0].hedge_ms, None, "no hedge was needed: {routes:?}");
    }
    // Exactly: the local first sentence is confirmed by its next token
    // (300 + 50 ms), the hosted one by the reply's end (500 + 10 ms); this
    // loop's 10 ms step is the only slack.
    assert_eq!(latency[0].0, 360, "{latency:?}");
    assert_eq!((latency[1].0, latency[2].0), (520, 520), "{latency:?}");
}

/// Runs one turn for `virtual_ms`, feeding the job's reports to the
/// coordinator every 20 ms; returns its events.
async fn events_for(mut r: Rig, virtual_ms: u64) -> Vec<Event> {
    r.coord
        .on_user_stopped(&[0i16; 16_000], 1_000, 1_000, 1_000);
    let mut now = 1_000;
    let mut events = Vec::new();
    while now < 1_000 + virtual_ms {
        tokio::time::sleep(Duration::from_millis(20)).await;
        now += 20;
        while let Ok(msg) = r.results.try_recv() {
            r.coord.on_message(msg, now);
        }
        events.extend(r.coord.drain_events().map(|e| e.event));
    }
    events
}

/// The notes of `turn_latency` and of each later `route` event, in order.
fn notes(events: &[Event]) -> (Vec<RouteNote>, Vec<RouteNote>) {
    let latency = events
        .iter()
        .find_map(|e| match e {
            Event::TurnLatency { routes, .. } => Some(routes.clone()),
            _ => None,
        })
        .expect("turn_latency");
    let later = events
        .iter()
        .filter_map(|e| match e {
            Event::Route { route, .. } => Some(route.clone()),
            _ => None,
        })
        .collect();
    (latency, later)
}

fn bot_text(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::BotText { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_continuation_after_the_first_audio_is_a_route_event() {
    // Warm, hosted leads: its first sentence plays, then it stalls mid-way
    // through the second; after the 3 s stall limit the local model
    // continues the text.
    let r = rig_with(
        Script::tokens(["First sentence here. ", "And the sec", "ond"], 100, 50)
            .stall_after(2, Duration::from_secs(60)),
        Script::tokens(["ond one."], 100, 10),
        true,
    );
    let events = events_for(r, 6_000).await;
    let (latency, later) = notes(&events);
    assert_eq!(latency.len(), 1, "{latency:?}");
    assert_eq!(latency[0].winner.as_deref(), Some("h/fast"));
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].stage, "llm");
    assert_eq!(later[0].winner.as_deref(), Some("embedded/smol"));
    // The stalled leg is not tried again; the local one continues.
    assert_eq!(
        later[0].attempts,
        [attempt("embedded/smol", Why::Continue, 0, End::Won, 100)]
    );
    let said = bot_text(&events);
    assert_eq!(said.join(" "), "First sentence here. And the second one.");
}

/// A hosted voice whose first sentence works and every later one fails
/// (HTTP 500).
struct FlakyVoice(std::sync::atomic::AtomicUsize);

#[async_trait]
impl TextToSpeech for FlakyVoice {
    fn name(&self) -> &str {
        "flaky"
    }
    async fn synthesize(&self, text: &str, cancel: &CancellationToken) -> Result<Speech, TtsError> {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            return ToneTts(160).synthesize(text, cancel).await;
        }
        let mut error = LlmError::new(ErrorClass::Server, "hosted", "scripted 500");
        error.status = Some(500);
        Err(TtsError::Hosted {
            backend: "hosted".into(),
            error,
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_later_sentence_falling_back_to_the_local_voice_is_a_route_event() {
    let tts = RoutedTts::new(
        vec![
            StageCandidate {
                name: "hosted/flaky".into(),
                backend: Arc::new(FlakyVoice(Default::default())) as Arc<dyn TextToSpeech>,
                local: false,
            },
            StageCandidate {
                name: "embedded/tone".into(),
                backend: Arc::new(ToneTts(160)),
                local: true,
            },
        ],
        RoutePolicy {
            probe: false,
            exploration_rate: 0.0,
            ..RoutePolicy::default()
        },
        route::telemetry(),
    );
    let hosted = Script::tokens(
        ["First sentence here. ", "Second sentence here. ", "Third."],
        100,
        50,
    );
    let agent = agent_with_tts(
        hosted,
        Script::n_tokens(5, 1_000, 50),
        &[("h/fast", 100, 500), ("embedded/smol", 100, 500)],
        false,
        Arc::new(tts),
    );
    let events = events_for(session(agent), 3_000).await;
    let (latency, later) = notes(&events);
    // Before the first audio: the LLM race and the first chunk's voice.
    let tts_first: Vec<&RouteNote> = latency.iter().filter(|n| n.stage == "tts").collect();
    assert_eq!(tts_first.len(), 1, "{latency:?}");
    assert_eq!(tts_first[0].winner.as_deref(), Some("tts:hosted/flaky"));
    // The next chunk: the hosted voice failed, the local one answered. The
    // ones after go local at once (the hosted voice cools down): no event.
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].stage, "tts");
    assert_eq!(later[0].winner.as_deref(), Some("tts:embedded/tone"));
    let ends: Vec<(&str, Why, End)> = later[0]
        .attempts
        .iter()
        .map(|a| (a.model.as_str(), a.why, a.end))
        .collect();
    assert_eq!(
        ends,
        [
            ("tts:hosted/flaky", Why::First, End::Failed),
            ("tts:embedded/tone", Why::Fallback, End::Won),
        ]
    );
    assert!(
        bot_text(&events).join(" ").ends_with("Third."),
        "every sentence was spoken: {:?}",
        bot_text(&events)
    );
}
