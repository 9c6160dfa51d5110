//! Voice-to-voice latency on the embedded stack, stage by stage, as a new
//! user meets it: short conversations of real recordings (LibriVox and CMU
//! card names from Debian `pocketsphinx-testdata`, as bundled in
//! `assets/speech/`) and synthetic questions (espeak-ng), each conversation
//! replayed in a **fresh session** at `--pace fast` (every stage's real
//! compute time is charged to the timeline), with a noise floor under and
//! between the utterances (≈ −50 dBFS white noise, never digital silence).
//!
//! For every answered turn it measures, from the end of the user's sound
//! (the last 10 ms of the clean clip above −30 dB of its peak):
//! - **endpoint**: the turn detector's `speech_stopped` (endpointing silence);
//! - **STT**: the final transcript (overlaps the endpoint with speculative turns);
//! - **LLM first token**, after the transcript;
//! - **TTS first chunk**: the first reply audio (`turn_latency.first_audio_ms`),
//!   after the first token (the first clause's tokens + its synthesis);
//! - **transport**: from that event to the first bot sound on the timeline's
//!   bot channel (10 ms RMS above −36 dBFS): the voice's own leading silence;
//! - **voice to voice**: the bot's first sound, measured on the audio.
//!
//! First turns of a session and later turns are reported separately, for
//! Piper and espeak-ng. The numbers are p50/p95 over the turns; on a shared
//! machine they are upper bounds (say so beside them).
//!
//! `cargo bench --bench voice_latency` (needs `colloquy models fetch`).
//! `VOICE_LATENCY_VOICES=piper` (or `espeak`) runs one voice;
//! `VOICE_LATENCY_CONVERSATIONS=N` the first N conversations;
//! `VOICE_LATENCY_TURN=smart|silence` the end-of-turn mode (default: the
//! session's default);
//! `VOICE_LATENCY_PIPER_CHUNKS=1` prints only Piper's cost per chunk length
//! (`VOICE_LATENCY_PIPER_THREADS=N`: with N intra-op threads, default 1);
//! `VOICE_LATENCY_KEEP=DIR` writes each conversation's input WAV and its
//! event log (`VOICE-conversation-N.jsonl`) to DIR, to see where a slow turn
//! spent its time.
//! Under `cargo test --all-targets` it only checks that it starts.

use colloquy::agent::stack::{StackOptions, TtsEngine, VoiceStack};
use colloquy::frame::Event;
use colloquy::models::ModelStore;
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions, ReplayReport};
use std::path::Path;

mod voice_set;
use voice_set::*;

/// Piper's cost per chunk against the chunk's length (what the eager first
/// clause trades: a shorter first chunk is ready sooner, but every chunk
/// pays Piper's fixed cost per model run). `VOICE_LATENCY_PIPER_CHUNKS=1`.
#[cfg(feature = "embedded")]
fn piper_chunk_costs(store: &ModelStore) {
    use colloquy::models::ModelId;
    let (Ok(onnx), Ok(lib)) = (
        store.require(ModelId::PiperJoe),
        store.require(ModelId::OnnxRuntime),
    ) else {
        println!("voice_latency: no Piper voice");
        return;
    };
    let threads = std::env::var("VOICE_LATENCY_PIPER_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let piper = colloquy::tts::piper::PiperTts::load(
        &onnx,
        &onnx.with_extension("onnx.json"),
        &lib,
        threads,
    )
    .expect("piper");
    println!("voice_latency: Piper with {threads} intra-op thread(s)");
    let run = ort::session::RunOptions::new().expect("run options");
    let never = tokio_util::sync::CancellationToken::new();
    let words = "the capital of France is Paris and it is a very old and beautiful city";
    let words: Vec<&str> = words.split(' ').collect();
    for n in [1usize, 2, 3, 4, 6, 8, 12, 16] {
        let text = format!("{}.", words[..n.min(words.len())].join(" "));
        let mut ms = Vec::new();
        let mut audio_ms = 0;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            let speech = piper
                .synthesize_blocking(&text, &never, &run)
                .expect("synth");
            ms.push(t.elapsed().as_micros() as i64);
            audio_ms = speech.samples.len() as i64 * 1000 / i64::from(speech.sample_rate);
        }
        println!(
            "summary: piper chunk {n:>2} words ({:>3} chars): p50 {:>6.1} ms for {audio_ms} ms of audio",
            text.len(),
            pct(&ms, 0.5) as f64 / 1000.0
        );
    }
}

