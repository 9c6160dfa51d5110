//! The router on a paused clock: it moves to the faster model when latencies
//! change and returns when the first recovers, without flapping between
//! near-equal models; a 429 puts a model in cooldown until its TTL; a leg that
//! fails mid-stream is continued by the next model; one that fails before its
//! first token falls back to the next model in the same turn (also
//! through the real HTTP client); the store round-trips through a file.

use colloquy::frame::CancelReason;
use colloquy::llm::leg::LegModel;
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::telemetry::{StoreClock, TelemetryStore};
use colloquy::llm::testkit::{FakeOpenAi, Reply, Script, ScriptedModel};
use colloquy::llm::{
    CancelSignal, ChatDelta, ChatMessage, ChatModel, ChatRequest, ErrorClass, LegRunner,
    LegTimeouts, LlmConfig, LlmError, Router, RouterPolicy, SpanSink, Telemetry, TurnItem,
    WindowConfig,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn runner(retry: RetryPolicy) -> LegRunner {
    let telemetry = Telemetry::new(
        TelemetryStore::new(WindowConfig::default()),
        StoreClock::at(5_000_000),
    );
    LegRunner::new(
        SpanSink::new(4096),
        telemetry,
        retry,
        LegTimeouts::default(),
    )
}

fn no_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        jitter: false,
        ..RetryPolicy::default()
    }
}

fn router(models: &[Arc<ScriptedModel>], policy: RouterPolicy, retry: RetryPolicy) -> Arc<Router> {
    let candidates = models
        .iter()
        .map(|m| LegModel::new(m.clone() as Arc<dyn ChatModel>, None))
        .collect();
    Arc::new(Router::new(candidates, runner(retry), policy))
}

/// The policy of these tests: no probe, no hedge (tests of those are in
/// `route_*`), no dwell, so each test sees one mechanism.
fn policy(exploration_rate: f64) -> RouterPolicy {
    RouterPolicy {
        exploration_rate,
        seed: Some(42),
        probe: false,
        hedge: false,
        min_dwell_turns: 0,
        ..RouterPolicy::default()
    }
}

/// Runs one turn to its end; returns the answering model and all items.
async fn turn(router: &Arc<Router>) -> (Option<String>, Vec<TurnItem>) {
    let cancel = CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown);
    let request = ChatRequest::new(vec![ChatMessage::user("hi")]);
    let mut reply = router.start_turn(request, 1, Instant::now() + Duration::from_secs(20), cancel);
    let mut items = Vec::new();
    while let Some(i) = reply.next().await {
        items.push(i);
    }
    let model = items.iter().find_map(|i| match i {
        TurnItem::Done { model } => Some(model.clone()),
        _ => None,
    });
    (model, items)
}

#[tokio::test(start_paused = true)]
async fn with_no_latency_known_the_configured_order_is_the_preference() {
    let a = Arc::new(ScriptedModel::new("p", "a", Script::n_tokens(3, 300, 10)));
    let b = Arc::new(ScriptedModel::new("p", "b", Script::n_tokens(3, 100, 10)));
    let r = router(&[a.clone(), b.clone()], policy(0.0), no_retry());
    assert_eq!(r.plan().order, [0, 1]);
    let (model, _) = turn(&r).await;
    assert_eq!(model.as_deref(), Some("p/a"));
}

