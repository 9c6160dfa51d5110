//! The example flows on the embedded stack (Whisper, SmolLM2, Piper), driven
//! by synthetic caller recordings (espeak-ng, `assets/speech/book-*.wav` and
//! `clock-*.wav`): a table is booked over the phone with a barge-in in the
//! middle of the read-back (after the bot's greeting), and the booking ends
//! in the session journal with
//! the values the caller said; the clock flow tells the time, does a sum and
//! hangs up.
//!
//! Needs the models (see `embedded_conversation.rs` for skip rules). One
//! test function so the two conversations never share the two cores.

mod common;
use colloquy::agent::stack::VoiceStack;
use colloquy::agent::voice::{VoiceAgent, VoiceOptions};
use colloquy::flows::Flow;
use colloquy::frame::Event;
use colloquy::journal::Journal;
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions, ReplayReport};
use std::path::PathBuf;
use std::sync::Arc;

/// Replays `clips` (each followed by its gap in ms) through `flow`.
fn converse(
    stack: &VoiceStack,
    runtime: &tokio::runtime::Runtime,
    flow: &str,
    lead_ms: usize,
    clips: &[(&str, usize)],
    dir: &std::path::Path,
) -> (ReplayReport, PathBuf) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("flows")
        .join(flow);
    let agent = Arc::new(VoiceAgent::new(
        stack.stt.clone(),
        stack.router.clone(),
        stack.tts.clone(),
        VoiceOptions {
            flow: Some(Arc::new(Flow::load(&path).expect("flow"))),
            ..VoiceOptions::default()
        },
        runtime.handle().clone(),
    ));
    let audio = common::caller_after(lead_ms, clips);
    let input = dir.join(format!("{flow}.wav"));
    common::write_wav16k(&input, &audio);
    let journal = dir.join("journal.sqlite");
    let mut opts = ReplayOptions::new(&input);
    opts.pace = Pace::Fast;
    opts.journal = Some(journal.clone());
    let report = replay(&opts, agent, SessionConfig::default()).expect("replay");
    for r in &report.committed {
        for m in &r.messages {
            println!("  {:?}: {} {:?}", m.role, m.content, m.tool_calls);
        }
    }
    (report, journal)
}

fn said(report: &ReplayReport) -> Vec<String> {
    report
        .committed
        .iter()
        .filter_map(|r| r.messages.last().map(|m| m.content.clone()))
        .collect()
}

#[test]
fn booking_and_clock_flows_work_on_the_embedded_models() {
    let Some((runtime, stack)) = common::stack_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");

    // The caller answers each question after the bot asked it, then cuts
    // into the read-back (it lasts ~6 s; they confirm 4 s after giving
    // their name).
    let (report, journal) = converse(
        &stack,
        &runtime,
        "restaurant.toml",
        // The bot greets first (≈ 4 s); the caller answers after it.
        5000,
        &[
            ("book-hello", 7000),
            ("book-party", 6000),
            ("book-time", 7000),
            ("book-name", 4000),
            ("book-yes", 7000),
        ],
        dir.path(),
    );
    let interruptions = report
        .events
        .iter()
        .filter(|e| matches!(e.event, Event::Interrupted { .. }))
        .count();
    assert!(interruptions >= 1, "no barge-in: {:#?}", report.events);
    let j = Journal::open(&journal).expect("journal");
    let kv = j
        .kv(report.session_id.as_deref().expect("session"))
        .expect("kv");
    println!("stored: {kv:?}");
    assert_eq!(kv.get("party_size").map(String::as_str), Some("4"));
    assert_eq!(kv.get("time").map(String::as_str), Some("7:30"));
    assert_eq!(kv.get("name").map(String::as_str), Some("Smith"));
    let said_lines = said(&report);
    assert_eq!(
        said_lines.first().map(String::as_str),
        Some("Hello, thanks for calling. Would you like to book a table?"),
        "the bot greets first"
    );
    assert_eq!(
        said_lines.last().map(String::as_str),
        Some("Your table is booked. Thank you for calling, goodbye!")
    );

    let (report, _) = converse(
        &stack,
        &runtime,
        "clock.toml",
        500,
        &[
            ("clock-time", 7000),
            ("clock-sum", 6000),
            ("clock-bye", 5000),
        ],
        dir.path(),
    );
    let answers = said(&report);
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(answers[0].starts_with("It is "), "{answers:?}");
    assert_eq!(answers[1], "That makes 84.");
    assert_eq!(answers[2], "Goodbye!");
}
