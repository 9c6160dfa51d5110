//! The echo canceller (`--echo aec`, `src/echo/aec.rs`) measured on real
//! speech (`cargo bench --bench aec`; harness = false, prints tables):
//!
//! 1. ERLE (echo return loss enhancement: echo power in / residual power out)
//!    on a 21 s LibriVox reply through three simulated rooms (30, 60, 120 ms;
//!    full-level direct path, two reflections, a 200 ms tail, -60 dBFS
//!    noise): per second, after convergence (from 2 s on), and the
//!    convergence time (the start of the first 500 ms window at ≥ 20 dB);
//! 2. CPU per 10 ms frame (render + capture) and the added capture latency
//!    (the lag between a near-end voice in and out, by cross-correlation);
//! 3. barge-in by level in the virtual room (`echo::room`: a real session,
//!    the real output callback, the virtual clock): a second real voice at
//!    0 to -30 dB under the echo, 8 s into the reply; time from its onset to
//!    the interruption, for `aec` and `gate`; and self-interruptions of the
//!    reply alone;
//! 4. double talk: word error rate of the user's words (5 real `cards`
//!    recordings) alone, and 12 dB under the bot's echo through the
//!    canceller, with the embedded Whisper (skipped without the models).
//!
//! `COLLOQUY_BENCH_QUICK=1` runs the 60 ms room and the -12 dB level only.

use colloquy::audio::{input_ring, read_wav, resample_to_16k};
use colloquy::echo::room::{self, active_dbfs, db_to_gain, Barge, Room, Scenario};
use colloquy::echo::{Aec3Canceller, EchoControl, EchoMode};
use colloquy::frame::{AudioFrame, FRAME_SAMPLES};
use colloquy::session::SessionConfig;
use std::path::Path;
use std::time::Instant;

fn load16k(rel: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(rel);
    let audio = read_wav(&path).expect("asset");
    resample_to_16k(&audio)
        .expect("resample")
        .iter()
        .map(|&v| v as f32 / 32768.0)
        .collect()
}

/// Trims leading/trailing quiet (20 ms frames under -45 dBFS).
fn trim(x: &[f32]) -> Vec<f32> {
    let loud = |c: &[f32]| (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32) > 3.2e-5;
    let frames: Vec<&[f32]> = x.chunks(FRAME_SAMPLES).collect();
    let a = frames.iter().position(|c| loud(c)).unwrap_or(0);
    let b = frames
        .iter()
        .rposition(|c| loud(c))
        .unwrap_or(frames.len() - 1);
    x[a * FRAME_SAMPLES..((b + 1) * FRAME_SAMPLES).min(x.len())].to_vec()
}

fn long_reply() -> Vec<f32> {
    let mut out = Vec::new();
    for name in ["0870", "0890", "0920", "0930"] {
        out.extend(trim(&load16k(&format!("speech/librivox-{name}.wav"))));
        out.extend(std::iter::repeat_n(0.0, 16 * 150));
    }
    out
}

