//! LLM legs against the in-process OpenAI-compatible server, through the real
//! `async-openai` client, on a paused tokio clock: each scripted behaviour
//! produces an exact span event sequence, retries honour backoff and
//! retry-after, the deadline stops retries, and a cancel closes the HTTP
//! stream (the server sees the disconnect).

use colloquy::frame::CancelReason;
use colloquy::llm::leg::{LegInput, LegItem, LegModel, LegOutcome};
use colloquy::llm::openai::OpenAiChat;
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::telemetry::{StoreClock, TelemetryStore};
use colloquy::llm::testkit::{FakeOpenAi, Reply};
use colloquy::llm::{
    CancelSignal, ChatDelta, ChatMessage, ChatModel, ChatRequest, ErrorClass, LegRunner,
    LegTimeouts, SpanEvent, SpanKind, SpanSink, Telemetry, WindowConfig,
};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const MS: fn(u64) -> Duration = Duration::from_millis;

struct Rig {
    server: FakeOpenAi,
    runner: LegRunner,
    events: broadcast::Receiver<SpanEvent>,
    model: LegModel,
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_delay_ms: 100,
        max_delay_ms: 1_000,
        factor: 2.0,
        jitter: false,
        jitter_seed: None,
        max_rate_limit_wait_ms: 2_000,
        min_attempt_ms: 100,
    }
}

fn timeouts() -> LegTimeouts {
    LegTimeouts {
        first_token_ms: 1_000,
        stall_ms: 600,
        heartbeat_ms: 250,
    }
}

async fn rig(retry: RetryPolicy) -> Rig {
    let server = FakeOpenAi::start().await.expect("server");
    let sink = SpanSink::new(1024);
    let events = sink.subscribe();
    let telemetry = Telemetry::new(
        TelemetryStore::new(WindowConfig::default()),
        StoreClock::at(1_000_000),
    );
    let runner = LegRunner::new(sink, telemetry, retry, timeouts());
    let chat = OpenAiChat::new("fake", &server.base_url(), "m1", None);
    let model = LegModel::new(Arc::new(chat) as Arc<dyn ChatModel>, None);
    Rig {
        server,
        runner,
        events,
        model,
    }
}

fn input(deadline_ms: u64, cancel: &CancelSignal) -> LegInput {
    LegInput {
        request: ChatRequest::new(vec![
            ChatMessage::system("be brief"),
            ChatMessage::user("hi"),
        ]),
        epoch: 7,
        deadline: Instant::now() + MS(deadline_ms),
        cancel: cancel.clone(),
        audio_played: Arc::new(AtomicBool::new(false)),
    }
}

fn signal() -> CancelSignal {
    CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown)
}

/// Runs one leg to its end; returns the outcome, the items and the elapsed time.
async fn run(rig: &Rig, input: &LegInput) -> (LegOutcome, Vec<LegItem>, Duration) {
    let (tx, mut rx) = mpsc::channel(256);
    let start = Instant::now();
    let leg = async {
        let o = rig.runner.run(&rig.model, input, 1, &tx).await;
        drop(tx);
        o
    };
    let collect = async {
        let mut v = Vec::new();
        while let Some(i) = rx.recv().await {
            v.push(i);
        }
        v
    };
    let (o, items) = tokio::join!(leg, collect);
    (o, items, start.elapsed())
}

fn drain(rx: &mut broadcast::Receiver<SpanEvent>) -> Vec<SpanEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// `(attempt, type, at_ms)` per event: the exact sequence.
fn seq(events: &[SpanEvent]) -> Vec<(u32, &'static str, u64)> {
    events
        .iter()
        .map(|e| (e.attempt, e.kind.name(), e.at_ms))
        .collect()
}

