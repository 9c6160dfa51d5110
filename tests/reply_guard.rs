//! Replies that stop (issue 14). A scripted model streams a degenerate
//! reply — a phrase looping without punctuation ("The front of the front
//! of …", as SmolLM2 answered "Front, center"), a sentence said over and
//! over, or simply too many sentences — through the whole voice path
//! (replay, VAD, coordinator, voice agent, reply guard, a tone TTS). Each
//! reply ends at the loop or at the three-sentence cap, at a sentence
//! boundary, the model's stream is dropped (its decoding stops), and the
//! committed answer is exactly what was spoken.

mod common;
use async_trait::async_trait;
use colloquy::agent::voice::{VoiceAgent, VoiceOptions};
use colloquy::agent::Agent;
use colloquy::frame::Event;
use colloquy::llm::leg::LegModel;
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::telemetry::StoreClock;
use colloquy::llm::testkit::{Script, ScriptedModel};
use colloquy::llm::{
    ChatModel, LegRunner, LegTimeouts, Router, RouterPolicy, SpanSink, Telemetry, TelemetryStore,
    WindowConfig,
};
use colloquy::session::SessionConfig;
use colloquy::stt::{SpeechToText, SttError, Transcript};
use colloquy::transport::file::{replay, Pace, ReplayOptions, ReplayReport};
use colloquy::tts::{Speech, TextToSpeech, TtsError};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct FixedStt;

#[async_trait]
impl SpeechToText for FixedStt {
    fn name(&self) -> &str {
        "fixed"
    }
    async fn transcribe(&self, _: &[i16], _: &CancellationToken) -> Result<Transcript, SttError> {
        Ok(Transcript {
            text: "Front, center.".into(),
        })
    }
}

/// 60 ms of a quiet tone per character.
struct ToneTts;

#[async_trait]
impl TextToSpeech for ToneTts {
    fn name(&self) -> &str {
        "tone"
    }
    async fn synthesize(&self, text: &str, _: &CancellationToken) -> Result<Speech, TtsError> {
        let n = text.chars().count() * 960;
        let samples = (0..n)
            .map(|i| ((i as f32 * 0.0785).sin() * 3000.0) as i16)
            .collect();
        Ok(Speech {
            samples,
            sample_rate: 16_000,
        })
    }
}

/// One spoken question answered by `tokens`; returns the report and the model.
fn answer(tokens: Vec<String>) -> (ReplayReport, Arc<ScriptedModel>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        "looping",
        Script::tokens(tokens, 5, 1),
    ));
    let runner = LegRunner::new(
        SpanSink::new(1024),
        Telemetry::new(
            TelemetryStore::new(WindowConfig::default()),
            StoreClock::at(1_000),
        ),
        RetryPolicy::default(),
        LegTimeouts::default(),
    );
    let router = Arc::new(Router::new(
        vec![LegModel::new(model.clone() as Arc<dyn ChatModel>, None)],
        runner,
        RouterPolicy::default(),
    ));
    // Let the script, not the request's token limit, decide when it ends.
    let options = VoiceOptions {
        max_tokens: 10_000,
        ..VoiceOptions::default()
    };
    let agent: Arc<dyn Agent> = Arc::new(VoiceAgent::new(
        Arc::new(FixedStt),
        router,
        Arc::new(ToneTts),
        options,
        runtime.handle().clone(),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("q.wav");
    let (audio, _) = common::concat(&[
        common::silence_ms(500, 1),
        common::load16k("speech/q-france.wav"),
        common::silence_ms(40_000, 2),
    ]);
    common::write_wav16k(&input, &audio);
    let mut opts = ReplayOptions::new(&input);
    opts.pace = Pace::Instant;
    let report = replay(&opts, agent, SessionConfig::default()).expect("replay");
    (report, model)
}

fn repeat(text: &str, times: usize) -> Vec<String> {
    let words: Vec<String> = text.split_inclusive(' ').map(String::from).collect();
    (0..times).flat_map(|_| words.clone()).collect()
}

/// What the bot said (its chunks, in order) and what the turn committed.
fn said_and_committed(report: &ReplayReport) -> (Vec<String>, String) {
    let said = report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::BotText { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(report.committed.len(), 1, "events: {:?}", report.events);
    let answer = report.committed[0].messages.last().expect("answer");
    assert!(!answer.interrupted);
    (said, answer.content.clone())
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
    assert_eq!(said, vec!["The front of."]);
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
        said,
        vec![
            "One thing is true.",
            "Another thing follows.",
            "A third one comes."
        ]
    );
    check_stopped(&report, &model, &said, &committed);
}
