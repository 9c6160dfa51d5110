//! A reply that stalls after it started is continued by the next model
//! (issue 13): the stalled leg fails at the stall limit (`failed`,
//! `timeout`: its own terminal event), the next candidate gets the turn's
//! request plus the text already sent as a final assistant message, and
//! its text follows with no restart — a server that restarts the sentence
//! instead has the repeated words stripped. With no model left the turn
//! ends (`Failed`) after the text that was sent, and the consumer ends the
//! reply cleanly.
//!
//! Router-level tests run against the in-process OpenAI-compatible server
//! on a paused clock; the last one replays a WAV through the whole voice
//! path: the committed reply is exactly what was spoken.

mod common;

use colloquy::frame::{CancelReason, Event};
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::span::{SpanEvent, SpanKind};
use colloquy::llm::testkit::{FakeOpenAi, Reply, Script, ScriptedModel};
use colloquy::llm::{
    CancelSignal, ChatDelta, ChatMessage, ChatRequest, ErrorClass, LegTimeouts, LlmConfig, Role,
    Router, RouterPolicy, SpanSink, TurnItem,
};
use colloquy::route::note::Why;
use colloquy::route::RouteNote;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A router over the models `a` then `b` of one scripted server (no probe,
/// no exploration: the order is the plan).
fn router(server: &FakeOpenAi) -> (Arc<Router>, broadcast::Receiver<SpanEvent>) {
    let mut config = LlmConfig {
        router: RouterPolicy {
            probe: false,
            exploration_rate: 0.0,
            seed: Some(1),
            ..RouterPolicy::default()
        },
        retry: RetryPolicy::default(),
        leg: LegTimeouts::default(),
        ..LlmConfig::default()
    };
    let base = server.base_url();
    config
        .apply_cli(
            &[format!("{base}::a"), format!("{base}::b")],
            &[],
            &[],
            &|_| None,
        )
        .expect("cli");
    let sink = SpanSink::new(1024);
    let spans = sink.subscribe();
    let r =
        Router::from_config(&config, sink, common::route::telemetry(), &|_| None).expect("router");
    (Arc::new(r), spans)
}

struct Turn {
    items: Vec<TurnItem>,
    /// Each text delta with when it came (from the turn's start).
    texts: Vec<(Duration, String)>,
}

impl Turn {
    fn text(&self) -> String {
        self.texts.iter().map(|(_, t)| t.as_str()).collect()
    }
}

async fn turn(r: &Arc<Router>) -> Turn {
    let cancel = CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown);
    let start = Instant::now();
    let mut reply = r.start_turn(
        ChatRequest::new(vec![ChatMessage::user("Tell me about halves.")]),
        1,
        start + Duration::from_secs(30),
        cancel,
    );
    let mut items = Vec::new();
    let mut texts = Vec::new();
    while let Some(i) = reply.next().await {
        if let TurnItem::Delta(ChatDelta::Text(t)) = &i {
            texts.push((start.elapsed(), t.clone()));
            // The first words are playing: a restart is no longer allowed.
            reply.mark_audio_played();
        }
        items.push(i);
    }
    Turn { items, texts }
}

/// Per leg: (model, span kinds), once every leg has ended.
async fn legs(rx: &mut broadcast::Receiver<SpanEvent>) -> Vec<(String, Vec<SpanKind>)> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = common::route::legs(rx);
    for (model, kinds) in &out {
        assert_eq!(
            kinds.iter().filter(|k| k.is_terminal()).count(),
            1,
            "exactly one terminal event: {model}: {kinds:?}"
        );
        assert!(kinds.last().is_some_and(SpanKind::is_terminal));
    }
    out
}

fn last_message(body: &serde_json::Value) -> (String, String) {
    let m = body["messages"]
        .as_array()
        .and_then(|a| a.last())
        .expect("messages");
    (
        m["role"].as_str().unwrap_or_default().into(),
        m["content"].as_str().unwrap_or_default().into(),
    )
}

