//! The LLM stage's router with a local candidate and hosted ones, on a
//! paused clock (every timing exact): it leaves a slow hosted model for the
//! local one within the first turns and keeps a fast one; a cold router
//! measures both hosted models on turn 1 and picks the fast one; a hosted
//! model that sends no first token, stalls, rate-limits, fails, refuses the
//! connection or sends a malformed stream costs at most one hedge deadline
//! and the local model answers; each leg ends with exactly one terminal
//! span event and the loser says why (`hedge_lost`); traffic returns to the
//! hosted model once its cooldown passed and a probe succeeded.
//!
//! The "local" candidate here is a scripted model with the embedded
//! provider name (the router treats it as local: never shadowed, load-aware);
//! `tests/route_stages.rs` runs the real embedded models as the fallback.

mod common;

use colloquy::frame::CancelReason;
use colloquy::llm::leg::LegModel;
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::span::{SpanEvent, SpanKind};
use colloquy::llm::telemetry::{StoreClock, TelemetryStore};
use colloquy::llm::testkit::{FakeOpenAi, Reply, Script, ScriptedModel};
use colloquy::llm::{
    CancelSignal, ChatDelta, ChatMessage, ChatModel, ChatRequest, LegRunner, LegTimeouts,
    LlmConfig, Router, RouterPolicy, SpanSink, Telemetry, TurnItem, WindowConfig,
};
use common::route::legs;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy() -> RouterPolicy {
    RouterPolicy {
        exploration_rate: 0.0,
        seed: Some(7),
        ..RouterPolicy::default()
    }
}

fn telemetry() -> Telemetry {
    Telemetry::new(
        TelemetryStore::new(WindowConfig::default()),
        StoreClock::at(9_000_000),
    )
}

/// A router over these models (in order), and its span feed.
fn router(models: &[&Arc<ScriptedModel>]) -> (Arc<Router>, broadcast::Receiver<SpanEvent>) {
    let sink = SpanSink::new(4096);
    let rx = sink.subscribe();
    let runner = LegRunner::new(
        sink,
        telemetry(),
        RetryPolicy::default(),
        LegTimeouts::default(),
    );
    let candidates = models
        .iter()
        .map(|&m| LegModel::new(m.clone() as Arc<dyn ChatModel>, None))
        .collect();
    (Arc::new(Router::new(candidates, runner, policy())), rx)
}

fn local(first_ms: u64) -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::new(
        "embedded",
        "smol",
        Script::tokens(["Local", " answer."], first_ms, 20),
    ))
}

fn hosted(name: &str, first_ms: u64) -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::new(
        "h",
        name,
        Script::tokens(["Hosted", " answer."], first_ms, 20),
    ))
}

struct Turn {
    model: Option<String>,
    text: String,
    items: Vec<TurnItem>,
    /// From the start of the turn to its first text.
    first_text: Option<Duration>,
}

async fn turn(router: &Arc<Router>) -> Turn {
    turn_with(router, false).await
}

