//! The real per-frame input path, measured as a transport drives it: 20 ms
//! of capture pushed into the session's input ring, then `Session::process`
//! (ring → edge resampling → VAD → turn detector → utterance buffer →
//! coordinator tick; at each pause and end of turn the utterance copy and
//! the job dispatch), then the transport's 20 ms read of the output ring.
//!
//! Input: the real LibriVox and CMU recordings of `assets/speech/` laid end
//! to end with 1.2 s gaps over a −55 dBFS noise floor (`audio::signal`), so
//! the VAD scores room noise between words, never digital silence, and the
//! parrot agent answers each turn (its reply plays into the output ring).
//! Every run is a fresh session from its first frame.
//!
//! For each VAD backend (webrtc, earshot, energy; silero when its model is
//! in `COLLOQUY_MODELS`) and each input format (16 kHz mono; 48 kHz mono as
//! the page sends; 48 kHz stereo as a sound card or a browser captures):
//! - CPU per frame: the thread's CPU time over the run ÷ frames (mean);
//! - wall time per 20 ms step, p50 / p99;
//! - CPU per session-second (= per frame × 50) as a share of one core.
//!
//! Also the pieces alone: VAD per frame and edge resampling per 20 ms.
//!
//! Output: a table, then one `json:` line per row (machine-readable).
//! `cargo bench --bench frame_path` runs 60 s of audio per row, three times
//! (the median run is reported); under `cargo test` it runs 2 s once.

use colloquy::agent::parrot::ParrotAgent;
use colloquy::audio::{input_ring, output_ring, signal, EdgeResampler};
use colloquy::frame::{AudioFrame, FRAME_SAMPLES};
use colloquy::session::{Pacing, Session, SessionConfig};
use colloquy::vad::VadKind;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The bench input: real speech with gaps over a noise floor, 16 kHz mono.
fn recording(total_ms: u64) -> Vec<i16> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/speech");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("assets/speech")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("librivox-") || n.starts_with("cards-"))
        })
        .collect();
    names.sort();
    let clips: Vec<Vec<i16>> = names
        .iter()
        .map(|p| {
            let audio = colloquy::audio::read_wav(p).expect("asset");
            colloquy::audio::resample_to_16k(&audio).expect("resample")
        })
        .collect();
    signal::conversation(&clips, 1200, total_ms, -55.0)
}

#[derive(Clone, Copy)]
struct Format {
    name: &'static str,
    rate: u32,
    channels: u16,
}

const FORMATS: [Format; 3] = [
    Format {
        name: "16k mono",
        rate: 16_000,
        channels: 1,
    },
    Format {
        name: "48k mono (page)",
        rate: 48_000,
        channels: 1,
    },
    Format {
        name: "48k stereo (device)",
        rate: 48_000,
        channels: 2,
    },
];

struct Run {
    frames: u64,
    cpu_per_frame: Duration,
    p50: Duration,
    p99: Duration,
    turns: usize,
}