fn text(items: &[LegItem]) -> String {
    items
        .iter()
        .filter_map(|i| match i {
            LegItem::Delta(ChatDelta::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_normal_reply_emits_started_first_token_completed() {
    let mut r = rig(retry()).await;
    r.server
        .push_chat([Reply::tokens(["Hello", " there", "."])]);
    let (o, items, elapsed) = run(&r, &input(5_000, &signal())).await;
    assert_eq!(o, LegOutcome::Completed);
    assert_eq!(text(&items), "Hello there.");
    let ev = drain(&mut r.events);
    assert_eq!(
        seq(&ev),
        [
            (1, "started", 0),
            (1, "first_token", 50),
            (1, "completed", 80)
        ]
    );
    match &ev[2].kind {
        SpanKind::Completed {
            ttft_ms,
            tokens_in,
            tokens_out,
            tokens_per_s,
            ..
        } => {
            assert_eq!(*ttft_ms, Some(50));
            assert_eq!((*tokens_in, *tokens_out), (Some(12), 3));
            assert!(tokens_per_s.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(ev
        .iter()
        .all(|e| e.epoch == 7 && e.provider == "fake" && e.model == "m1"));
    assert_eq!(elapsed, MS(80));
    let body = &r.server.requests()[0].body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "m1");
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_token_gets_a_stalled_heartbeat_anchored_at_the_start() {
    let mut r = rig(retry()).await;
    r.server
        .push_chat([Reply::tokens(["a", "b"]).first_token_after(MS(560))]);
    let (o, _, _) = run(&r, &input(5_000, &signal())).await;
    assert_eq!(o, LegOutcome::Completed);
    assert_eq!(
        seq(&drain(&mut r.events)),
        [
            (1, "started", 0),
            (1, "stalled", 250),
            (1, "stalled", 500),
            (1, "first_token", 560),
            (1, "completed", 580)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_mid_stream_beats_then_resumes() {
    let mut r = rig(retry()).await;
    // Tokens at 50, 60, then a 500 ms pause: the third at 570.
    r.server
        .push_chat([Reply::tokens(["a", "b", "c"]).stall_after(2, MS(500))]);
    let (o, items, _) = run(&r, &input(5_000, &signal())).await;
    assert_eq!(o, LegOutcome::Completed);
    assert_eq!(text(&items), "abc");
    assert_eq!(
        seq(&drain(&mut r.events)),
        [
            (1, "started", 0),
            (1, "first_token", 50),
            (1, "stalled", 500),
            (1, "completed", 580)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_stall_times_out_closes_the_stream_and_retries_with_a_restart() {
    let mut r = rig(retry()).await;
    r.server.push_chat([
        Reply::tokens(["a", "b", "c"]).stall_after(2, MS(5_000)),
        Reply::tokens(["x", "y"]),
    ]);
    let (o, items, elapsed) = run(&r, &input(5_000, &signal())).await;
    assert_eq!(o, LegOutcome::Completed);
    // Last token at 60, stall timeout 600 → fails at 660; backoff 100; 70 more.
    assert_eq!(
        seq(&drain(&mut r.events)),
        [
            (1, "started", 0),
            (1, "first_token", 50),
            (1, "stalled", 500),
            (1, "failed", 660),
            (2, "started", 0),
            (2, "first_token", 50),
            (2, "completed", 70)
        ]
    );
    assert_eq!(elapsed, MS(660 + 100 + 70));
    assert!(items.iter().any(|i| matches!(
        i,
        LegItem::Restart {
            after: ErrorClass::Timeout,
            ..
        }
    )));
    let after_restart = items
        .iter()
        .skip_while(|i| !matches!(i, LegItem::Restart { .. }))
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(text(&after_restart), "xy");
    let first = r.server.wait_ended(0).await;
    assert!(
        first.disconnected,
        "the timed-out stream was closed: {first:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limit_with_retry_after_is_honoured_then_the_retry_succeeds() {
    let mut r = rig(retry()).await;
    r.server
        .push_chat([Reply::rate_limited(0.3), Reply::default()]);
    let (o, _, elapsed) = run(&r, &input(5_000, &signal())).await;
    assert_eq!(o, LegOutcome::Completed);
    let ev = drain(&mut r.events);
    assert_eq!(
        seq(&ev),
        [
            (1, "started", 0),
            (1, "failed", 50),
            (2, "started", 0),
            (2, "first_token", 50),
            (2, "completed", 80)
        ]
    );
    match &ev[1].kind {
        SpanKind::Failed {
            class,
            status,
            retry_after_ms,
            ..
        } => assert_eq!(
            (*class, *status, *retry_after_ms),
            (ErrorClass::RateLimited, Some(429), Some(300))
        ),
        other => panic!("{other:?}"),
    }
    // 50 to the 429, 300 retry-after (longer than the 100 backoff), 80 reply.
    assert_eq!(elapsed, MS(50 + 300 + 80));
    assert_eq!(
        r.server.request_count(),
        2,
        "async-openai itself did not retry"
    );
    let summary = r.runner.telemetry.summary("fake/m1");
    assert_eq!(
        summary.last_error.map(|e| e.class),
        Some(ErrorClass::RateLimited)
    );
    assert!(
        !r.runner.telemetry.in_cooldown("fake/m1"),
        "the 300 ms cooldown has passed"
    );
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_exponentially() {
    let mut r = rig(retry()).await;
    r.server
        .push_chat([Reply::status(500), Reply::status(503), Reply::default()]);
    let (o, _, elapsed) = run(&r, &input(5_000, &signal())).await;
    assert_eq!(o, LegOutcome::Completed);
    let ev = drain(&mut r.events);
    let kinds: Vec<_> = ev.iter().map(|e| (e.attempt, e.kind.name())).collect();
    assert_eq!(
        kinds,
        [
            (1, "started"),
            (1, "failed"),
            (2, "started"),
            (2, "failed"),
            (3, "started"),
            (3, "first_token"),
            (3, "completed")
        ]
    );
    assert!(ev.iter().all(
        |e| !matches!(&e.kind, SpanKind::Failed { class, .. } if *class != ErrorClass::Server)
    ));
    assert_eq!(elapsed, MS(50 + 100 + 50 + 200 + 80));
    assert_eq!(r.server.request_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_retries() {
    let mut r = rig(retry()).await;
    r.server.push_chat([Reply::status(500), Reply::default()]);
    // Failure at 50; a retry would start at 150 and needs 100 more: past 200.
    let (o, _, elapsed) = run(&r, &input(200, &signal())).await;
    match o {
        LegOutcome::Failed { error, delivered } => {
            assert_eq!(error.class, ErrorClass::Server);
            assert!(!delivered);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        seq(&drain(&mut r.events)),
        [(1, "started", 0), (1, "failed", 50)]
    );
    assert_eq!(elapsed, MS(50));
    assert_eq!(r.server.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cancels_a_running_request() {
    let mut r = rig(retry()).await;
    r.server
        .push_chat([Reply::tokens(["late"]).first_token_after(MS(900))]);
    let (o, _, elapsed) = run(&r, &input(400, &signal())).await;
    assert_eq!(o, LegOutcome::Cancelled(CancelReason::Deadline));
    let ev = drain(&mut r.events);
    assert_eq!(
        seq(&ev),
        [
            (1, "started", 0),
            (1, "stalled", 250),
            (1, "cancelled", 400)
        ]
    );
    assert!(matches!(
        ev[2].kind,
        SpanKind::Cancelled {
            reason: CancelReason::Deadline
        }
    ));
    assert_eq!(elapsed, MS(400));
    assert!(r.server.wait_ended(0).await.disconnected);
}

#[tokio::test(start_paused = true)]
async fn a_barge_in_mid_stream_closes_the_http_stream_and_is_not_retried() {
    let mut r = rig(retry()).await;
    r.server
        .push_chat([Reply::tokens((0..100).map(|i| format!("w{i} ")))]);
    let cancel = signal();
    let inp = input(10_000, &cancel);
    let (tx, mut rx) = mpsc::channel(256);
    let leg = async {
        let o = r.runner.run(&r.model, &inp, 1, &tx).await;
        drop(tx);
        o
    };
    let consumer = async {
        let mut n = 0;
        while let Some(item) = rx.recv().await {
            if matches!(item, LegItem::Delta(ChatDelta::Text(_))) {
                n += 1;
                if n == 5 {
                    cancel.cancel(CancelReason::BargeIn);
                }
            }
        }
        n
    };
    let (o, n) = tokio::join!(leg, consumer);
    assert_eq!(o, LegOutcome::Cancelled(CancelReason::BargeIn));
    assert!((5..=6).contains(&n), "{n} tokens");
    let ev = drain(&mut r.events);
    assert_eq!(
        seq(&ev),
        [
            (1, "started", 0),
            (1, "first_token", 50),
            (1, "cancelled", 90)
        ]
    );
    let rec = r.server.wait_ended(0).await;
    assert!(rec.disconnected, "server saw the client go: {rec:?}");
    assert!(rec.tokens_sent < 100);
    assert_eq!(
        r.server.request_count(),
        1,
        "a cancelled request is not retried"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_and_barge_in_stay_distinct_and_a_bare_token_cancel_uses_the_default() {
    for (how, expected) in [
        (Some(CancelReason::Shutdown), CancelReason::Shutdown),
        (Some(CancelReason::BargeIn), CancelReason::BargeIn),
        (None, CancelReason::Shutdown),
    ] {
        let mut r = rig(retry()).await;
        r.server
            .push_chat([Reply::tokens(["a"]).first_token_after(MS(300))]);
        let cancel = signal();
        let inp = input(5_000, &cancel);
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(MS(100)).await;
            match how {
                Some(reason) => c2.cancel(reason),
                None => c2.token().cancel(),
            }
        });
        let (o, _, _) = run(&r, &inp).await;
        assert_eq!(o, LegOutcome::Cancelled(expected));
        let ev = drain(&mut r.events);
        assert_eq!(seq(&ev), [(1, "started", 0), (1, "cancelled", 100)]);
        assert_eq!(ev[1].kind, SpanKind::Cancelled { reason: expected });
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_reset_is_a_network_failure_and_is_retried() {
    let mut r = rig(retry()).await;
    r.server.push_chat([
        Reply::tokens(["a", "b", "c"]).reset_after(2),
        Reply::tokens(["ok"]),
    ]);
    let (o, items, _) = run(&r, &input(5_000, &signal())).await;
    assert_eq!(o, LegOutcome::Completed);
    let ev = drain(&mut r.events);
    let kinds: Vec<_> = ev.iter().map(|e| (e.attempt, e.kind.name())).collect();
    assert_eq!(
        kinds,
        [
            (1, "started"),
            (1, "first_token"),
            (1, "failed"),
            (2, "started"),
            (2, "first_token"),
            (2, "completed")
        ]
    );
    assert!(
        matches!(
            ev[2].kind,
            SpanKind::Failed {
                class: ErrorClass::Network,
                ..
            }
        ),
        "{:?}",
        ev[2]
    );
    assert!(items.iter().any(|i| matches!(
        i,
        LegItem::Restart {
            after: ErrorClass::Network,
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn malformed_sse_and_an_empty_stream_are_malformed_failures() {
    for reply in [Reply::tokens(["a", "b"]).malformed_after(1), Reply::empty()] {
        let mut r = rig(RetryPolicy {
            max_attempts: 1,
            ..retry()
        })
        .await;
        r.server.push_chat([reply.clone()]);
        let (o, _, _) = run(&r, &input(5_000, &signal())).await;
        assert!(
            matches!(o, LegOutcome::Failed { ref error, .. } if error.class == ErrorClass::Malformed),
            "{reply:?}: {o:?}"
        );
        let ev = drain(&mut r.events);
        let kinds: Vec<_> = ev.iter().map(|e| e.kind.name()).collect();
        let expected: &[&str] = if reply.empty {
            &["started", "failed"]
        } else {
            &["started", "first_token", "failed"]
        };
        assert_eq!(kinds, expected);
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_error_is_not_retried() {
    let mut r = rig(retry()).await;
    r.server.push_chat([Reply::status(400), Reply::default()]);
    let (o, _, _) = run(&r, &input(5_000, &signal())).await;
    assert!(
        matches!(o, LegOutcome::Failed { ref error, .. } if error.class == ErrorClass::Client && error.status == Some(400))
    );
    assert_eq!(
        seq(&drain(&mut r.events)),
        [(1, "started", 0), (1, "failed", 50)]
    );
    assert_eq!(r.server.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_heartbeat_follows_a_terminal_event() {
    // Many legs of every kind; in each span nothing follows its terminal.
    let mut r = rig(RetryPolicy {
        max_attempts: 2,
        ..retry()
    })
    .await;
    r.server.push_chat([
        Reply::tokens(["a"]).first_token_after(MS(750)),
        Reply::tokens(["a", "b"]).stall_after(1, MS(2_000)),
        Reply::status(500).first_token_after(MS(500)),
        Reply::tokens(["a"]).first_token_after(MS(1_250)),
    ]);
    for _ in 0..3 {
        run(&r, &input(5_000, &signal())).await;
    }
    let ev = drain(&mut r.events);
    assert!(ev.len() > 8);
    let mut ended = std::collections::HashSet::new();
    for e in &ev {
        assert!(
            !ended.contains(&e.request_id),
            "event after terminal: {e:?}"
        );
        if e.kind.is_terminal() {
            ended.insert(e.request_id);
        }
    }
    let started = ev.iter().filter(|e| e.kind.name() == "started").count();
    assert_eq!(started, ended.len(), "every span has exactly one terminal");
}