fn timed_out(kinds: &[SpanKind]) -> bool {
    matches!(
        kinds.last(),
        Some(SpanKind::Failed {
            class: ErrorClass::Timeout,
            ..
        })
    )
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_the_first_token_is_continued_by_the_next_model() {
    let server = FakeOpenAi::start().await.expect("server");
    server.push_chat([
        Reply::tokens(["Half", " of", " it."]).stall_after(1, Duration::from_secs(60)),
        Reply::tokens([" of", " it,", " from b."]),
    ]);
    let (r, mut spans) = router(&server);
    let t = turn(&r).await;
    assert_eq!(t.text(), "Half of it, from b.", "{:?}", t.items);
    assert!(
        !t.items
            .iter()
            .any(|i| matches!(i, TurnItem::Restart { .. })),
        "what was said stays: {:?}",
        t.items
    );
    assert!(
        matches!(t.items.last(), Some(TurnItem::Done { model }) if model.ends_with("/b")),
        "{:?}",
        t.items
    );
    // The silence: from the last word of `a` to the first of `b` is the
    // stall limit (3 s) plus b's first token (50 ms) on the server's clock.
    let gap = t.texts[1].0 - t.texts[0].0;
    let stall = Duration::from_millis(LegTimeouts::default().stall_ms);
    assert!(gap >= stall, "{gap:?}");
    assert!(gap <= stall + ms(300), "{gap:?}");
    // b was asked to continue exactly what was said.
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].body["model"], "b");
    assert_eq!(
        last_message(&requests[1].body),
        ("assistant".into(), "Half".into())
    );
    assert_eq!(
        last_message(&requests[0].body),
        ("user".into(), "Tell me about halves.".into())
    );
    // a's leg ends once, failed with its own reason; b's completed.
    let legs = legs(&mut spans).await;
    assert_eq!(legs.len(), 2, "{legs:?}");
    assert_eq!(legs[0].0, "a");
    assert!(timed_out(&legs[0].1), "{legs:?}");
    assert_eq!(legs[1].0, "b");
    assert!(
        matches!(legs[1].1.last(), Some(SpanKind::Completed { .. })),
        "{legs:?}"
    );
    assert!(server.wait_ended(0).await.disconnected, "a's stream closed");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_restarts_the_sentence_does_not_repeat_the_spoken_words() {
    let server = FakeOpenAi::start().await.expect("server");
    server.push_chat([
        Reply::tokens(["Half", " of", " it."]).stall_after(2, Duration::from_secs(60)),
        // This server ignores the final assistant message and starts over.
        Reply::tokens(["Half", " of", " it", " again."]),
    ]);
    let (r, _spans) = router(&server);
    let t = turn(&r).await;
    assert_eq!(t.text(), "Half of it again.", "{:?}", t.items);
    assert_eq!(
        last_message(&server.requests()[1].body),
        ("assistant".into(), "Half of".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_with_no_model_left_ends_the_reply_after_what_was_said() {
    let server = FakeOpenAi::start().await.expect("server");
    server.push_chat([
        // a fails before its first token: b answers (fallback)…
        Reply::status(500),
        // …then stalls after one token, and no model is left.
        Reply::tokens(["Half", " of", " it."]).stall_after(1, Duration::from_secs(60)),
    ]);
    let (r, mut spans) = router(&server);
    let t = turn(&r).await;
    assert_eq!(t.text(), "Half");
    assert!(
        matches!(t.items.last(), Some(TurnItem::Failed(e)) if e.class == ErrorClass::Timeout),
        "{:?}",
        t.items
    );
    assert_eq!(server.request_count(), 2, "a was not asked again");
    let legs = legs(&mut spans).await;
    assert_eq!(legs.len(), 2, "{legs:?}");
    assert!(matches!(
        legs[0].1.last(),
        Some(SpanKind::Failed {
            class: ErrorClass::Server,
            ..
        })
    ));
    assert!(timed_out(&legs[1].1), "{legs:?}");
}

#[tokio::test(start_paused = true)]
async fn a_continuation_that_stalls_too_is_continued_again() {
    // Three hosted models: a stalls after "One", b continues with " two"
    // and stalls, c finishes. The text is never restarted.
    let server = FakeOpenAi::start().await.expect("server");
    server.push_chat([
        Reply::tokens(["One", " x"]).stall_after(1, Duration::from_secs(60)),
        Reply::tokens([" two", " y"]).stall_after(1, Duration::from_secs(60)),
        Reply::tokens([" three."]),
    ]);
    let mut config = LlmConfig {
        router: RouterPolicy {
            probe: false,
            exploration_rate: 0.0,
            ..RouterPolicy::default()
        },
        ..LlmConfig::default()
    };
    let base = server.base_url();
    let list: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|m| format!("{base}::{m}"))
        .collect();
    config.apply_cli(&list, &[], &[], &|_| None).expect("cli");
    let sink = SpanSink::new(1024);
    let mut spans = sink.subscribe();
    let r = Arc::new(
        Router::from_config(&config, sink, common::route::telemetry(), &|_| None).expect("router"),
    );
    let t = turn(&r).await;
    assert_eq!(t.text(), "One two three.");
    let bodies: Vec<(String, String)> = server
        .requests()
        .iter()
        .map(|r| last_message(&r.body))
        .collect();
    assert_eq!(bodies[1], ("assistant".into(), "One".into()));
    assert_eq!(bodies[2], ("assistant".into(), "One two".into()));
    let legs = legs(&mut spans).await;
    assert!(timed_out(&legs[0].1) && timed_out(&legs[1].1), "{legs:?}");
}

/// The whole voice path (replay of a question, real clock, `--pace
/// instant`): the hosted model speaks its first sentence, stalls mid-way
/// through the second; the local one continues. The committed reply is
/// exactly the sentences spoken — the first model's and the rest — and the
/// continuation race is a `route` event after `turn_latency`.
#[test]
fn the_committed_reply_is_what_was_spoken_across_the_two_models() {
    let hosted = Arc::new(ScriptedModel::new(
        "h",
        "stally",
        Script::tokens(["The first sentence is here. ", "And the sec", "ond"], 5, 1)
            .stall_after(2, Duration::from_secs(60)),
    ));
    let local = Arc::new(ScriptedModel::new(
        "embedded",
        "smol",
        Script::tokens(["ond one ends here."], 5, 1),
    ));
    let timeouts = LegTimeouts {
        stall_ms: 1_000,
        ..LegTimeouts::default()
    };
    let report = common::route::replay_question(
        &[&hosted, &local],
        RouterPolicy {
            probe: false,
            exploration_rate: 0.0,
            ..RouterPolicy::default()
        },
        timeouts,
    );
    let (said, committed) = common::route::said_and_committed(&report);
    assert_eq!(committed, said.join(" "), "committed is what was spoken");
    assert_eq!(
        committed, "The first sentence is here. And the second one ends here.",
        "{said:?}"
    );
    let asked = local.requests();
    assert_eq!(asked.len(), 1);
    let last = asked[0].messages.last().expect("message");
    assert_eq!(last.role, Role::Assistant);
    assert_eq!(last.content, "The first sentence is here. And the sec");
    // The continuation race is noted: in `turn_latency` when the turn was
    // still held (a speculative turn plays once its endpoint is confirmed),
    // else as its own `route` event (`tests/route_turn_events.rs` checks
    // that on a paused clock).
    let notes: Vec<RouteNote> = report
        .events
        .iter()
        .flat_map(|e| match &e.event {
            Event::Route { route, .. } => vec![route.clone()],
            Event::TurnLatency { routes, .. } => routes.clone(),
            _ => Vec::new(),
        })
        .collect();
    let continued: Vec<&RouteNote> = notes
        .iter()
        .filter(|n| n.attempts.first().is_some_and(|a| a.why == Why::Continue))
        .collect();
    assert_eq!(continued.len(), 1, "{notes:?}");
    assert_eq!(continued[0].winner.as_deref(), Some("embedded/smol"));
}