/// One fresh session over the whole input, 20 ms per step.
fn run(kind: VadKind, format: Format, input: &[f32]) -> Run {
    let config = SessionConfig {
        vad: kind,
        input_rate: format.rate,
        input_channels: format.channels,
        pacing: Pacing::Arrival,
        ..SessionConfig::default()
    };
    let step = (format.rate / 50) as usize * format.channels as usize;
    let (mut prod, cons) = input_ring(step * 8);
    let (out, mut out_cons) = output_ring(16_000 * 4);
    let mut session =
        Session::new(config, Arc::new(ParrotAgent), cons, out).expect("session (VAD model?)");
    let mut playback = [0.0f32; FRAME_SAMPLES];
    let mut steps = Vec::with_capacity(input.len() / step + 1);
    let mut frames = 0u64;
    let mut turns = 0usize;
    let cpu0 = thread_cpu();
    for chunk in input.chunks_exact(step) {
        prod.push(chunk);
        let t = Instant::now();
        session.process(|_| frames += 1);
        out_cons.read(&mut playback);
        steps.push(t.elapsed());
        turns += session.drain_committed().len();
    }
    let cpu = thread_cpu() - cpu0;
    steps.sort();
    let q = |p: f64| steps[((steps.len() - 1) as f64 * p) as usize];
    Run {
        frames,
        cpu_per_frame: cpu / frames.max(1) as u32,
        p50: q(0.5),
        p99: q(0.99),
        turns,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn vads() -> Vec<VadKind> {
    let mut v = VadKind::ALL.to_vec();
    match VadKind::Silero.try_build() {
        Ok(_) => v.push(VadKind::Silero),
        Err(e) => println!("silero skipped: {e}"),
    }
    v
}

/// VAD alone, per frame, over the same 16 kHz input (thread CPU).
fn vad_alone(kind: VadKind, pcm: &[i16]) -> Duration {
    let mut vad = kind.build();
    let mut frame = AudioFrame::silent(0);
    let mut acc = 0.0f32;
    let n = pcm.len() / FRAME_SAMPLES;
    let cpu0 = thread_cpu();
    for (i, c) in pcm.chunks_exact(FRAME_SAMPLES).enumerate() {
        frame.start = (i * FRAME_SAMPLES) as u64;
        frame.samples.copy_from_slice(c);
        acc += vad.speech_probability(&frame);
    }
    std::hint::black_box(acc);
    (thread_cpu() - cpu0) / n.max(1) as u32
}

/// Edge resampling alone, per 20 ms.
fn resample_alone(format: Format, input: &[f32]) -> Duration {
    let mut r = EdgeResampler::new(format.rate, format.channels, 16_000).expect("resampler");
    let step = (format.rate / 50) as usize * format.channels as usize;
    let mut n = 0usize;
    let steps = input.len() / step;
    let cpu0 = thread_cpu();
    for chunk in input.chunks_exact(step) {
        r.process(chunk, |s| n += s.len());
    }
    std::hint::black_box(n);
    (thread_cpu() - cpu0) / steps.max(1) as u32
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (total_ms, repeats) = if full { (60_000, 3) } else { (2_000, 1) };
    let pcm = recording(total_ms);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "frame_path: real per-frame path, {:.0} s of speech over a -55 dBFS noise floor per run, median of {repeats}; {cores} core(s), load average {}",
        total_ms as f64 / 1000.0,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let inputs: Vec<(Format, Vec<f32>)> = FORMATS
        .iter()
        .map(|f| {
            (
                *f,
                signal::interleaved(&pcm, f.rate, f.channels).expect("input"),
            )
        })
        .collect();
    println!(
        "{:<8} {:<20} {:>8} {:>6} {:>14} {:>13} {:>13} {:>16}",
        "vad",
        "input",
        "frames",
        "turns",
        "CPU/frame µs",
        "step p50 µs",
        "step p99 µs",
        "% core/session"
    );
    let mut json = Vec::new();
    let kinds = vads();
    for &kind in &kinds {
        for (format, input) in &inputs {
            let mut runs: Vec<Run> = (0..repeats).map(|_| run(kind, *format, input)).collect();
            runs.sort_by_key(|r| r.cpu_per_frame);
            let r = &runs[runs.len() / 2];
            let per_frame = us(r.cpu_per_frame);
            let share = per_frame * 50.0 / 1e6 * 100.0;
            println!(
                "{:<8} {:<20} {:>8} {:>6} {:>14.2} {:>13.2} {:>13.2} {:>16.3}",
                format!("{kind:?}").to_lowercase(),
                format.name,
                r.frames,
                r.turns,
                per_frame,
                us(r.p50),
                us(r.p99),
                share
            );
            json.push(serde_json::json!({
                "bench": "frame_path", "vad": format!("{kind:?}").to_lowercase(),
                "input": format.name, "frames": r.frames, "turns": r.turns,
                "cpu_us_per_frame": per_frame, "step_p50_us": us(r.p50),
                "step_p99_us": us(r.p99), "cpu_us_per_session_second": per_frame * 50.0,
            }));
        }
    }
    println!("pieces alone (CPU per 20 ms):");
    for &kind in &kinds {
        let d = us(vad_alone(kind, &pcm));
        println!(
            "  vad {:<8} {d:>8.2} µs",
            format!("{kind:?}").to_lowercase()
        );
        json.push(serde_json::json!({"bench": "vad_alone", "vad": format!("{kind:?}").to_lowercase(), "cpu_us_per_frame": d}));
    }
    for (format, input) in &inputs[1..] {
        let d = us(resample_alone(*format, input));
        println!("  resample {:<20} → 16k {d:>8.2} µs", format.name);
        json.push(serde_json::json!({"bench": "resample_alone", "input": format.name, "cpu_us_per_step": d}));
    }
    for j in json {
        println!("json: {j}");
    }
}
