//! The example flows driven end to end through replay — VAD, turn-taking,
//! the coordinator, the voice agent's flow logic, built-in tools and the
//! journal — with scripted stages so every run is the same: real recorded
//! speech as the caller's audio, an STT that returns the scripted words of
//! each utterance in order, a TTS that speaks 60 ms of tone a character, and
//! a scripted model for the turns no function answers. (The same flows on
//! the embedded models: `tests/flows_embedded.rs`.)
//!
//! What is checked: the booking is stored in the session journal with the
//! values the caller gave, across a barge-in in the middle of the read-back;
//! a correction made by barging in stores the corrected values and never the
//! first ones; the clock flow's tools answer and the call ends (the replay
//! stops hearing the caller once the goodbye played); open chat goes to the
//! model.

mod common;
use async_trait::async_trait;
use colloquy::agent::voice::{VoiceAgent, VoiceOptions};
use colloquy::agent::Agent;
use colloquy::flows::{Flow, FlowState};
use colloquy::frame::Event;
use colloquy::journal::Journal;
use colloquy::llm::leg::LegModel;
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::telemetry::StoreClock;
use colloquy::llm::testkit::{Script, ScriptedModel};
use colloquy::llm::{
    ChatModel, LegRunner, LegTimeouts, Router, RouterPolicy, SpanSink, Telemetry, TelemetryStore,
    WindowConfig,
};
use colloquy::stt::{SpeechToText, SttError, Transcript};
use colloquy::transport::file::{replay, Pace, ReplayOptions, ReplayReport};
use colloquy::tts::{Speech, TextToSpeech, TtsError};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Returns the scripted words of each utterance, in order.
struct ScriptedStt(Mutex<VecDeque<&'static str>>);

#[async_trait]
impl SpeechToText for ScriptedStt {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn transcribe(
        &self,
        _audio: &[i16],
        _cancel: &CancellationToken,
    ) -> Result<Transcript, SttError> {
        let next = self.0.lock().expect("stt script").pop_front();
        Ok(Transcript {
            text: next.unwrap_or("").to_string(),
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
    async fn synthesize(
        &self,
        text: &str,
        _cancel: &CancellationToken,
    ) -> Result<Speech, TtsError> {
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

fn flow(name: &str) -> Arc<Flow> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("flows")
        .join(name);
    Arc::new(Flow::load(&path).expect("example flow loads"))
}

struct Run {
    report: ReplayReport,
    journal: PathBuf,
    _dir: tempfile::TempDir,
    model: Arc<ScriptedModel>,
}

/// Replays `clips` (speech assets) separated by the given gaps (ms after
/// each clip) through `flow`, the STT answering `words` in order. The caller
/// starts after `lead_ms` (the restaurant greets first).
fn run(flow: Arc<Flow>, lead_ms: usize, clips: &[(&str, usize)], words: &[&'static str]) -> Run {
    run_resuming(flow, lead_ms, clips, words, None)
}

/// [`run`], continuing the journal session of `resume` (its journal file).
fn run_resuming(
    flow: Arc<Flow>,
    lead_ms: usize,
    clips: &[(&str, usize)],
    words: &[&'static str],
    resume: Option<&Run>,
) -> Run {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        "chat",
        Script::tokens(["I am ", "not sure."], 5, 1),
    ));
    let telemetry = Telemetry::new(
        TelemetryStore::new(WindowConfig::default()),
        StoreClock::at(1_000),
    );
    let runner = LegRunner::new(
        SpanSink::new(1024),
        telemetry,
        RetryPolicy::default(),
        LegTimeouts::default(),
    );
    let router = Arc::new(Router::new(
        vec![LegModel::new(model.clone() as Arc<dyn ChatModel>, None)],
        runner,
        RouterPolicy::default(),
    ));
    let agent: Arc<dyn Agent> = Arc::new(VoiceAgent::new(
        Arc::new(ScriptedStt(Mutex::new(words.iter().copied().collect()))),
        router,
        Arc::new(ToneTts),
        VoiceOptions {
            flow: Some(flow),
            ..VoiceOptions::default()
        },
        runtime.handle().clone(),
    ));
    let audio = common::caller_after(lead_ms, clips);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("caller.wav");
    common::write_wav16k(&input, &audio);
    let journal = match resume {
        Some(earlier) => earlier.journal.clone(),
        None => dir.path().join("journal.sqlite"),
    };
    let mut opts = ReplayOptions::new(&input);
    opts.pace = Pace::Instant;
    opts.journal = Some(journal.clone());
    opts.resume = resume.and_then(|r| r.report.session_id.clone());
    // The scripted STT answers in order: no speculative turns.
    let config = common::without_speculation();
    let report = replay(&opts, agent, config).expect("replay");
    drop(runtime);
    Run {
        report,
        journal,
        _dir: dir,
        model,
    }
}

fn kv(run: &Run) -> Vec<(String, String)> {
    let j = Journal::open(&run.journal).expect("journal");
    let id = run.report.session_id.as_deref().expect("journal session");
    j.kv(id).expect("kv").into_iter().collect()
}

fn tool_calls(report: &ReplayReport) -> Vec<String> {
    report
        .committed
        .iter()
        .flat_map(|r| &r.messages)
        .flat_map(|m| &m.tool_calls)
        .map(|c| c.name.clone())
        .collect()
}

fn interruptions(report: &ReplayReport) -> Vec<String> {
    report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Interrupted { spoken, .. } => Some(spoken.clone()),
            _ => None,
        })
        .collect()
}

fn pairs(values: &[(&str, &str)]) -> Vec<(String, String)> {
    values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The restaurant's greeting (58 characters, 3.5 s of tone) plays out
/// before the caller speaks.
const GREETING_ROOM: usize = 4500;

/// Clips long enough for the VAD, short enough to keep the test quick.
const HELLO: &str = "cards-002";
const ANSWER: &str = "cards-004";

#[test]
fn restaurant_booking_is_stored_with_the_callers_values_across_a_barge_in() {
    // The read-back is ~90 characters (5.4 s of tone): the caller confirms
    // 2 s into it.
    let run = run(
        flow("restaurant.toml"),
        GREETING_ROOM,
        &[
            (HELLO, 6000),
            (ANSWER, 4000),
            (ANSWER, 4000),
            (ANSWER, 2000),
            (ANSWER, 8000),
        ],
        &[
            "Hi, I'd like to book a table.",
            "We are four people.",
            "At 7:30 p.m.",
            "The name is Smith.",
            "Yes, that's right.",
        ],
    );
    let r = &run.report;
    assert_eq!(
        tool_calls(r),
        [
            "start_booking",
            "set_party_size",
            "set_time",
            "set_name",
            "confirm_booking"
        ],
        "events: {:#?}",
        r.events
    );
    // The barge-in cut the read-back; what was heard of it is committed,
    // marked interrupted, and the booking still went through.
    let cut = interruptions(r);
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert!(cut[0].starts_with("So that is a table for 4"), "{cut:?}");
    // The bot spoke first: the greeting is the first round, with no words
    // from the caller.
    assert_eq!(r.committed[0].messages[0].content, "");
    assert_eq!(
        r.committed[0].messages.last().map(|m| m.content.as_str()),
        Some("Hello, thanks for calling. Would you like to book a table?")
    );
    assert!(!r.committed[0].interrupted);
    let read_back = &r.committed[4];
    assert!(read_back.interrupted);
    assert_eq!(
        kv(&run),
        pairs(&[("name", "Smith"), ("party_size", "4"), ("time", "7:30 pm")])
    );
    let last = r.committed.last().expect("rounds");
    assert_eq!(
        last.messages.last().map(|m| m.content.as_str()),
        Some("Your table is booked. Thank you for calling, goodbye!")
    );
    // Each function call is an event of its turn, with its result.
    let tools: Vec<(String, String)> = r
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Tool { name, result, .. } => Some((name.clone(), result.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(tools.len(), 5, "{tools:?}");
    assert_eq!(tools[4].0, "confirm_booking");
    assert!(tools[4].1.starts_with(r#"{"stored":"#), "{tools:?}");
    // Every spoken line came from the flow: the model was never asked.
    assert_eq!(run.model.calls(), 0);
    let history: Vec<_> = r
        .committed
        .iter()
        .flat_map(|c| c.messages.clone())
        .collect();
    let state = FlowState::from_history(&flow("restaurant.toml"), &history);
    assert_eq!(state.node, "booked");
}

#[test]
fn a_correction_by_barge_in_stores_the_corrected_booking_only() {
    let run = run(
        flow("restaurant.toml"),
        GREETING_ROOM,
        &[
            (HELLO, 6000),
            (ANSWER, 4000),
            (ANSWER, 4000),
            (ANSWER, 2000),
            // "No, that's wrong" over the read-back: back to the party size.
            (ANSWER, 5000),
            (ANSWER, 4000),
            (ANSWER, 4000),
            (ANSWER, 7000),
            (ANSWER, 8000),
        ],
        &[
            "I want to make a reservation.",
            "Two people.",
            "Eight o'clock.",
            "Under Jones.",
            "No, that's wrong.",
            "Six people.",
            "At 8 pm.",
            "It's Jones.",
            "Correct.",
        ],
    );
    let r = &run.report;
    assert_eq!(interruptions(r).len(), 1, "events: {:#?}", r.events);
    assert_eq!(
        tool_calls(r),
        [
            "start_booking",
            "set_party_size",
            "set_time",
            "set_name",
            "change_booking",
            "set_party_size",
            "set_time",
            "set_name",
            "confirm_booking"
        ]
    );
    assert_eq!(
        kv(&run),
        pairs(&[("name", "Jones"), ("party_size", "6"), ("time", "8:00 pm")])
    );
}

#[test]
fn clock_tools_answer_and_the_call_ends() {
    let run = run(
        flow("clock.toml"),
        500,
        &[
            (ANSWER, 5000),
            (ANSWER, 5000),
            (ANSWER, 5000),
            (ANSWER, 5000),
            (ANSWER, 5000),
        ],
        &[
            "What time is it?",
            "What is 12 times 7?",
            "Tell me a joke.",
            "OK, goodbye.",
            "Hello? Are you there?",
        ],
    );
    let r = &run.report;
    // The fifth utterance is never heard: the flow hung up after "Goodbye!".
    assert_eq!(r.committed.len(), 4, "events: {:#?}", r.events);
    let answer = |i: usize| {
        r.committed[i]
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default()
    };
    let time = regex::Regex::new(r"^It is \d{1,2}:\d\d [AP]M on \w+day, \w+ \d{1,2}, \d{4}\.$")
        .expect("regex");
    assert!(time.is_match(&answer(0)), "{}", answer(0));
    assert_eq!(answer(1), "That makes 84.");
    assert_eq!(answer(2), "I am not sure.");
    assert_eq!(run.model.calls(), 1, "only the joke went to the model");
    assert_eq!(answer(3), "Goodbye!");
    assert_eq!(tool_calls(r), ["current_time", "calculate", "finish"]);
    // One call_ended, right after the goodbye round was committed, and the
    // replay stopped there: the goodbye played out, the rest was not heard.
    let kinds: Vec<&str> = r.events.iter().map(|e| e.event.kind()).collect();
    let ended: Vec<usize> = (0..kinds.len())
        .filter(|&i| kinds[i] == "call_ended")
        .collect();
    assert_eq!(ended.len(), 1, "{kinds:?}");
    assert_eq!(kinds[ended[0] - 1], "committed");
    assert!(
        r.timeline_ms + 4000 < r.input_ms,
        "the replay went on after the hang-up ({} of {} ms)",
        r.timeline_ms,
        r.input_ms
    );
    assert!(kv(&run).is_empty());
}

#[test]
fn the_assistant_flow_is_open_chat_with_the_model() {
    let run = run(
        flow("assistant.toml"),
        500,
        &[(ANSWER, 5000), (ANSWER, 5000)],
        &["Hello there.", "How are you?"],
    );
    let r = &run.report;
    assert_eq!(r.committed.len(), 2, "events: {:#?}", r.events);
    assert!(tool_calls(r).is_empty());
    assert_eq!(run.model.calls(), 2);
    for c in &r.committed {
        assert_eq!(
            c.messages.last().map(|m| m.content.as_str()),
            Some("I am not sure.")
        );
    }
}

#[test]
fn a_caller_who_cuts_into_the_greeting_is_answered_and_a_resumed_call_is_not_greeted_again() {
    // The caller starts 0.5 s into the 3.5 s greeting.
    let first = run(
        flow("restaurant.toml"),
        500,
        &[(HELLO, 6000)],
        &["I'd like to book a table."],
    );
    let r = &first.report;
    assert_eq!(interruptions(r).len(), 1, "events: {:#?}", r.events);
    assert_eq!(r.committed.len(), 2, "events: {:#?}", r.events);
    // What was heard of the greeting is committed, cut.
    let greeting = &r.committed[0];
    assert!(greeting.interrupted);
    assert_eq!(greeting.messages[0].content, "");
    assert!("Hello, thanks for calling.".starts_with(
        greeting
            .messages
            .last()
            .map_or("?", |m| m.content.trim_end_matches(['.', ',']))
    ));
    assert_eq!(tool_calls(r), ["start_booking"]);

    // Resuming the session (same journal): no second greeting; the flow
    // goes on in the party node.
    let again = run_resuming(
        flow("restaurant.toml"),
        500,
        &[(ANSWER, 5000)],
        &["Two people."],
        Some(&first),
    );
    let r = &again.report;
    assert_eq!(r.committed.len(), 1, "events: {:#?}", r.events);
    assert_eq!(tool_calls(r), ["set_party_size"]);
    assert_eq!(
        r.committed[0].messages.last().map(|m| m.content.as_str()),
        Some("And for what time?")
    );
    assert_eq!(again.report.session_id, first.report.session_id);
}
