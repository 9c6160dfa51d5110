//! Voice-to-voice latency on the embedded stack: a timeline of real and
//! synthetic spoken utterances (LibriVox and CMU recordings, espeak-ng
//! questions) with room for answers is replayed at `--pace fast`, which
//! charges every stage's real compute time to the timeline. Prints p50/p95
//! of each stage measured from the end of the user's speech (last voiced
//! frame): STT final, LLM first token, first bot audio (= voice to voice).
//!
//! `cargo bench --bench voice_latency` (needs `colloquy models fetch`).
//! Under `cargo test --all-targets` it only checks that it starts.

use colloquy::agent::stack::{StackOptions, SttWindow, TtsEngine, VoiceStack};
use colloquy::frame::Event;
use colloquy::models::ModelStore;
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions};
use std::path::Path;

const CLIPS: [&str; 8] = [
    "q-france",
    "librivox-0880",
    "q-week",
    "cards-005",
    "librivox-0930",
    "q-germany-f3",
    "cards-002",
    "librivox-0890",
];

fn pct(v: &mut [u64], q: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("voice_latency: run with `cargo bench --bench voice_latency`");
        return;
    }
    let store = ModelStore::from_env();
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/speech");
    let mut samples: Vec<i16> = vec![0; 16_000];
    for c in CLIPS {
        let audio = colloquy::audio::read_wav(&assets.join(format!("{c}.wav"))).expect("asset");
        samples.extend(colloquy::audio::resample_to_16k(&audio).expect("resample"));
        samples.extend(std::iter::repeat_n(0i16, 8 * 16_000));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("turns.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&input, spec).expect("wav");
    for s in samples {
        w.write_sample(s).expect("write");
    }
    w.finalize().expect("finalize");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for (engine, window, speculative) in [
        (TtsEngine::Piper, SttWindow::Full, true),
        (TtsEngine::Piper, SttWindow::Fit, false),
        (TtsEngine::Piper, SttWindow::Fit, true),
        (TtsEngine::Espeak, SttWindow::Fit, true),
    ] {
        let stack = {
            let _g = runtime.enter();
            match VoiceStack::build(
                &StackOptions {
                    tts_engine: engine,
                    stt_window: window,
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
        let mut opts = ReplayOptions::new(&input);
        opts.pace = Pace::Fast;
        let mut config = SessionConfig::default();
        config.coordinator.speculative = speculative;
        let report = replay(&opts, stack.agent(runtime.handle().clone()), config).expect("replay");
        let (mut stt, mut tok, mut audio) = (Vec::new(), Vec::new(), Vec::new());
        for e in &report.events {
            if let Event::TurnLatency {
                end_of_speech_ms,
                stt_ms,
                first_token_ms,
                first_audio_ms,
                ..
            } = e.event
            {
                stt.extend(stt_ms.map(|t| t - end_of_speech_ms));
                tok.extend(first_token_ms.map(|t| t - end_of_speech_ms));
                audio.push(first_audio_ms - end_of_speech_ms);
            }
        }
        if audio.is_empty() {
            println!("voice_latency: no turn answered");
            return;
        }
        println!(
            "summary: tts={engine:?} stt-window={window:?} speculative={speculative} turns={} (of {})",
            audio.len(),
            CLIPS.len()
        );
        for (name, v) in [
            ("stt final", &mut stt),
            ("llm first token", &mut tok),
            ("first audio (voice to voice)", &mut audio),
        ] {
            if !v.is_empty() {
                println!(
                    "summary:   {name:<30} p50 {:>5} ms  p95 {:>5} ms",
                    pct(v, 0.5),
                    pct(v, 0.95)
                );
            }
        }
    }
}
