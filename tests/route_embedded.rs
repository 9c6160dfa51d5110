//! Every stage lists a hosted model first and `embedded` second; the hosted
//! service fails everything (HTTP 500). The real embedded stages answer the
//! turn: Whisper's transcript, SmolLM2's reply, Piper's voice — nothing is
//! lost from the committed history, the journal's model field names the
//! embedded model of each stage, and the store written at the end shows the
//! hosted candidates cooling down. Skips without the models (fails in CI
//! with COLLOQUY_REQUIRE_MODELS=1).

mod common;
use colloquy::agent::served::Served;
use colloquy::agent::stack::{StackOptions, StoreLocation};
use colloquy::llm::testkit::{FakeOpenAi, Reply};

#[test]
fn a_failing_hosted_provider_hands_every_stage_to_the_embedded_models() {
    let Some(store) = common::models_or_skip() else {
        return;
    };
    let runtime = common::route::runtime();
    let server = runtime.block_on(async { FakeOpenAi::start().await.expect("server") });
    server.set_default(Reply::status(500));
    let dir = tempfile::tempdir().expect("tempdir");
    let store_path = dir.path().join("telemetry.json");
    let base = server.base_url();
    let opts = StackOptions {
        llm: vec![format!("{base}::gpt-x"), "embedded".into()],
        stt: vec![format!("{base}::whisper-1"), "embedded".into()],
        tts: vec![format!("{base}::tts-1"), "embedded".into()],
        telemetry: StoreLocation::At(store_path.clone()),
        llm_threads: 1,
        stt_threads: 2,
        ..StackOptions::default()
    };
    let stack = common::route::stack(&runtime, &opts, &store);
    let report = common::route::replay_fast(&runtime, &stack, "speech/q-france.wav");
    assert_eq!(report.committed.len(), 1, "events: {:#?}", report.events);
    let round = &report.committed[0];
    let user = &round.messages[0].content;
    assert!(
        user.to_lowercase().contains("capital"),
        "Whisper heard: {user}"
    );
    let reply = round
        .messages
        .last()
        .map(|m| m.content.clone())
        .unwrap_or_default();
    assert!(!reply.trim().is_empty(), "SmolLM2 answered");
    let served = Served::parse(round.model.as_deref().unwrap_or_default());
    println!("served: {served:?}; reply: {reply}");
    assert!(
        served
            .stt
            .as_deref()
            .is_some_and(|m| m.starts_with("embedded/")),
        "{served:?}"
    );
    assert!(
        served
            .llm
            .as_deref()
            .is_some_and(|m| m.starts_with("embedded/")),
        "{served:?}"
    );
    assert!(
        !served.tts.is_empty() && served.tts.iter().all(|m| m.starts_with("embedded/")),
        "{served:?}"
    );
    assert!(server.request_count() >= 3, "each hosted stage was tried");
    stack.save();
    let table = colloquy::llm::telemetry::status_table(&store_path).expect("status");
    println!("{table}");
    for stage in ["stt", "llm", "tts"] {
        assert!(
            table.lines().any(|l| l.starts_with(stage)
                && l.contains("/")
                && (l.contains("cooling down") || l.contains("recovering"))),
            "{stage} hosted candidate cooling down:\n{table}"
        );
    }
}
