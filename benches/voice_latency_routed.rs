//! Voice-to-voice latency with a routed LLM stage, on the voice-latency set
//! (`benches/voice_set/`: real recordings over a noise floor, a fresh
//! session per conversation, `--pace fast` so every stage's real time —
//! the hosted model's network wait included — is charged to the timeline).
//! STT and TTS are the embedded ones (Whisper, Piper); the LLM stage is, per
//! scenario:
//! - `hosted-fast`: an OpenAI-compatible model only (the in-process scripted
//!   server: first token after 150 ms, then a token every 30 ms);
//! - `embedded`: SmolLM2 through llama.cpp only;
//! - `hosted-stalling`: the scripted model sends no first token (10 s), the
//!   embedded model second: the probe or the hedge answers;
//! - `hosted-failing`: the scripted model answers HTTP 500, the embedded one
//!   second: fallback (then cooldown).
//!
//! One stack per scenario (its router learns across the conversations, as
//! a running server would). For each: p50/p95 of voice to voice (the bot's
//! first sound on the audio) and of the first token, from the end of the
//! user's sound, first turns of a session and later turns apart, and which
//! model answered. On a shared machine the numbers are upper bounds.
//!
//! `cargo bench --bench voice_latency_routed` (needs `colloquy models fetch`);
//! `VOICE_LATENCY_ROUTED_SCENARIOS=hosted-fast,embedded` runs some;
//! `VOICE_LATENCY_CONVERSATIONS=N` the first N conversations. Under `cargo
//! test --all-targets` it runs a tiny mode: one conversation with every
//! stage on the scripted server (no models), checking that it is answered.

mod voice_set;

use colloquy::agent::stack::{StackOptions, StoreLocation, TtsEngine, VoiceStack};
use colloquy::frame::Event;
use colloquy::llm::testkit::{FakeOpenAi, Reply};
use colloquy::models::ModelStore;
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions, ReplayReport};
use std::collections::BTreeMap;
use std::time::Duration;
use voice_set::{pct, Built, Turn};

const SCENARIOS: [&str; 4] = [
    "hosted-fast",
    "embedded",
    "hosted-stalling",
    "hosted-failing",
];

/// The scripted model's reply: a hosted model's pace.
fn fast_reply() -> Reply {
    Reply::tokens([
        "The capital",
        " of France",
        " is Paris.",
        " It is",
        " a big",
        " city.",
    ])
    .first_token_after(Duration::from_millis(150))
    .every(Duration::from_millis(30))
}

/// The LLM candidates of `scenario` (the server scripted accordingly).
fn llm_for(scenario: &str, server: &FakeOpenAi) -> Vec<String> {
    let hosted = format!("{}::hosted", server.base_url());
    match scenario {
        "hosted-fast" => {
            server.set_default(fast_reply());
            vec![hosted]
        }
        "hosted-stalling" => {
            server.set_default(fast_reply().first_token_after(Duration::from_secs(10)));
            vec![hosted, "embedded".into()]
        }
        "hosted-failing" => {
            server.set_default(Reply::status(500));
            vec![hosted, "embedded".into()]
        }
        _ => vec!["embedded".into()],
    }
}

/// Which LLM answered each turn (the `turn_latency` route's winner, or the
/// only model).
fn llm_winners(report: &ReplayReport, out: &mut BTreeMap<String, usize>) {
    for e in &report.events {
        if let Event::TurnLatency { routes, .. } = &e.event {
            let winner = routes
                .iter()
                .find(|r| r.stage == "llm")
                .and_then(|r| r.winner.clone())
                .unwrap_or_else(|| "(single model)".into());
            *out.entry(winner).or_default() += 1;
        }
    }
}

fn summary(scenario: &str, label: &str, turns: &[&Turn]) {
    let v2v: Vec<i64> = turns.iter().filter_map(|t| t.sound).collect();
    let token: Vec<i64> = turns.iter().filter_map(|t| t.token).collect();
    let fmt = |v: &[i64]| {
        if v.is_empty() {
            "–".to_string()
        } else {
            format!("p50 {:>5} p95 {:>5}", pct(v, 0.5), pct(v, 0.95))
        }
    };
    println!(
        "summary: {scenario:<16} {label:<6} n={:<2} voice-to-voice {}  first token {}",
        turns.len(),
        fmt(&v2v),
        fmt(&token)
    );
}

