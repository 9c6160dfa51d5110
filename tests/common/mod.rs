//! Shared helpers for integration tests: assets, synthetic timelines, energy.
#![allow(dead_code)]

pub mod pg;
pub mod route;
pub mod ws;

use std::path::{Path, PathBuf};

pub fn asset(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(rel)
}

/// Loads a 16 kHz mono asset as PCM16.
pub fn load16k(rel: &str) -> Vec<i16> {
    let audio = colloquy::audio::read_wav(&asset(rel)).expect("asset readable");
    colloquy::audio::resample_to_16k(&audio).expect("resample")
}

/// Reference transcript of an asset clip (from assets/speech/transcripts.tsv).
pub fn transcript(name: &str) -> String {
    let tsv = std::fs::read_to_string(asset("speech/transcripts.tsv")).expect("transcripts");
    tsv.lines()
        .find_map(|l| {
            l.split_once('\t')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_else(|| panic!("no transcript for {name}"))
}

/// Deterministic low-level noise (≈ -60 dBFS) so silence is not digital zero.
pub fn noise(samples: usize, seed: u32) -> Vec<i16> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..samples)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((x % 64) as i16) - 32
        })
        .collect()
}

/// Builds a timeline from pieces; returns samples and the start sample of each piece.
pub fn concat(pieces: &[Vec<i16>]) -> (Vec<i16>, Vec<usize>) {
    let mut out = Vec::new();
    let mut starts = Vec::new();
    for p in pieces {
        starts.push(out.len());
        out.extend_from_slice(p);
    }
    (out, starts)
}

pub fn silence_ms(ms: usize, seed: u32) -> Vec<i16> {
    noise(ms * 16, seed)
}

/// Mixes `over` into `base` starting at sample `at` (saturating).
pub fn mix(base: &mut Vec<i16>, over: &[i16], at: usize) {
    if base.len() < at + over.len() {
        base.resize(at + over.len(), 0);
    }
    for (i, &s) in over.iter().enumerate() {
        base[at + i] = base[at + i].saturating_add(s);
    }
}

pub fn write_wav16k(path: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create wav");
    for &s in samples {
        w.write_sample(s).expect("write");
    }
    w.finalize().expect("finalize");
}

/// Speech bounds of a clean clip: onset = first 20 ms frame above -35 dBFS
/// (clear speech, not breath), offset = end of the last frame above -45 dBFS
/// (quiet word endings count).
pub fn speech_bounds(clip: &[i16]) -> (usize, usize) {
    let env = envelope(clip);
    let first = env
        .iter()
        .position(|&r| r > 0.0178)
        .expect("clip has speech");
    let last = env
        .iter()
        .rposition(|&r| r > 0.0056)
        .expect("clip has speech");
    (first * 320, (last + 1) * 320)
}

/// Frame-level RMS envelope (20 ms frames).
pub fn envelope(samples: &[i16]) -> Vec<f32> {
    samples.chunks(320).map(colloquy::frame::rms).collect()
}

/// Index of the first 20 ms frame at or after `from` whose level exceeds `level`.
pub fn first_loud_frame(samples: &[i16], from: usize, level: f32) -> Option<usize> {
    envelope(samples)
        .iter()
        .enumerate()
        .skip(from / 320)
        .find(|(_, &r)| r > level)
        .map(|(i, _)| i * 320)
}

/// The model store, or `None` (skip) when a model is missing; with
/// `COLLOQUY_REQUIRE_MODELS=1` (CI) a missing model is a failure.
pub fn models_or_skip() -> Option<colloquy::models::ModelStore> {
    let store = colloquy::models::ModelStore::from_env();
    let missing: Vec<String> = colloquy::models::ModelId::ALL
        .iter()
        .filter(|&&id| store.require(id).is_err())
        .map(|id| id.to_string())
        .collect();
    if missing.is_empty() {
        return Some(store);
    }
    let msg = format!(
        "models missing in {}: {missing:?} (run `colloquy models fetch`)",
        store.root().display()
    );
    if std::env::var("COLLOQUY_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

/// The default embedded stack on its own runtime, or `None` (skip).
pub fn stack_or_skip() -> Option<(tokio::runtime::Runtime, colloquy::agent::stack::VoiceStack)> {
    let store = models_or_skip()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stack = {
        let _guard = runtime.enter();
        colloquy::agent::stack::VoiceStack::build(
            &colloquy::agent::stack::StackOptions {
                llm_threads: 1,
                stt_threads: 2,
                ..colloquy::agent::stack::StackOptions::default()
            },
            &store,
        )
        .expect("voice stack")
    };
    Some((runtime, stack))
}

/// The caller's side of a conversation: half a second of room noise, then
/// each speech asset (`speech/NAME.wav`) followed by its gap in ms.
pub fn caller(clips: &[(&str, usize)]) -> Vec<i16> {
    caller_after(500, clips)
}

/// [`caller`] starting after `lead_ms` of room noise (room for a greeting).
pub fn caller_after(lead_ms: usize, clips: &[(&str, usize)]) -> Vec<i16> {
    let mut pieces = vec![silence_ms(lead_ms, 1)];
    for (i, (clip, gap_ms)) in clips.iter().enumerate() {
        pieces.push(load16k(&format!("speech/{clip}.wav")));
        pieces.push(silence_ms(*gap_ms, i as u32 + 2));
    }
    concat(&pieces).0
}

/// The session defaults without speculative turns: for tests whose scripted
/// STT answers one line per request in order (a decode at each short pause
/// would take the next utterance's line; speculation has its own tests).
pub fn without_speculation() -> colloquy::session::SessionConfig {
    let mut config = colloquy::session::SessionConfig::default();
    config.turn.pause_ms = 10_000;
    config
}