/// The session settings: the defaults, with `VOICE_LATENCY_TURN=smart|silence`
/// choosing the end-of-turn mode.
/// Writes a conversation's input and events for `VOICE_LATENCY_KEEP`.
fn keep_events(dir: &Path, voice: &str, input: &Path, report: &ReplayReport) {
    std::fs::create_dir_all(dir).expect("VOICE_LATENCY_KEEP: create the directory");
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("conversation");
    std::fs::copy(input, dir.join(format!("{stem}.wav"))).expect("VOICE_LATENCY_KEEP: copy");
    let lines: Vec<String> = report
        .events
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .collect();
    std::fs::write(
        dir.join(format!("{voice}-{stem}.jsonl")),
        lines.join("\n") + "\n",
    )
    .expect("VOICE_LATENCY_KEEP: write events");
}

fn session_config() -> SessionConfig {
    let mut config = SessionConfig::default();
    match std::env::var("VOICE_LATENCY_TURN").as_deref() {
        Ok("smart") => config.eot.mode = colloquy::eot::TurnMode::Smart,
        Ok("silence") => config.eot.mode = colloquy::eot::TurnMode::Silence,
        _ => {}
    }
    config
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("voice_latency: run with `cargo bench --bench voice_latency`");
        return;
    }
    let store = ModelStore::from_env();
    if std::env::var("VOICE_LATENCY_PIPER_CHUNKS").is_ok_and(|v| v == "1") {
        #[cfg(feature = "embedded")]
        piper_chunk_costs(&store);
        return;
    }
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/speech");
    let load = |name: &str| {
        let audio = colloquy::audio::read_wav(&assets.join(format!("{name}.wav"))).expect("asset");
        colloquy::audio::resample_to_16k(&audio).expect("resample")
    };
    let count = std::env::var("VOICE_LATENCY_CONVERSATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CONVERSATIONS.len())
        .min(CONVERSATIONS.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let conversations: Vec<(std::path::PathBuf, Built)> = CONVERSATIONS[..count]
        .iter()
        .enumerate()
        .map(|(i, names)| {
            let clips: Vec<Vec<i16>> = names.iter().map(|n| load(n)).collect();
            let built = build(&clips, 0x5eed + i as u64);
            let path = dir.path().join(format!("conversation-{i}.wav"));
            write_wav(&path, &built.samples);
            (path, built)
        })
        .collect();

    let voices = std::env::var("VOICE_LATENCY_VOICES").unwrap_or_else(|_| "piper,espeak".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for voice in voices.split(',') {
        let engine = match voice.trim() {
            "espeak" => TtsEngine::Espeak,
            _ => TtsEngine::Piper,
        };
        let stack = {
            let _g = runtime.enter();
            match VoiceStack::build(
                &StackOptions {
                    tts_engine: engine,
                    llm_threads: 1,
                    stt_threads: 2,
                    ..Default::default()
                },
                &store,
            ) {
                Ok(s) => s,
                Err(e) => {
                    println!("voice_latency: {e}");
                    return;
                }
            }
        };
        let mut all = Vec::new();
        let mut longest_reply_ms = 0u64;
        for (path, built) in &conversations {
            let opts = ReplayOptions::new(path);
            let mut opts = opts;
            opts.pace = Pace::Fast;
            // A fresh session per conversation.
            let report = replay(
                &opts,
                stack.agent(runtime.handle().clone()),
                session_config(),
            )
            .expect("replay");
            if let Some(keep) = std::env::var_os("VOICE_LATENCY_KEEP") {
                keep_events(Path::new(&keep), voice.trim(), path, &report);
            }
            let mut started = None;
            for e in &report.events {
                match e.event {
                    Event::BotStartedSpeaking { .. } => started = Some(e.t_ms),
                    Event::BotStoppedSpeaking { .. } => {
                        if let Some(s) = started.take() {
                            longest_reply_ms = longest_reply_ms.max(e.t_ms - s);
                        }
                    }
                    _ => {}
                }
            }
            let answered = turns(&report, built);
            for t in &answered {
                println!(
                    "turn: voice={} {} {:<5} endpoint {:>5?} stt {:>5?} token {:>5?} audio {:>5} sound {:>5?}",
                    voice.trim(),
                    path.file_stem().and_then(|s| s.to_str()).unwrap_or("?"),
                    if t.first { "first" } else { "later" },
                    t.endpoint,
                    t.stt,
                    t.token,
                    t.audio_event,
                    t.sound
                );
            }
            all.extend(answered);
        }
        println!(
            "summary: voice={} conversations={count} (fresh session each) turns answered={} of {}; longest spoken reply {:.1} s",
            voice.trim(),
            all.len(),
            count * 2,
            longest_reply_ms as f64 / 1000.0
        );
        let first: Vec<&Turn> = all.iter().filter(|t| t.first).collect();
        let later: Vec<&Turn> = all.iter().filter(|t| !t.first).collect();
        let every: Vec<&Turn> = all.iter().collect();
        report("first turns", &first);
        report("later turns", &later);
        report("all turns", &every);
    }
}