/// Replays `conversations` on `stack`, a fresh session each.
fn run(
    scenario: &str,
    stack: &VoiceStack,
    runtime: &tokio::runtime::Runtime,
    conversations: &[(std::path::PathBuf, Built)],
) -> (Vec<Turn>, BTreeMap<String, usize>) {
    let mut all = Vec::new();
    let mut winners = BTreeMap::new();
    for (path, built) in conversations {
        let mut opts = ReplayOptions::new(path);
        opts.pace = Pace::Fast;
        let report = replay(
            &opts,
            stack.agent(runtime.handle().clone()),
            SessionConfig::default(),
        )
        .expect("replay");
        llm_winners(&report, &mut winners);
        let answered = voice_set::turns(&report, built);
        for t in &answered {
            println!(
                "turn: {scenario} {} {:<5} stt {:>5?} token {:>5?} audio {:>5} sound {:>5?}",
                path.file_stem().and_then(|s| s.to_str()).unwrap_or("?"),
                if t.first { "first" } else { "later" },
                t.stt,
                t.token,
                t.audio_event,
                t.sound
            );
        }
        all.extend(answered);
    }
    (all, winners)
}

/// `cargo test` mode: one conversation, every stage on the scripted server.
fn tiny(runtime: &tokio::runtime::Runtime) {
    let server = runtime.block_on(async { FakeOpenAi::start().await.expect("server") });
    server.set_default(fast_reply());
    server.push_transcription([Reply::tokens(["What is the capital of France?"])]);
    server.push_speech((0..8).map(|_| Reply::tokens(["a"; 40])));
    let base = server.base_url();
    let opts = StackOptions {
        llm: vec![format!("{base}::hosted")],
        stt: vec![format!("{base}::whisper-1")],
        tts: vec![format!("{base}::tts-1::alloy")],
        telemetry: StoreLocation::Memory,
        ..StackOptions::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ModelStore::new(dir.path());
    let stack = {
        let _g = runtime.enter();
        VoiceStack::build(&opts, &store).expect("scripted stack")
    };
    let conversations = voice_set::conversations(dir.path(), 1);
    let (turns, _) = run("tiny", &stack, runtime, &conversations);
    assert!(
        turns.iter().any(|t| t.sound.is_some()),
        "the scripted conversation was answered"
    );
    println!(
        "voice_latency_routed: tiny mode ok ({} turns); run with `cargo bench --bench voice_latency_routed`",
        turns.len()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if !std::env::args().any(|a| a == "--bench") {
        tiny(&runtime);
        return;
    }
    let store = ModelStore::from_env();
    let count = std::env::var("VOICE_LATENCY_CONVERSATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(voice_set::CONVERSATIONS.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let conversations = voice_set::conversations(dir.path(), count);
    let chosen =
        std::env::var("VOICE_LATENCY_ROUTED_SCENARIOS").unwrap_or_else(|_| SCENARIOS.join(","));
    let mut summaries = Vec::new();
    for scenario in chosen.split(',').map(str::trim) {
        let server = runtime.block_on(async { FakeOpenAi::start().await.expect("server") });
        let opts = StackOptions {
            llm: llm_for(scenario, &server),
            telemetry: StoreLocation::Memory,
            tts_engine: TtsEngine::Piper,
            llm_threads: 1,
            stt_threads: 2,
            ..StackOptions::default()
        };
        let stack = {
            let _g = runtime.enter();
            match VoiceStack::build(&opts, &store) {
                Ok(s) => s,
                Err(e) => {
                    println!("voice_latency_routed: {e}");
                    return;
                }
            }
        };
        let (all, winners) = run(scenario, &stack, &runtime, &conversations);
        println!(
            "summary: scenario={scenario} conversations={} turns answered={} of {}; LLM answered by {winners:?}; hosted requests {}",
            conversations.len(),
            all.len(),
            conversations.len() * 2,
            server.request_count()
        );
        let first: Vec<&Turn> = all.iter().filter(|t| t.first).collect();
        let later: Vec<&Turn> = all.iter().filter(|t| !t.first).collect();
        voice_set::report("first turns", &first);
        voice_set::report("later turns", &later);
        summaries.push((scenario.to_string(), all));
        drop(stack);
    }
    println!("summary: ---- voice to voice and first token (ms from the end of the user's sound)");
    for (scenario, all) in &summaries {
        let first: Vec<&Turn> = all.iter().filter(|t| t.first).collect();
        let later: Vec<&Turn> = all.iter().filter(|t| !t.first).collect();
        summary(scenario, "first", &first);
        summary(scenario, "later", &later);
    }
}