fn to_i16(x: &[f32]) -> Vec<i16> {
    x.iter()
        .map(|&v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// Runs `far` (played) and `near` (the user at the microphone) through the
/// canceller in `room`; returns (mic, output, CPU seconds, 10 ms frames).
fn cancel(far: &[f32], near: &[f32], room: &Room) -> (Vec<f32>, Vec<f32>, f64, usize) {
    let (mut prod, cons) = input_ring(far.len() + 16_000);
    let mut aec = Aec3Canceller::new(cons, 16_000).expect("canceller");
    let echo = room.echo_of(far);
    let noise_amp = db_to_gain(room.noise_dbfs) * 3f32.sqrt();
    let mut seed = 0x1234_5678u32;
    let n = far.len().max(near.len()) / FRAME_SAMPLES * FRAME_SAMPLES;
    let mut mic = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let mut cpu = 0.0f64;
    for i in (0..n).step_by(FRAME_SAMPLES) {
        let mut frame = AudioFrame::silent(i as u64);
        for (k, s) in frame.samples.iter_mut().enumerate() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let noise = ((seed as f32 / u32::MAX as f32) * 2.0 - 1.0) * noise_amp;
            let v = echo.get(i + k).copied().unwrap_or(0.0)
                + near.get(i + k).copied().unwrap_or(0.0)
                + noise;
            mic.push(v);
            *s = (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        }
        let played: Vec<f32> = (i..i + FRAME_SAMPLES)
            .map(|t| far.get(t).copied().unwrap_or(0.0))
            .collect();
        let t0 = Instant::now();
        prod.push(&played);
        aec.process(&mut frame);
        cpu += t0.elapsed().as_secs_f64();
        out.extend(frame.samples.iter().map(|&s| s as f32 / 32768.0));
    }
    (mic, out, cpu, n / (FRAME_SAMPLES / 2))
}

fn power(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()
}

fn erle_db(mic: &[f32], out: &[f32]) -> f64 {
    10.0 * (power(mic) / power(out).max(1e-12)).log10()
}

fn erle_section(quick: bool) {
    println!("\n## 1. ERLE on real speech (21 s LibriVox reply, echo alone), CPU, latency\n");
    println!("| room delay | ERLE 0-1 s | 1-2 s | 2-3 s | after 2 s | converged (>= 20 dB, 500 ms window) | CPU per 10 ms frame |");
    println!("|---|---|---|---|---|---|---|");
    let far = long_reply();
    let delays: &[f32] = if quick { &[60.0] } else { &[30.0, 60.0, 120.0] };
    for &d in delays {
        let room = Room::typical(d);
        let (mic, out, cpu, frames) = cancel(&far, &[], &room);
        let sec = 16_000;
        let e = |a: usize, b: usize| erle_db(&mic[a..b.min(mic.len())], &out[a..b.min(out.len())]);
        let win = 8_000;
        let converged = (0..mic.len() / win)
            .find(|&w| {
                let (a, b) = (w * win, (w + 1) * win);
                power(&mic[a..b]) > 1e-3 && e(a, b) >= 20.0
            })
            .map(|w| format!("{:.1} s", (w * win) as f64 / sec as f64))
            .unwrap_or_else(|| "never".into());
        println!(
            "| {d:.0} ms | {:.1} dB | {:.1} dB | {:.1} dB | {:.1} dB | {converged} | {:.0} µs |",
            e(0, sec),
            e(sec, 2 * sec),
            e(2 * sec, 3 * sec),
            e(2 * sec, mic.len()),
            cpu * 1e6 / frames as f64,
        );
    }
    // Added capture latency: a near-end voice alone (the reference playing
    // silence, so the canceller is armed), lag of the output behind the input.
    let near = load16k("speech/cards-005.wav");
    let silent = vec![0.0f32; near.len()];
    let (mic, out, _, _) = cancel(&silent, &near, &Room::typical(60.0));
    let lag = (0..=320usize)
        .max_by(|&a, &b| {
            let c = |l: usize| -> f64 {
                mic.iter()
                    .zip(out.iter().skip(l))
                    .map(|(&x, &y)| x as f64 * y as f64)
                    .sum()
            };
            c(a).total_cmp(&c(b))
        })
        .unwrap_or(0);
    println!(
        "\nadded capture latency: {lag} samples ({:.2} ms) between a near-end voice in and out (no hold-back of capture)",
        lag as f64 / 16.0
    );
}

fn reply_i16() -> Vec<i16> {
    to_i16(&long_reply())
}

fn scenario(mode: EchoMode, level: Option<f32>, reply: &[i16]) -> Scenario {
    let prompt = to_i16(&load16k("speech/cards-001.wav"));
    Scenario {
        mode,
        room: Some(Room::typical(60.0)),
        prompt,
        prompt_at_ms: 500,
        reply: reply.to_vec(),
        barge: level.map(|level_db| Barge {
            clip: to_i16(&load16k("speech/cards-005.wav")),
            after_bot_ms: 8_000,
            level_db,
        }),
        until_ms: 500 + 2_100 + reply.len() as u64 / 16 + 3_000,
        config: SessionConfig::default(),
    }
}

fn barge_section(quick: bool) {
    println!("\n## 2. Barge-in by level in the virtual room (60 ms, full-level echo)\n");
    let reply = reply_i16();
    for mode in [EchoMode::Aec, EchoMode::Gate] {
        let o = room::run(&scenario(mode, None, &reply));
        println!(
            "reply alone, --echo {mode}: {} self-interruption(s), {} turn(s) opened",
            o.count("interrupted"),
            o.count("turn_opened")
        );
    }
    println!("\n| second voice vs echo | --echo aec: onset -> interrupted | --echo gate |");
    println!("|---|---|---|");
    let levels: &[f32] = if quick {
        &[-12.0]
    } else {
        &[0.0, -6.0, -12.0, -18.0, -24.0, -30.0]
    };
    for &level in levels {
        let cell = |mode: EchoMode| {
            let o = room::run(&scenario(mode, Some(level), &reply));
            match o.barge_in_ms() {
                Some(ms) => format!("{ms} ms"),
                None => "missed".to_string(),
            }
        };
        println!(
            "| {level:+.0} dB | {} | {} |",
            cell(EchoMode::Aec),
            cell(EchoMode::Gate)
        );
    }
}

#[cfg(feature = "embedded")]
fn double_talk_section() {
    use colloquy::models::ModelStore;
    use colloquy::stt::normalize::word_errors;
    use colloquy::stt::whisper::{AudioCtx, WhisperConfig, WhisperStt};
    println!("\n## 3. Double talk: WER of the user's words (Whisper tiny.en)\n");
    let stt = match WhisperStt::from_store(&ModelStore::from_env(), WhisperConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    let tsv = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/speech/transcripts.tsv"),
    )
    .expect("transcripts");
    let far = long_reply();
    let echo_db = active_dbfs(&Room::typical(60.0).echo_of(&far));
    let mut rows = [(0usize, 0usize); 3];
    for i in 1..=5 {
        let name = format!("cards-00{i}");
        let reference = tsv
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}\t")))
            .expect("transcript")
            .to_string();
        let clip = load16k(&format!("speech/{name}.wav"));
        let gain = db_to_gain(echo_db - 12.0 - active_dbfs(&clip));
        // The user speaks 4 s into the bot's reply (the canceller converged).
        let mut near = vec![0.0f32; 16_000 * 4];
        near.extend(clip.iter().map(|v| v * gain));
        let cut = |x: &[f32]| to_i16(&x[16_000 * 4 - 4_800..near.len().min(x.len())]);
        let alone = cut(&near);
        let (mic, out, _, _) = cancel(
            &far[..near.len().min(far.len())],
            &near,
            &Room::typical(60.0),
        );
        for (row, audio) in [alone, cut(&mic), cut(&out)].iter().enumerate() {
            let text = stt
                .decode_blocking(audio, AudioCtx::Full)
                .map(|d| d.text)
                .unwrap_or_default();
            let (errs, words) = word_errors(&reference, &text);
            rows[row].0 += errs;
            rows[row].1 += words;
        }
    }
    println!("| user's words (5 cards recordings, 12 dB under the echo) | WER |");
    println!("|---|---|");
    for (label, (e, w)) in [
        "alone (no bot audio)",
        "under the bot's echo, no canceller",
        "under the bot's echo, through the canceller",
    ]
    .iter()
    .zip(rows)
    {
        println!(
            "| {label} | {:.1} % ({e}/{w}) |",
            100.0 * e as f64 / w.max(1) as f64
        );
    }
}

#[cfg(not(feature = "embedded"))]
fn double_talk_section() {
    println!("\n## 3. Double talk: skipped (build with the `embedded` feature)");
}

fn main() {
    // `cargo test --benches` runs this with `--bench`-less args: keep it short then.
    let under_test = !std::env::args().any(|a| a == "--bench");
    let quick = under_test || std::env::var("COLLOQUY_BENCH_QUICK").is_ok_and(|v| v == "1");
    let t0 = Instant::now();
    erle_section(quick);
    barge_section(quick);
    if !under_test {
        double_talk_section();
    }
    println!(
        "\n(took {:.1} s; timings on a shared, loaded machine)",
        t0.elapsed().as_secs_f64()
    );
}
