//! What a routed turn tells in its events (issue 13).
//!
//! Hedges show in `turn_latency`: which candidate won, which started as a
//! probe, a hedge or a fallback, and when.
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

use async_trait::async_trait;
use colloquy::agent::voice::{VoiceAgent, VoiceOptions};
use colloquy::agent::{Agent, CostMode};
use colloquy::audio::output_ring;
use colloquy::frame::{CancelReason, Event};
use colloquy::llm::leg::LegModel;
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::span::{SpanEvent, SpanKind};
use colloquy::llm::telemetry::StoreClock;
use colloquy::llm::testkit::{Script, ScriptedModel};
use colloquy::llm::{
    ChatModel, LegRunner, LegTimeouts, Router, RouterPolicy, SpanSink, Telemetry, TelemetryStore,
    WindowConfig,
};
use colloquy::route::note::{AttemptNote, End, Why};
use colloquy::route::RouteNote;
use colloquy::stt::{SpeechToText, SttError, Transcript};
use colloquy::tts::{Speech, TextToSpeech, TtsError};
use colloquy::turn::{Coordinator, CoordinatorConfig, Outcome, Playout};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

struct FixedStt;

#[async_trait]
impl SpeechToText for FixedStt {
    fn name(&self) -> &str {
        "fixed"
    }
    async fn transcribe(&self, _: &[i16], _: &CancellationToken) -> Result<Transcript, SttError> {
        Ok(Transcript {
            text: "Tell me a story.".into(),
        })
    }
}

/// 10 ms of a quiet tone per character.
struct ToneTts;

#[async_trait]
impl TextToSpeech for ToneTts {
    fn name(&self) -> &str {
        "tone"
    }
    async fn synthesize(&self, text: &str, _: &CancellationToken) -> Result<Speech, TtsError> {
        let n = text.chars().count() * 160;
        Ok(Speech {
            samples: (0..n).map(|i| ((i % 40) as i16 - 20) * 100).collect(),
            sample_rate: 16_000,
        })
    }
}

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
    let h = Arc::new(ScriptedModel::new("h", "fast", hosted));
    let local = Arc::new(ScriptedModel::new("embedded", "smol", local));
    let telemetry = Telemetry::new(
        TelemetryStore::new(WindowConfig::default()),
        StoreClock::at(1_000),
    );
    for &(key, first, total) in seeds {
        for _ in 0..3 {
            let ms = Duration::from_millis;
            telemetry.record_served(key, Some(ms(first)), Some(ms(total)), None);
        }
    }
    let runner = LegRunner::new(
        SpanSink::new(4096),
        telemetry,
        RetryPolicy::default(),
        LegTimeouts::default(),
    );
    let policy = RouterPolicy {
        exploration_rate: 0.0,
        seed: Some(3),
        ..RouterPolicy::default()
    };
    let mut candidates = vec![
        LegModel::new(h as Arc<dyn ChatModel>, None),
        LegModel::new(local as Arc<dyn ChatModel>, None),
    ];
    if local_first {
        candidates.reverse();
    }
    let router = Arc::new(Router::new(candidates, runner, policy));
    Arc::new(VoiceAgent::new(
        Arc::new(FixedStt),
        router,
        Arc::new(ToneTts),
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

/// Per leg (request id): its model and its span events' kinds, in order.
fn legs(rx: &mut broadcast::Receiver<SpanEvent>) -> Vec<(String, Vec<SpanKind>)> {
    let mut out: Vec<(u64, String, Vec<SpanKind>)> = Vec::new();
    while let Ok(e) = rx.try_recv() {
        match out.iter_mut().find(|(id, _, _)| *id == e.request_id) {
            Some((_, _, kinds)) => kinds.push(e.kind),
            None => out.push((e.request_id, e.model.clone(), vec![e.kind])),
        }
    }
    out.into_iter().map(|(_, m, k)| (m, k)).collect()
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