#[tokio::test(start_paused = true)]
async fn the_router_moves_to_the_faster_model_and_back_without_flapping() {
    let a = Arc::new(ScriptedModel::new("p", "a", Script::n_tokens(3, 200, 10)));
    let b = Arc::new(ScriptedModel::new("p", "b", Script::n_tokens(3, 400, 10)));
    let r = router(&[a.clone(), b.clone()], policy(0.2), no_retry());
    let mut picks = Vec::new();
    // Phase 1: a is fast.
    for _ in 0..30 {
        picks.push(turn(&r).await.0.expect("answered"));
    }
    let a_share = picks.iter().filter(|m| *m == "p/a").count();
    assert!(a_share >= 18, "a answers most turns: {a_share}/30");
    assert!(b.calls() >= 1, "exploration sampled b");
    // Phase 2: a gets slow; the router moves to b.
    a.set_default(Script::n_tokens(3, 900, 10));
    let mut phase2 = Vec::new();
    for _ in 0..30 {
        phase2.push(turn(&r).await.0.expect("answered"));
    }
    let last10_b = phase2[20..].iter().filter(|m| *m == "p/b").count();
    assert!(last10_b >= 6, "b leads after a slowed: {phase2:?}");
    // Phase 3: a recovers; exploration notices and the router returns.
    a.set_default(Script::n_tokens(3, 200, 10));
    let mut phase3 = Vec::new();
    for _ in 0..60 {
        phase3.push(turn(&r).await.0.expect("answered"));
    }
    let last10_a = phase3[50..].iter().filter(|m| *m == "p/a").count();
    assert!(last10_a >= 6, "a leads again: {phase3:?}");
    assert_eq!(r.switches(), 2, "exactly one move away and one back");
}

