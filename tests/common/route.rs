//! Routing test set-ups shared by `tests/route_*` and `tests/reply_guard.rs`:
//! a fixed transcript, a tone voice, a fresh telemetry store, a router over
//! scripted models, a voice agent over it, and a replay of one question
//! through the whole voice path (`--pace instant`).

use async_trait::async_trait;
use colloquy::agent::voice::{VoiceAgent, VoiceOptions};
use colloquy::agent::Agent;
use colloquy::llm::leg::LegModel;
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::telemetry::StoreClock;
use colloquy::llm::testkit::ScriptedModel;
use colloquy::llm::{
    ChatModel, LegRunner, LegTimeouts, Router, RouterPolicy, SpanSink, Telemetry, TelemetryStore,
    WindowConfig,
};
use colloquy::session::SessionConfig;
use colloquy::stt::{SpeechToText, SttError, Transcript};
use colloquy::transport::file::{replay, Pace, ReplayOptions, ReplayReport};
use colloquy::tts::{Speech, TextToSpeech, TtsError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A speech-to-text that always hears `.0`.
pub struct FixedStt(pub &'static str);

#[async_trait]
impl SpeechToText for FixedStt {
    fn name(&self) -> &str {
        "fixed"
    }
    async fn transcribe(&self, _: &[i16], _: &CancellationToken) -> Result<Transcript, SttError> {
        Ok(Transcript {
            text: self.0.into(),
        })
    }
}

/// A tone voice: `.0` samples (16 kHz) of a sine per character.
pub struct ToneTts(pub usize);

#[async_trait]
impl TextToSpeech for ToneTts {
    fn name(&self) -> &str {
        "tone"
    }
    async fn synthesize(&self, text: &str, _: &CancellationToken) -> Result<Speech, TtsError> {
        let n = text.chars().count() * self.0;
        Ok(Speech {
            samples: (0..n)
                .map(|i| ((i as f32 * 0.0785).sin() * 3000.0) as i16)
                .collect(),
            sample_rate: 16_000,
        })
    }
}

/// An empty telemetry store on a fixed clock.
pub fn telemetry() -> Telemetry {
    Telemetry::new(
        TelemetryStore::new(WindowConfig::default()),
        StoreClock::at(1_000),
    )
}

/// `telemetry` seeded with three served requests per
/// `(key, first result ms, whole request ms)`.
pub fn seeded(seeds: &[(&str, u64, u64)]) -> Telemetry {
    let telemetry = telemetry();
    for &(key, first, total) in seeds {
        for _ in 0..3 {
            let ms = Duration::from_millis;
            telemetry.record_served(key, Some(ms(first)), Some(ms(total)), None);
        }
    }
    telemetry
}

/// A router over scripted `models` (in preference order).
pub fn scripted_router(
    models: &[&Arc<ScriptedModel>],
    telemetry: Telemetry,
    policy: RouterPolicy,
    timeouts: LegTimeouts,
) -> Arc<Router> {
    let runner = LegRunner::new(
        SpanSink::new(4096),
        telemetry,
        RetryPolicy::default(),
        timeouts,
    );
    let candidates = models
        .iter()
        .map(|&m| LegModel::new(m.clone() as Arc<dyn ChatModel>, None))
        .collect();
    Arc::new(Router::new(candidates, runner, policy))
}

/// A voice agent over `router`, with [`FixedStt`] and [`ToneTts`].
pub fn voice_agent(
    stt_text: &'static str,
    samples_per_char: usize,
    router: Arc<Router>,
    options: VoiceOptions,
    handle: tokio::runtime::Handle,
) -> Arc<dyn Agent> {
    Arc::new(VoiceAgent::new(
        Arc::new(FixedStt(stt_text)),
        router,
        Arc::new(ToneTts(samples_per_char)),
        options,
        handle,
    ))
}

/// Replays one question (`speech/q-france.wav`, 40 s of silence after)
/// with `make(runtime handle)`'s agent, at `--pace instant`.
pub fn replay_with(make: impl FnOnce(tokio::runtime::Handle) -> Arc<dyn Agent>) -> ReplayReport {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let agent = make(runtime.handle().clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("q.wav");
    let (audio, _) = super::concat(&[
        super::silence_ms(500, 1),
        super::load16k("speech/q-france.wav"),
        super::silence_ms(40_000, 2),
    ]);
    super::write_wav16k(&input, &audio);
    let mut opts = ReplayOptions::new(&input);
    opts.pace = Pace::Instant;
    replay(&opts, agent, SessionConfig::default()).expect("replay")
}

/// [`replay_with`] a voice agent routing over scripted `models`.
pub fn replay_question(
    models: &[&Arc<ScriptedModel>],
    policy: RouterPolicy,
    timeouts: LegTimeouts,
) -> ReplayReport {
    replay_with(|handle| {
        let router = scripted_router(models, telemetry(), policy, timeouts);
        voice_agent(
            "Front, center.",
            960,
            router,
            VoiceOptions::default(),
            handle,
        )
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The `colloquy` binary with its state (telemetry store, journal) under
/// `dir`, a test API key, and no candidate list from the environment.
pub fn colloquy_cmd(dir: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_colloquy"));
    c.env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("OPENAI_API_KEY", "test-key")
        .env("COLLOQUY_JOURNAL", dir.join("journal.db"))
        .env_remove("COLLOQUY_LLM")
        .env_remove("COLLOQUY_STT")
        .env_remove("COLLOQUY_TTS")
        .env_remove("COLLOQUY_CONFIG")
        .stdin(std::process::Stdio::null());
    c
}

/// Two hosted candidates per stage on an unused loopback port (never asked
/// when nobody speaks), and the telemetry keys they are stored under.
pub const UNUSED_BASE: &str = "http://127.0.0.1:9/v1";
pub const UNUSED_KEYS: [&str; 6] = [
    "stt:127.0.0.1:9/whisper-a",
    "stt:127.0.0.1:9/whisper-b",
    "127.0.0.1:9/chat-a",
    "127.0.0.1:9/chat-b",
    "tts:127.0.0.1:9/tts-a",
    "tts:127.0.0.1:9/tts-b",
];

/// Adds the candidates of [`UNUSED_KEYS`] to a `serve` or `run` command.
pub fn with_unused_candidates(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for (flag, model) in [
        ("--llm", "chat-a"),
        ("--llm", "chat-b"),
        ("--stt", "whisper-a"),
        ("--stt", "whisper-b"),
        ("--tts", "tts-a"),
        ("--tts", "tts-b"),
    ] {
        cmd.args([flag, &format!("{UNUSED_BASE}::{model}")]);
    }
    cmd
}

/// The telemetry store a command with state under `dir` saves.
pub fn store_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("state/colloquy/llm-telemetry.json")
}

/// The store saved under `dir` lists every key of [`UNUSED_KEYS`], and
/// `colloquy status` prints each as `untried`. `log`: what the saving
/// process printed, for failure messages.
pub fn assert_saved_and_untried(dir: &std::path::Path, log: &str) {
    let store = store_path(dir);
    let saved = std::fs::read_to_string(&store)
        .unwrap_or_else(|e| panic!("no store at {}: {e}: {log}", store.display()));
    for k in UNUSED_KEYS {
        assert!(saved.contains(k), "{k} not in the saved store: {saved}");
    }
    let out = colloquy_cmd(dir)
        .arg("status")
        .output()
        .expect("colloquy status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    for k in UNUSED_KEYS {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(k))
            .unwrap_or_else(|| panic!("no row for {k}: {text}"));
        assert!(row.ends_with("untried"), "{row}");
    }
}

/// The runtime a stack test runs its servers and agent on./// The runtime a stack test runs its servers and agent on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The voice stack of `opts` (on `runtime`).
pub fn stack(
    runtime: &tokio::runtime::Runtime,
    opts: &colloquy::agent::stack::StackOptions,
    store: &colloquy::models::ModelStore,
) -> colloquy::agent::stack::VoiceStack {
    let _g = runtime.enter();
    colloquy::agent::stack::VoiceStack::build(opts, store).expect("stack")
}

/// Replays the asset `rel` at `--pace fast` through `stack`'s agent.
pub fn replay_fast(
    runtime: &tokio::runtime::Runtime,
    stack: &colloquy::agent::stack::VoiceStack,
    rel: &str,
) -> ReplayReport {
    let mut opts = ReplayOptions::new(super::asset(rel));
    opts.pace = Pace::Fast;
    replay(
        &opts,
        stack.agent(runtime.handle().clone()),
        SessionConfig::default(),
    )
    .expect("replay")
}

/// Every span event received so far, grouped per request: (model, kinds).
pub fn legs(
    rx: &mut tokio::sync::broadcast::Receiver<colloquy::llm::span::SpanEvent>,
) -> Vec<(String, Vec<colloquy::llm::span::SpanKind>)> {
    let mut out: Vec<(u64, String, Vec<colloquy::llm::span::SpanKind>)> = Vec::new();
    while let Ok(e) = rx.try_recv() {
        match out.iter_mut().find(|(id, _, _)| *id == e.request_id) {
            Some((_, _, kinds)) => kinds.push(e.kind),
            None => out.push((e.request_id, e.model.clone(), vec![e.kind])),
        }
    }
    out.into_iter().map(|(_, m, k)| (m, k)).collect()
}

/// What the bot said (its chunks, in order) and the one committed answer
/// (not interrupted).
pub fn said_and_committed(report: &ReplayReport) -> (Vec<String>, String) {
    let said = report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            colloquy::frame::Event::BotText { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(report.committed.len(), 1, "events: {:?}", report.events);
    let answer = report.committed[0].messages.last().expect("answer");
    assert!(!answer.interrupted);
    (said, answer.content.clone())
}
