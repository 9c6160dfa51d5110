//! No network at all (CI runs this inside a new network namespace, where
//! even loopback is down): every stage lists an unreachable hosted model
//! first and `embedded` second, and the embedded models answer the turn —
//! nothing is lost from the committed history, and the journal's model
//! text names the embedded model of each stage. Outside a namespace the
//! address (TEST-NET-1) never answers, which the router handles the same
//! way (the untried embedded candidates are probed at once). Skips without
//! the models (fails in CI with COLLOQUY_REQUIRE_MODELS=1).

mod common;
use colloquy::agent::served::Served;
use colloquy::agent::stack::{StackOptions, StoreLocation};

#[test]
fn with_no_network_the_embedded_models_answer_every_stage() {
    let Some(store) = common::models_or_skip() else {
        return;
    };
    let runtime = common::route::runtime();
    let base = "http://192.0.2.1:9/v1";
    let opts = StackOptions {
        llm: vec![format!("{base}::gpt-x"), "embedded".into()],
        stt: vec![format!("{base}::whisper-1"), "embedded".into()],
        tts: vec![format!("{base}::tts-1"), "embedded".into()],
        telemetry: StoreLocation::Memory,
        llm_threads: 1,
        stt_threads: 2,
        ..StackOptions::default()
    };
    let stack = common::route::stack(&runtime, &opts, &store);
    let report = common::route::replay_fast(&runtime, &stack, "speech/q-france.wav");
    assert_eq!(report.committed.len(), 1, "events: {:#?}", report.events);
    let round = &report.committed[0];
    assert!(
        round.messages[0].content.to_lowercase().contains("capital"),
        "{:?}",
        round.messages
    );
    let reply = round
        .messages
        .last()
        .map(|m| m.content.clone())
        .unwrap_or_default();
    assert!(!reply.trim().is_empty(), "answered");
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
}
