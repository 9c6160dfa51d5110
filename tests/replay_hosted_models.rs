//! A replay whose every stage is an OpenAI-compatible service (two chat
//! models, transcription, speech — all in-process fake servers on loopback):
//! the first model keeps failing with HTTP 500 (retries included) before any audio, the router falls
//! back to the second within the same turn, and the event log carries both
//! legs' spans (a `failed` with class `server`, then `started`,
//! `first_token`, `completed`) next to the turn's events.

mod common;
use colloquy::agent::stack::StackOptions;
use colloquy::frame::Event;
use colloquy::llm::testkit::{FakeOpenAi, Reply};
use colloquy::models::ModelStore;

#[test]
fn a_failing_hosted_model_falls_back_within_the_turn_and_spans_reach_the_log() {
    let runtime = common::route::runtime();
    let (one, two) = runtime.block_on(async {
        (
            FakeOpenAi::start().await.expect("server one"),
            FakeOpenAi::start().await.expect("server two"),
        )
    });
    one.push_transcription([Reply::tokens(["What is the capital ", "of France?"])]);
    // More failures than the retry budget: the turn falls back to model two.
    one.push_chat(std::iter::repeat_n(Reply::status(500), 8));
    two.push_chat([Reply::tokens(["Paris", " is the capital", " of France."])]);
    one.push_speech([Reply::tokens(["a"; 40])]);
    let opts = StackOptions {
        llm: vec![
            format!("{}::model-one", one.base_url()),
            format!("{}::model-two", two.base_url()),
        ],
        stt: vec![format!("{}::whisper-1", one.base_url())],
        tts: vec![format!("{}::tts-1::alloy", one.base_url())],
        telemetry: colloquy::agent::stack::StoreLocation::Memory,
        ..StackOptions::default()
    };
    // No embedded model is touched: an empty store would fail if it were.
    let store = ModelStore::new(tempfile::tempdir().expect("tempdir").path());
    let stack = common::route::stack(&runtime, &opts, &store);
    let report = common::route::replay_fast(&runtime, &stack, "speech/q-france.wav");

    assert_eq!(report.committed.len(), 1, "events: {:#?}", report.events);
    let round = &report.committed[0].messages;
    assert_eq!(round[0].content, "What is the capital of France?");
    assert_eq!(
        round.last().map(|m| m.content.as_str()),
        Some("Paris is the capital of France.")
    );
    // The journal keeps which model served each stage (`provider/model`).
    let served = colloquy::agent::served::Served::parse(
        report.committed[0].model.as_deref().unwrap_or_default(),
    );
    assert!(
        served
            .llm
            .as_deref()
            .is_some_and(|m| m.ends_with("/model-two")),
        "{served:?}"
    );
    assert!(
        served
            .stt
            .as_deref()
            .is_some_and(|m| m.ends_with("/whisper-1")),
        "{served:?}"
    );
    assert!(
        served.tts.iter().all(|m| m.ends_with("/tts-1")) && !served.tts.is_empty(),
        "{served:?}"
    );

    let spans: Vec<(String, String)> = report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Span { span, .. } => Some((
                span["model"].as_str().unwrap_or_default().to_string(),
                span["type"].as_str().unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .collect();
    println!("spans in the event log: {spans:?}");
    let of = |m: &str| {
        spans
            .iter()
            .filter(|(model, _)| model == m)
            .map(|(_, k)| k.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(of("model-one").first(), Some(&"started"));
    assert_eq!(of("model-one").last(), Some(&"failed"));
    assert_eq!(of("model-two").first(), Some(&"started"));
    assert!(of("model-two").contains(&"first_token"));
    assert_eq!(of("model-two").last(), Some(&"completed"));
}