/// A turn; `as_the_agent`: the reply is then cancelled `reply_ended`, as the
/// voice agent does when it stops reading (which also ends shadowed legs).
async fn turn_with(router: &Arc<Router>, as_the_agent: bool) -> Turn {
    let cancel = CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown);
    let request = ChatRequest::new(vec![ChatMessage::user("hi")]);
    let start = Instant::now();
    let mut reply = router.start_turn(request, 1, start + Duration::from_secs(20), cancel);
    let mut items = Vec::new();
    let mut first_text = None;
    while let Some(i) = reply.next().await {
        if matches!(i, TurnItem::Delta(ChatDelta::Text(_))) {
            first_text.get_or_insert(start.elapsed());
        }
        items.push(i);
    }
    if as_the_agent {
        reply.cancel(CancelReason::ReplyEnded);
    }
    let model = items.iter().find_map(|i| match i {
        TurnItem::Done { model } => Some(model.clone()),
        _ => None,
    });
    // The text after the last restart is what was said.
    let last_restart = items
        .iter()
        .rposition(|i| matches!(i, TurnItem::Restart { .. }))
        .map_or(0, |p| p + 1);
    let text = items[last_restart..]
        .iter()
        .filter_map(|i| match i {
            TurnItem::Delta(ChatDelta::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    Turn {
        model,
        text,
        items,
        first_text,
    }
}

/// Lets shadowed losers run out (their cap is 3 s) so every leg has ended.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

fn assert_one_terminal_each(legs: &[(String, Vec<SpanKind>)]) {
    for (model, kinds) in legs {
        let terminals = kinds.iter().filter(|k| k.is_terminal()).count();
        assert_eq!(terminals, 1, "{model}: {kinds:?}");
        assert!(
            kinds.last().is_some_and(SpanKind::is_terminal),
            "{model}: {kinds:?}"
        );
    }
}

fn cancel_reason(kinds: &[SpanKind]) -> Option<CancelReason> {
    kinds.iter().find_map(|k| match k {
        SpanKind::Cancelled { reason } => Some(*reason),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_slow_hosted_model_loses_to_the_local_one_within_the_first_turns() {
    let slow = hosted("slow", 1_200);
    let local = local(300);
    let (r, mut spans) = router(&[&slow, &local]);
    let mut picks = Vec::new();
    for _ in 0..5 {
        let t = turn(&r).await;
        assert_eq!(t.text, "Local answer.", "every turn is answered");
        picks.push(t.model.expect("answered"));
        settle().await;
    }
    println!("turn by turn: {picks:?}");
    assert!(picks.iter().all(|m| m == "embedded/smol"), "{picks:?}");
    assert_eq!(r.switches(), 1, "one move, from the slow preferred model");
    assert_eq!(r.plan().order[0], 1, "the local model leads now");
    // Turn 1 measured the slow one as a shadow; afterwards it is not asked.
    assert_eq!(slow.calls(), 1, "only the cold-start measurement");
    let legs = legs(&mut spans);
    assert_one_terminal_each(&legs);
    let slow_leg = &legs.iter().find(|(m, _)| m == "slow").expect("slow leg").1;
    assert_eq!(cancel_reason(slow_leg), Some(CancelReason::HedgeLost));
    let summary = r.runner().telemetry.summary("h/slow");
    assert_eq!(
        summary.expected_ttft_ms,
        Some(1_200),
        "measured, not censored"
    );
    assert_eq!(summary.served, 0);
}

/// Replies end before a shadow's cap in a real call (a short answer, then
/// the next question): a hosted model that never answers must still lose
/// its place. Each wait it lost is recorded as a lower bound (censored), and
/// a lower bound never makes it look fast: by the third turn the local model
/// leads and answers without waiting for a hedge deadline. (Before the fix,
/// a shadow ended by the reply recorded nothing, the hosted model stayed
/// "untried" and first, and every turn waited 1.5 s for the hedge.)
#[tokio::test(start_paused = true)]
async fn a_mute_hosted_model_loses_its_place_though_each_reply_ends_first() {
    let mute = Arc::new(ScriptedModel::new(
        "h",
        "mute",
        Script::tokens(["never"], 60_000, 10),
    ));
    let local = local(300);
    let (r, _spans) = router(&[&mute, &local]);
    let mut firsts = Vec::new();
    for _ in 0..6 {
        // No settle: the next turn starts as soon as the reply ended.
        let t = turn_with(&r, true).await;
        assert_eq!(t.text, "Local answer.", "every turn is answered");
        firsts.push(t.first_text.expect("text"));
    }
    println!("first text by turn: {firsts:?}");
    assert!(
        firsts[2..].iter().all(|&f| f == ms(300)),
        "from turn 3 the local model answers first, no hedge wait: {firsts:?}"
    );
    assert!(
        firsts[1] < ms(1_500),
        "turn 2 hedged at the measured wait (x1.2), not the 1.5 s cap: {firsts:?}"
    );
    assert_eq!(mute.calls(), 2, "asked in turns 1 and 2 only");
    let summary = r.runner().telemetry.summary("h/mute");
    assert!(
        summary.expected_ttft_ms >= Some(300),
        "its latency is at least its longest wait: {summary:?}"
    );
    assert_eq!(r.plan().order[0], 1, "the local model leads");
}

#[tokio::test(start_paused = true)]
async fn a_fast_hosted_model_keeps_every_turn() {
    let fast = hosted("fast", 100);
    let local = local(300);
    let (r, mut spans) = router(&[&fast, &local]);
    for _ in 0..5 {
        let t = turn(&r).await;
        assert_eq!(t.model.as_deref(), Some("h/fast"));
        assert_eq!(t.first_text, Some(ms(100)));
    }
    assert_eq!(r.switches(), 0);
    assert_eq!(local.calls(), 1, "the local model was probed once, cold");
    assert_eq!(
        local.dropped_early(),
        1,
        "and cancelled at once when it lost"
    );
    let legs = legs(&mut spans);
    assert_one_terminal_each(&legs);
    let probe = &legs.iter().find(|(m, _)| m == "smol").expect("probe").1;
    assert_eq!(cancel_reason(probe), Some(CancelReason::HedgeLost));
}

#[tokio::test(start_paused = true)]
async fn a_cold_router_measures_both_hosted_models_and_the_fast_one_answers_by_turn_3() {
    let slow_srv = FakeOpenAi::start().await.expect("server");
    let fast_srv = FakeOpenAi::start().await.expect("server");
    slow_srv.set_default(Reply::tokens(["Slow", " answer."]).first_token_after(ms(1_200)));
    fast_srv.set_default(Reply::tokens(["Fast", " answer."]).first_token_after(ms(100)));
    let mut config = LlmConfig {
        router: policy(),
        ..LlmConfig::default()
    };
    config
        .apply_cli(
            &[
                format!("{}::slow", slow_srv.base_url()),
                format!("{}::fast", fast_srv.base_url()),
            ],
            &[],
            &[],
            &|_| None,
        )
        .expect("cli");
    let r = Arc::new(
        Router::from_config(&config, SpanSink::new(256), telemetry(), &|_| None).expect("router"),
    );
    let mut picks = Vec::new();
    for _ in 0..3 {
        let t = turn(&r).await;
        picks.push(t.model.expect("answered"));
        settle().await;
    }
    println!("turn by turn: {picks:?}");
    assert!(picks[2].ends_with("/fast"), "{picks:?}");
    assert!(picks.iter().all(|m| m.ends_with("/fast")), "{picks:?}");
    let first = &slow_srv.requests()[0];
    assert!(
        first.disconnected,
        "the slow shadow was cancelled after its first token"
    );
    assert_eq!(
        slow_srv.request_count(),
        1,
        "the slow model was not asked again"
    );
}

#[tokio::test(start_paused = true)]
async fn no_first_token_is_hedged_by_the_next_model_within_the_deadline() {
    let hosted = hosted("mute", 100);
    let local = local(200);
    let (r, mut spans) = router(&[&hosted, &local]);
    // Warm: the hosted model answers in 100 ms (p90 100: hedge at 300 ms).
    for _ in 0..3 {
        assert_eq!(turn(&r).await.model.as_deref(), Some("h/mute"));
    }
    let _ = legs(&mut spans);
    hosted.push([Script::tokens(["never"], 60_000, 10)]);
    let t = turn(&r).await;
    assert_eq!(t.model.as_deref(), Some("embedded/smol"));
    assert_eq!(
        t.first_text,
        Some(ms(300 + 200)),
        "hedge deadline (300 ms) + the local model's first token"
    );
    settle().await;
    let legs = legs(&mut spans);
    assert_one_terminal_each(&legs);
    let mute = &legs.iter().find(|(m, _)| m == "mute").expect("mute leg").1;
    assert_eq!(cancel_reason(mute), Some(CancelReason::HedgeLost));
    let smol = &legs.iter().find(|(m, _)| m == "smol").expect("hedge leg").1;
    assert!(
        matches!(smol.last(), Some(SpanKind::Completed { .. })),
        "{smol:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_the_first_token_fails_the_leg_and_the_next_model_continues() {
    let hosted = hosted("stally", 100);
    let local = local(200);
    let (r, mut spans) = router(&[&hosted, &local]);
    for _ in 0..2 {
        turn(&r).await;
    }
    let _ = legs(&mut spans);
    hosted.push([
        Script::tokens(["Half", " of", " it"], 100, 20).stall_after(1, Duration::from_secs(60))
    ]);
    local.push([Script::tokens([" of it, locally."], 200, 20)]);
    let t = turn(&r).await;
    assert_eq!(t.model.as_deref(), Some("embedded/smol"));
    assert_eq!(
        t.text, "Half of it, locally.",
        "the local model continues the stalled text"
    );
    assert!(
        !t.items
            .iter()
            .any(|i| matches!(i, TurnItem::Restart { .. })),
        "{:?}",
        t.items
    );
    // The silence is the stall limit (3 s) plus the local first token.
    assert_eq!(t.first_text, Some(ms(100)));
    let legs = legs(&mut spans);
    assert_one_terminal_each(&legs);
    let stalled = &legs
        .iter()
        .find(|(m, _)| m == "stally")
        .expect("stalled leg")
        .1;
    assert!(
        matches!(stalled.last(), Some(SpanKind::Failed { .. })),
        "{stalled:?}"
    );
}

/// A hosted candidate at `base` with a local fallback; runs one turn.
async fn one_turn_with_fallback(base: String) -> (Turn, Arc<Router>, Vec<(String, Vec<SpanKind>)>) {
    // No probe: the local model starts only when the hosted one fails.
    let mut config = LlmConfig {
        router: RouterPolicy {
            probe: false,
            ..policy()
        },
        ..LlmConfig::default()
    };
    config
        .apply_cli(
            &[format!("{base}::gpt"), "embedded".into()],
            &[],
            &[],
            &|_| None,
        )
        .expect("cli");
    let sink = SpanSink::new(256);
    let mut rx = sink.subscribe();
    let local = local(250);
    let r = Arc::new(
        Router::from_config_with(
            &config,
            Some(LegModel::new(local as Arc<dyn ChatModel>, None)),
            sink,
            telemetry(),
            &|_| None,
        )
        .expect("router"),
    );
    let t = turn(&r).await;
    // No shadow runs here (no probe): a short wait ends every leg, well
    // within the shortest cooldown (5 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let legs = legs(&mut rx);
    (t, r, legs)
}

#[tokio::test(start_paused = true)]
async fn rate_limits_errors_refusals_and_malformed_streams_fall_back_to_the_local_model() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        format!("http://127.0.0.1:{port}/v1")
    };
    let cases = [
        ("429", Some(Reply::rate_limited(7.0))),
        ("500", Some(Reply::status(500))),
        (
            "malformed",
            Some(Reply::tokens(["a", "b"]).malformed_after(0)),
        ),
        ("reset", Some(Reply::tokens(["a", "b"]).reset_after(0))),
        ("refused", None),
    ];
    for (what, reply) in cases {
        let server = FakeOpenAi::start().await.expect("server");
        let base = match reply {
            Some(reply) => {
                server.set_default(reply.first_token_after(ms(20)));
                server.base_url()
            }
            None => refused.clone(),
        };
        let (t, r, legs) = one_turn_with_fallback(base).await;
        assert_eq!(
            t.model.as_deref(),
            Some("embedded/smol"),
            "{what}: {:?}",
            t.items
        );
        assert_eq!(t.text, "Local answer.", "{what}");
        assert!(
            t.first_text.is_some_and(|d| d <= ms(1_500 + 250)),
            "{what}: at most one hedge deadline: {:?}",
            t.first_text
        );
        assert_one_terminal_each(&legs);
        let key = &r.candidates()[0].key;
        assert!(
            r.runner().telemetry.in_cooldown(key),
            "{what}: the failing model cools down"
        );
        if what == "429" {
            let left = r.runner().telemetry.summary(key).cooldown_remaining_ms;
            assert!(
                left.is_some_and(|l| l > 1_000 && l <= 7_000),
                "Retry-After honoured: {left:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn traffic_returns_to_the_hosted_model_after_its_cooldown_and_a_good_probe() {
    let server = FakeOpenAi::start().await.expect("server");
    server.set_default(Reply::tokens(["Hosted", " answer."]).first_token_after(ms(100)));
    server.push_chat([Reply::rate_limited(5.0)]);
    let mut config = LlmConfig {
        router: policy(),
        ..LlmConfig::default()
    };
    config
        .apply_cli(
            &[format!("{}::gpt", server.base_url()), "embedded".into()],
            &[],
            &[],
            &|_| None,
        )
        .expect("cli");
    let r = Arc::new(
        Router::from_config_with(
            &config,
            Some(LegModel::new(local(300) as Arc<dyn ChatModel>, None)),
            SpanSink::new(1024),
            telemetry(),
            &|_| None,
        )
        .expect("router"),
    );
    let mut picks = Vec::new();
    for _ in 0..3 {
        picks.push(turn(&r).await.model.expect("answered"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The cooldown (5 s) passes; the next turns probe and return.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for _ in 0..3 {
        picks.push(turn(&r).await.model.expect("answered"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("turn by turn: {picks:?}");
    let hosted_key = r.candidates()[0].key.clone();
    assert!(picks[..3].iter().all(|m| m == "embedded/smol"), "{picks:?}");
    assert!(picks[3..].iter().all(|m| *m == hosted_key), "{picks:?}");
    assert_eq!(r.switches(), 2, "away on the 429 and back after the probe");
}

#[tokio::test(start_paused = true)]
async fn turns_that_would_queue_behind_the_local_model_overflow_to_the_hosted_one() {
    // The local model is preferred and faster to its first token, but one
    // reply occupies it for about a second.
    let local = Arc::new(ScriptedModel::new(
        "embedded",
        "smol",
        Script::n_tokens(20, 300, 50),
    ));
    let hosted = hosted("overflow", 500);
    let (r, _spans) = router(&[&local, &hosted]);
    // Warm: turn 1 probes the hosted model (measured as a shadow).
    assert_eq!(turn(&r).await.model.as_deref(), Some("embedded/smol"));
    settle().await;
    assert_eq!(turn(&r).await.model.as_deref(), Some("embedded/smol"));
    // Three sessions' turns at once.
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { turn(&r).await })
        })
        .collect();
    let mut models = Vec::new();
    for h in handles {
        let t = h.await.expect("turn");
        models.push((t.model.expect("answered"), t.first_text.expect("text")));
    }
    println!("three at once: {models:?}");
    assert_eq!(
        models[0].0, "embedded/smol",
        "the first takes the idle local model"
    );
    for (m, first) in &models[1..] {
        assert_eq!(m, "h/overflow", "the others overflow: {models:?}");
        assert!(
            *first <= ms(500),
            "within the hosted model's latency: {first:?}"
        );
    }
}
