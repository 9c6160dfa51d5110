//! Replies that stop (issue 14). A scripted model streams a degenerate
//! reply — a phrase looping without punctuation ("The front of the front
//! of …", as SmolLM2 answered "Front, center"), a sentence said over and
//! over, or simply too many sentences — through the whole voice path
//! (replay, VAD, coordinator, voice agent, reply guard, a tone TTS). Each
//! reply ends at the loop or at the three-sentence cap, at a sentence
//! boundary, the model's stream is dropped (its decoding stops), and the
//! committed answer is exactly what was spoken.

mod common;
use colloquy::agent::voice::VoiceOptions;
use colloquy::frame::Event;
use colloquy::llm::testkit::{Script, ScriptedModel};
use colloquy::llm::{LegTimeouts, RouterPolicy};
use colloquy::transport::file::ReplayReport;
use common::route::{self, said_and_committed};
use std::sync::Arc;

fn answer(tokens: Vec<String>) -> (ReplayReport, Arc<ScriptedModel>) {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        "looping",
        Script::tokens(tokens, 5, 1),
    ));
    let router = route::scripted_router(
        &[&model],
        route::telemetry(),
        RouterPolicy::default(),
        LegTimeouts::default(),
    );
    let options = VoiceOptions {
        max_tokens: 10_000,
        ..VoiceOptions::default()
    };
    let report = route::replay_with(|handle| {
        route::voice_agent("Front, center.", 960, router, options, handle)
    });
    (report, model)
}

fn repeat(text: &str, times: usize) -> Vec<String> {
    let words: Vec<String> = text.split_inclusive(' ').map(String::from).collect();
    (0..times).flat_map(|_| words.clone()).collect()
}

fn check_stopped(report: &ReplayReport, model: &ScriptedModel, said: &[String], committed: &str) {
    assert_eq!(
        committed,
        said.join(" "),
        "committed text is what was spoken"
    );
    assert!(
        committed.trim_end().ends_with(['.', '!', '?']),
        "ends at a sentence boundary: {committed:?}"
    );
    assert_eq!(model.dropped_early(), 1, "the model's stream was stopped");
    let played: u64 = report
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::BotStartedSpeaking { .. } | Event::BotStoppedSpeaking { .. } => Some(e.t_ms),
            _ => None,
        })
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .sum();
    assert!(played < 10_000, "spoke for {played} ms");
}

#[test]
fn a_phrase_loop_without_punctuation_ends_after_its_first_occurrence() {
    let mut tokens = repeat("The front of ", 1);
    tokens.extend(repeat("the front of ", 200));
    let (report, model) = answer(tokens);
    let (said, committed) = said_and_committed(&report);
    println!("said: {said:?}");
    // (Chunks as spoken: the eager first chunk splits the sentence.)
    assert_eq!(said.join(" "), "The front of.");
    check_stopped(&report, &model, &said, &committed);
}

#[test]
fn a_looping_sentence_is_said_once() {
    let mut tokens = repeat("Sure. ", 1);
    tokens.extend(repeat("I love the sea and the sun. ", 60));
    let (report, model) = answer(tokens);
    let (said, committed) = said_and_committed(&report);
    println!("said: {said:?}");
    assert_eq!(said, vec!["Sure.", "I love the sea and the sun."]);
    check_stopped(&report, &model, &said, &committed);
}

#[test]
fn a_long_reply_ends_at_the_three_sentence_cap() {
    let tokens = repeat(
        "One thing is true. Another thing follows. A third one comes. Then a fourth. And a fifth. ",
        1,
    );
    let (report, model) = answer(tokens);
    let (said, committed) = said_and_committed(&report);
    println!("said: {said:?}");
    assert_eq!(
        said.join(" "),
        "One thing is true. Another thing follows. A third one comes."
    );
    check_stopped(&report, &model, &said, &committed);
}
