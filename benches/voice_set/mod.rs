//! The voice-latency set, shared by `benches/voice_latency.rs` and
//! `benches/voice_latency_routed.rs`: short conversations of real
//! recordings (`assets/speech/`) mixed over a noise floor (≈ −50 dBFS),
//! and the measurement of each answered turn from the end of the user's
//! sound (its endpoint, transcript, first token, first reply audio, and the
//! bot's first sound on the timeline's bot channel).
#![allow(dead_code)]

use colloquy::frame::Event;
use colloquy::transport::file::ReplayReport;
use std::path::Path;

/// Each conversation is a fresh session: two utterances, an answer between.
pub const CONVERSATIONS: [[&str; 2]; 8] = [
    ["q-france", "librivox-0880"],
    ["cards-001", "q-week"],
    ["librivox-0930", "cards-005"],
    ["q-germany-f3", "librivox-0890"],
    ["cards-002", "librivox-0870"],
    ["librivox-0920", "cards-003"],
    ["cards-004", "q-france"],
    ["q-week", "librivox-0880"],
];
pub const RATE: usize = 16_000;
/// Noise before the first utterance and after each one (room for the answer).
pub const LEAD_MS: usize = 1_000;
pub const GAP_MS: usize = 9_000;
/// The noise floor's RMS (full scale 32768): ≈ −50 dBFS.
pub const NOISE_RMS: f32 = 104.0;
pub const WIN: usize = RATE / 100;

pub fn pct(v: &[i64], q: f64) -> i64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Deterministic white noise (sum of uniforms ≈ Gaussian) of `n` samples.
pub fn noise(n: usize, seed: &mut u64) -> Vec<f32> {
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

pub fn window_rms(s: &[i16]) -> f32 {
    let sum: f64 = s.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / s.len().max(1) as f64).sqrt() as f32
}

/// Offset (samples) just past the last 10 ms window of `clip` above −30 dB
/// of its loudest window: where the user's sound ends.
pub fn sound_end(clip: &[i16]) -> usize {
    let wins: Vec<f32> = clip.chunks(WIN).map(window_rms).collect();
    let peak = wins.iter().copied().fold(0.0, f32::max);
    let last = wins.iter().rposition(|&r| r > peak * 0.0316).unwrap_or(0);
    ((last + 1) * WIN).min(clip.len())
}

/// First 10 ms window of the bot channel at or after `from` above −36 dBFS.
pub fn first_sound(bot: &[i16], from: usize) -> Option<usize> {
    let mut i = from;
    while i + WIN <= bot.len() {
        if window_rms(&bot[i..i + WIN]) > 520.0 {
            return Some(i);
        }
        i += WIN;
    }
    None
}

pub struct Built {
    pub samples: Vec<i16>,
    /// Where each utterance's sound ends (ms on the timeline).
    pub ends_ms: Vec<i64>,
}

pub fn build(clips: &[Vec<i16>], seed: u64) -> Built {
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

pub fn write_wav(path: &Path, samples: &[i16]) {
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
pub struct Turn {
    pub first: bool,
    pub endpoint: Option<i64>,
    pub stt: Option<i64>,
    pub token: Option<i64>,
    pub audio_event: i64,
    pub sound: Option<i64>,
}

pub fn turns(report: &ReplayReport, built: &Built) -> Vec<Turn> {
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

pub fn line(name: &str, v: &[i64]) {
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

pub fn report(label: &str, turns: &[&Turn]) {
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

/// Loads an asset of the set at 16 kHz.
pub fn load(name: &str) -> Vec<i16> {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/speech");
    let audio = colloquy::audio::read_wav(&assets.join(format!("{name}.wav"))).expect("asset");
    colloquy::audio::resample_to_16k(&audio).expect("resample")
}

/// The first `count` conversations written as WAVs into `dir`.
pub fn conversations(dir: &Path, count: usize) -> Vec<(std::path::PathBuf, Built)> {
    CONVERSATIONS[..count.min(CONVERSATIONS.len())]
        .iter()
        .enumerate()
        .map(|(i, names)| {
            let clips: Vec<Vec<i16>> = names.iter().map(|n| load(n)).collect();
            let built = build(&clips, 0x5eed + i as u64);
            let path = dir.join(format!("conversation-{i}.wav"));
            write_wav(&path, &built.samples);
            (path, built)
        })
        .collect()
}
