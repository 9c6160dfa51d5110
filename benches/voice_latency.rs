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
//! `VOICE_LATENCY_PIPER_CHUNKS=1` prints only Piper's cost per chunk length;
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

/// Each conversation is a fresh session: two utterances, an answer between.
const CONVERSATIONS: [[&str; 2]; 8] = [
    ["q-france", "librivox-0880"],
    ["cards-001", "q-week"],
    ["librivox-0930", "cards-005"],
    ["q-germany-f3", "librivox-0890"],
    ["cards-002", "librivox-0870"],
    ["librivox-0920", "cards-003"],
    ["cards-004", "q-france"],
    ["q-week", "librivox-0880"],
];
const RATE: usize = 16_000;
/// Noise before the first utterance and after each one (room for the answer).
const LEAD_MS: usize = 1_000;
const GAP_MS: usize = 9_000;
/// The noise floor's RMS (full scale 32768): ≈ −50 dBFS.
const NOISE_RMS: f32 = 104.0;
const WIN: usize = RATE / 100;

fn pct(v: &[i64], q: f64) -> i64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Deterministic white noise (sum of uniforms ≈ Gaussian) of `n` samples.
fn noise(n: usize, seed: &mut u64) -> Vec<f32> {
    let mut next = || {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    // Sum of 4 uniforms on [-0.5, 0.5] has variance 1/3.
    let scale = NOISE_RMS / (1.0f32 / 3.0).sqrt();
    (0..n)
        .map(|_| (next() + next() + next() + next()) * scale)
        .collect()
}

fn window_rms(s: &[i16]) -> f32 {
    let sum: f64 = s.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / s.len().max(1) as f64).sqrt() as f32
}

/// Offset (samples) just past the last 10 ms window of `clip` above −30 dB
/// of its loudest window: where the user's sound ends.
fn sound_end(clip: &[i16]) -> usize {
    let wins: Vec<f32> = clip.chunks(WIN).map(window_rms).collect();
    let peak = wins.iter().copied().fold(0.0, f32::max);
    let last = wins.iter().rposition(|&r| r > peak * 0.0316).unwrap_or(0);
    ((last + 1) * WIN).min(clip.len())
}

/// First 10 ms window of the bot channel at or after `from` above −36 dBFS.
fn first_sound(bot: &[i16], from: usize) -> Option<usize> {
    let mut i = from;
    while i + WIN <= bot.len() {
        if window_rms(&bot[i..i + WIN]) > 520.0 {
            return Some(i);
        }
        i += WIN;
    }
    None
}

struct Built {
    samples: Vec<i16>,
    /// Where each utterance's sound ends (ms on the timeline).
    ends_ms: Vec<i64>,
}

fn build(clips: &[Vec<i16>], seed: u64) -> Built {
    let mut seed = seed;
    let mut mix: Vec<f32> = Vec::new();
    let mut ends_ms = Vec::new();
    mix.extend(noise(LEAD_MS * RATE / 1000, &mut seed));
    for clip in clips {
        let at = mix.len();
        let under = noise(clip.len(), &mut seed);
        mix.extend(clip.iter().zip(under).map(|(&s, n)| f32::from(s) + n));
        ends_ms.push(((at + sound_end(clip)) * 1000 / RATE) as i64);
        mix.extend(noise(GAP_MS * RATE / 1000, &mut seed));
    }
    let samples = mix
        .into_iter()
        .map(|x| x.round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    Built { samples, ends_ms }
}

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

fn write_wav(path: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE as u32,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("wav");
    for &s in samples {
        w.write_sample(s).expect("write");
    }
    w.finalize().expect("finalize");
}

/// One answered turn, in ms from the end of the user's sound.
#[derive(Default)]
struct Turn {
    first: bool,
    endpoint: Option<i64>,
    stt: Option<i64>,
    token: Option<i64>,
    audio_event: i64,
    sound: Option<i64>,
}

fn turns(report: &ReplayReport, built: &Built) -> Vec<Turn> {
    let mut out = Vec::new();
    let stops: Vec<(i64, i64)> = report
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::SpeechStopped { at_ms, .. } => Some((at_ms as i64, e.t_ms as i64)),
            _ => None,
        })
        .collect();
    for e in &report.events {
        let Event::TurnLatency {
            end_of_speech_ms,
            stt_ms,
            first_token_ms,
            first_audio_ms,
            ..
        } = e.event
        else {
            continue;
        };
        let eos = end_of_speech_ms as i64;
        // The utterance this turn answers: the last sound end at or before
        // the detector's end of speech (+ 300 ms of VAD hangover).
        let Some((index, &end)) = built
            .ends_ms
            .iter()
            .enumerate()
            .rev()
            .find(|(_, &end)| end <= eos + 300)
        else {
            continue;
        };
        let endpoint = stops
            .iter()
            .find(|(at, t)| *at >= eos && *t >= first_audio_ms as i64 - 60_000)
            .map(|(_, t)| t - end);
        let sound = first_sound(&report.bot, end as usize * RATE / 1000)
            .map(|s| (s * 1000 / RATE) as i64 - end);
        out.push(Turn {
            first: index == 0 && !out.iter().any(|t: &Turn| t.first),
            endpoint,
            stt: stt_ms.map(|t| t as i64 - end),
            token: first_token_ms.map(|t| t as i64 - end),
            audio_event: first_audio_ms as i64 - end,
            sound,
        });
    }
    out
}

fn line(name: &str, v: &[i64]) {
    if v.is_empty() {
        println!("summary:     {name:<34}      –");
    } else {
        println!(
            "summary:     {name:<34} p50 {:>5} ms  p95 {:>5} ms  (n={})",
            pct(v, 0.5),
            pct(v, 0.95),
            v.len()
        );
    }
}

fn report(label: &str, turns: &[&Turn]) {
    println!("summary:   {label} ({} turns)", turns.len());
    let col = |f: &dyn Fn(&Turn) -> Option<i64>| -> Vec<i64> {
        turns.iter().filter_map(|t| f(t)).collect()
    };
    line("endpoint (speech_stopped)", &col(&|t| t.endpoint));
    line("STT final", &col(&|t| t.stt));
    line("LLM first token", &col(&|t| t.token));
    line("first reply audio (event)", &col(&|t| Some(t.audio_event)));
    line(
        "stage: STT (from end of sound)",
        &col(&|t| t.stt.map(|s| s.max(0))),
    );
    line(
        "stage: LLM first token (after STT)",
        &col(&|t| Some(t.token? - t.stt?)),
    );
    line(
        "stage: TTS first chunk (after token)",
        &col(&|t| Some(t.audio_event - t.token?)),
    );
    line(
        "stage: transport (event to sound)",
        &col(&|t| Some(t.sound? - t.audio_event)),
    );
    line("VOICE TO VOICE (on the audio)", &col(&|t| t.sound));
}

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
    let piper =
        colloquy::tts::piper::PiperTts::load(&onnx, &onnx.with_extension("onnx.json"), &lib, 1)
            .expect("piper");
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