#[tokio::test(start_paused = true)]
async fn near_equal_models_do_not_flap() {
    let a = Arc::new(ScriptedModel::new("p", "a", Script::n_tokens(2, 300, 10)));
    let b = Arc::new(ScriptedModel::new("p", "b", Script::n_tokens(2, 270, 10)));
    let r = router(&[a.clone(), b.clone()], policy(0.3), no_retry());
    for i in 0..60 {
        // Alternate which one is a little faster.
        if i % 10 == 0 {
            let (fa, fb) = if i % 20 == 0 { (300, 270) } else { (270, 300) };
            a.set_default(Script::n_tokens(2, fa, 10));
            b.set_default(Script::n_tokens(2, fb, 10));
        }
        turn(&r).await;
    }
    assert_eq!(
        r.switches(),
        0,
        "10% differences stay within the hysteresis"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_model_cools_down_for_its_ttl_and_the_turn_falls_back() {
    let a = Arc::new(ScriptedModel::new("p", "a", Script::n_tokens(3, 100, 10)));
    let b = Arc::new(ScriptedModel::new("p", "b", Script::n_tokens(3, 300, 10)));
    let mut limited = LlmError::new(ErrorClass::RateLimited, "p", "quota exceeded");
    limited.status = Some(429);
    limited.retry_after = Some(Duration::from_secs(5));
    a.push([Script::error(limited)]);
    let r = router(&[a.clone(), b.clone()], policy(0.0), RetryPolicy::default());
    // The 429's retry-after (5 s) is longer than worth waiting: fall back now.
    let (model, items) = turn(&r).await;
    assert_eq!(model.as_deref(), Some("p/b"));
    assert!(
        !items.iter().any(|i| matches!(i, TurnItem::Restart { .. })),
        "nothing was delivered before"
    );
    assert!(r.runner().telemetry.in_cooldown("p/a"));
    assert_eq!(r.plan().order, [1, 0], "a is planned last while cooling");
    for _ in 0..3 {
        assert_eq!(turn(&r).await.0.as_deref(), Some("p/b"));
    }
    assert_eq!(a.calls(), 1, "no request to a during its cooldown");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(
        !r.runner().telemetry.in_cooldown("p/a"),
        "recovered after the TTL"
    );
    let plan = r.plan();
    assert!(plan.healthy >= 2, "a is healthy again: {plan:?}");
}

/// A turn whose consumer plays audio from its first text on.
async fn turn_with_audio(r: &Arc<Router>) -> Vec<TurnItem> {
    let cancel = CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown);
    let mut reply = r.start_turn(
        ChatRequest::new(vec![ChatMessage::user("x")]),
        2,
        Instant::now() + Duration::from_secs(9),
        cancel,
    );
    let mut items = Vec::new();
    while let Some(i) = reply.next().await {
        if matches!(i, TurnItem::Delta(ChatDelta::Text(_))) {
            reply.mark_audio_played();
        }
        items.push(i);
    }
    items
}

/// The texts of a turn's items, and whether a restart came.
fn texts(items: &[TurnItem]) -> (Vec<String>, bool) {
    let texts = items
        .iter()
        .filter_map(|i| match i {
            TurnItem::Delta(ChatDelta::Text(t)) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let restart = items.iter().any(|i| matches!(i, TurnItem::Restart { .. }));
    (texts, restart)
}

#[tokio::test(start_paused = true)]
async fn a_mid_stream_failure_is_continued_by_the_next_model_before_and_after_audio() {
    let broken = || {
        Script::n_tokens(5, 50, 10).fail_after(2, LlmError::new(ErrorClass::Server, "p", "boom"))
    };
    let a = Arc::new(ScriptedModel::new("p", "a", broken()));
    let b = Arc::new(ScriptedModel::new(
        "p",
        "b",
        Script::tokens(["fine"], 50, 10),
    ));
    let r = router(&[a.clone(), b.clone()], policy(0.0), no_retry());
    let (model, items) = turn(&r).await;
    assert_eq!(model.as_deref(), Some("p/b"));
    assert_eq!(
        texts(&items),
        (vec!["t0 ".into(), "t1 ".into(), "fine".into()], false),
        "b continues what a said: {items:?}"
    );
    let asked = b.requests();
    assert_eq!(
        asked[0].messages.last(),
        Some(&ChatMessage::assistant("t0 t1 "))
    );

    // Same failure, but the consumer already played audio: still continued.
    let items = turn_with_audio(&router(&[a.clone(), b.clone()], policy(0.0), no_retry())).await;
    assert_eq!(texts(&items).0.concat(), "t0 t1 fine", "{items:?}");
    assert!(
        matches!(items.last(), Some(TurnItem::Done { model }) if model == "p/b"),
        "{items:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_only_whitespace_restarts_before_audio_and_fails_after() {
    let blank = || {
        Script::tokens([" ", "x"], 50, 10)
            .fail_after(1, LlmError::new(ErrorClass::Server, "p", "boom"))
    };
    let a = Arc::new(ScriptedModel::new("p", "a", blank()));
    let b = Arc::new(ScriptedModel::new(
        "p",
        "b",
        Script::tokens(["fine"], 50, 10),
    ));
    let r = router(&[a.clone(), b.clone()], policy(0.0), no_retry());
    let (model, items) = turn(&r).await;
    assert_eq!(model.as_deref(), Some("p/b"));
    let restart = items
        .iter()
        .position(|i| matches!(i, TurnItem::Restart { .. }))
        .expect("restart");
    assert!(
        matches!(&items[restart], TurnItem::Restart { model, after: ErrorClass::Server } if model == "p/b")
    );
    assert!(matches!(&items[restart + 1], TurnItem::Delta(ChatDelta::Text(t)) if t == "fine"));
    assert_eq!(b.requests()[0].messages.len(), 1, "a fresh request to b");

    // Same failure once audio played: nothing to continue, the turn fails.
    let items = turn_with_audio(&router(&[a.clone(), b.clone()], policy(0.0), no_retry())).await;
    let last = items.last();
    assert!(
        matches!(last, Some(TurnItem::Failed(e)) if e.class == ErrorClass::Server),
        "{last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_turn_cancels_its_model_stream() {
    let a = Arc::new(ScriptedModel::new("p", "a", Script::n_tokens(50, 50, 10)));
    let r = router(std::slice::from_ref(&a), policy(0.0), no_retry());
    let cancel = CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown);
    let mut reply = r.start_turn(
        ChatRequest::new(vec![ChatMessage::user("x")]),
        3,
        Instant::now() + Duration::from_secs(9),
        cancel.clone(),
    );
    let _first = reply.next().await;
    drop(reply);
    tokio::time::sleep(ms(100)).await;
    assert!(
        !cancel.is_cancelled(),
        "only the turn's child signal was cancelled"
    );
    assert_eq!(a.dropped_early(), 1);
}

#[tokio::test(start_paused = true)]
async fn over_http_a_failing_model_falls_back_to_the_next_server() {
    let s1 = FakeOpenAi::start().await.expect("server 1");
    let s2 = FakeOpenAi::start().await.expect("server 2");
    s1.push_chat([Reply::status(500)]);
    s2.push_chat([Reply::tokens(["from", " two"])]);
    let mut config = LlmConfig {
        retry: no_retry(),
        router: policy(0.0),
        ..LlmConfig::default()
    };
    config
        .apply_cli(
            &[
                format!("{}::one", s1.base_url()),
                format!("{}::two", s2.base_url()),
            ],
            &[],
            &[],
            &|_| None,
        )
        .expect("cli");
    let telemetry = Telemetry::new(
        TelemetryStore::new(WindowConfig::default()),
        StoreClock::at(1),
    );
    let sink = SpanSink::new(256);
    let mut events = sink.subscribe();
    let r = Arc::new(Router::from_config(&config, sink, telemetry, &|_| None).expect("router"));
    let (model, items) = turn(&r).await;
    let two = format!(
        "{}/two",
        s2.base_url()
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
    );
    assert_eq!(model.as_deref(), Some(two.as_str()));
    let text: String = items
        .iter()
        .filter_map(|i| match i {
            TurnItem::Delta(ChatDelta::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "from two");
    let ev: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let kinds: Vec<_> = ev
        .iter()
        .map(|e| (e.model.as_str(), e.kind.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("one", "started"),
            ("one", "failed"),
            ("two", "started"),
            ("two", "first_token"),
            ("two", "completed")
        ]
    );
    assert_eq!(ev[0].leg_id, ev[2].leg_id, "one leg, two requests");
}

#[tokio::test(start_paused = true)]
async fn the_store_round_trips_and_survives_a_restart() {
    let a = Arc::new(ScriptedModel::new("p", "a", Script::n_tokens(3, 120, 10)));
    let r = router(std::slice::from_ref(&a), policy(0.0), no_retry());
    for _ in 0..4 {
        turn(&r).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.json");
    r.runner().telemetry.save(&path).expect("save");
    let loaded = TelemetryStore::load(&path, WindowConfig::default()).expect("load");
    assert_eq!(loaded.models, r.runner().telemetry.lock().models);
    let sum = loaded.summary("p/a", r.runner().telemetry.now_ms());
    assert_eq!(sum.samples, 4);
    assert_eq!(sum.ttft_p50_ms, Some(120));
    let table = loaded.render_table(r.runner().telemetry.now_ms());
    assert!(table.contains("p/a") && table.contains("120"), "{table}");
}

#[tokio::test(start_paused = true)]
async fn a_barge_in_on_the_callers_signal_cancels_the_turn_with_that_reason() {
    let a = Arc::new(ScriptedModel::new("p", "a", Script::n_tokens(50, 50, 10)));
    let r = router(std::slice::from_ref(&a), policy(0.0), no_retry());
    let cancel = CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown);
    let mut reply = r.start_turn(
        ChatRequest::new(vec![ChatMessage::user("x")]),
        4,
        Instant::now() + Duration::from_secs(9),
        cancel.clone(),
    );
    let _first = reply.next().await;
    cancel.cancel(CancelReason::BargeIn);
    let mut last = None;
    while let Some(i) = reply.next().await {
        last = Some(i);
    }
    assert_eq!(last, Some(TurnItem::Cancelled(CancelReason::BargeIn)));
    assert_eq!(a.dropped_early(), 1);
}
