//! colloquy's half of the peer comparison (`scripts/peer-bench.sh` runs it
//! beside `benches/peer/pipecat_bench.py` and prints the ratios). Each
//! workload is defined once, in `benches/peer/README.md`, and measured the
//! same way on both sides:
//!
//! - `stages_flood` (K = 1, 5, 10): frames of the recording pushed as fast as
//!   possible through K pass-through stages; process CPU per frame.
//!   colloquy's stages are its data-plane shape: fixed-size frames moved
//!   between stages on pre-sized SPSC rings (the chain lives here, in the
//!   bench: the product has no generic stage chain).
//! - `stages_closed_loop` (K = 1, 5, 10): one frame in flight, push → out of
//!   the last stage on the same thread; wall p50 / p99.
//! - `silero_per_frame`: Silero VAD over the recording, 20 ms per call;
//!   process CPU per frame (`vad/silero.rs`; fetches the model if missing).
//! - `vad_path_per_frame`: the input path with Silero, `Session::process`
//!   per 20 ms of 16 kHz mono (parrot agent answering); process CPU per frame.
//! - `idle_session_kib`: N idle sessions as a WebSocket connection builds
//!   them (rings, resampler, VAD, turn detector, utterance buffer,
//!   coordinator); RSS growth ÷ N. With the default VAD (earshot) and with
//!   Silero (a model instance per session, as pipecat's analyzer).
//! - `interruption`: 2 s of reply audio queued, 200 ms played, then the
//!   frame that confirms a barge-in → the transport's next read is silent;
//!   wall p50 / p99 over 50 interruptions.
//!
//! Output: one `json:` line per measurement. `PEER_RECORDING=path` writes
//! the recording (16 kHz mono WAV) for the Python side; `PEER_FETCH_MODELS`
//! fetches Silero VAD and onnxruntime into `COLLOQUY_MODELS` if missing;
//! `PEER_QUICK` (and `cargo test`) runs every workload once, tiny.

use colloquy::agent::parrot::ParrotAgent;
use colloquy::agent::{Agent, CostMode, Payload, Reporter, TaskMessage, TurnJob};
use colloquy::audio::{input_ring, output_ring, signal};
use colloquy::frame::{AudioFrame, FRAME_SAMPLES};
use colloquy::models::ModelId;
use colloquy::session::{Pacing, Session, SessionConfig};
use colloquy::turn::{Coordinator, CoordinatorConfig, Playout};
use colloquy::vad::VadKind;
use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn emit(v: serde_json::Value) {
    println!("json: {v}");
}

fn percentile(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
}

/// The shared recording: the LibriVox and CMU clips with 1.2 s gaps over a
/// −55 dBFS noise floor (`audio::signal`), 16 kHz mono.
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
            colloquy::audio::resample_to_16k(&colloquy::audio::read_wav(p).expect("asset"))
                .expect("resample")
        })
        .collect();
    signal::conversation(&clips, 1200, total_ms, -55.0)
}

fn frames_of(pcm: &[i16]) -> Vec<AudioFrame> {
    pcm.chunks_exact(FRAME_SAMPLES)
        .enumerate()
        .map(|(i, c)| {
            let mut f = AudioFrame::silent((i * FRAME_SAMPLES) as u64);
            f.samples.copy_from_slice(c);
            f
        })
        .collect()
}

// ---- K pass-through stages on SPSC frame rings ---------------------------

type FrameProd = HeapProd<AudioFrame>;
type FrameCons = HeapCons<AudioFrame>;

/// K stages, each reading its own ring and writing the next one's.
struct Chain {
    stages: Vec<(u64, FrameCons, FrameProd)>,
}

impl Chain {
    fn new(k: usize, capacity: usize) -> (FrameProd, Self, FrameCons) {
        let (input, mut cons) = HeapRb::<AudioFrame>::new(capacity).split();
        let mut stages = Vec::with_capacity(k);
        for _ in 0..k {
            let (p, c) = HeapRb::<AudioFrame>::new(capacity).split();
            stages.push((0u64, std::mem::replace(&mut cons, c), p));
        }
        (input, Self { stages }, cons)
    }

    /// Moves every available frame through every stage (a pass-through
    /// stage reads the frame, so the optimiser keeps the work).
    fn pump(&mut self) {
        for (seen, cons, prod) in self.stages.iter_mut() {
            while let Some(frame) = cons.try_pop() {
                *seen += u64::from(frame.samples[0] != i16::MIN);
                let _ = prod.try_push(frame);
            }
        }
    }
}

fn stages_flood(frames: &[AudioFrame], k: usize) {
    let (mut input, mut chain, mut out) = Chain::new(k, 256);
    let mut received = 0usize;
    let cpu0 = process_cpu();
    for batch in frames.chunks(64) {
        for f in batch {
            let _ = input.try_push(*f);
        }
        chain.pump();
        while out.try_pop().is_some() {
            received += 1;
        }
    }
    let cpu = process_cpu() - cpu0;
    assert_eq!(received, frames.len(), "every frame leaves the chain");
    emit(
        json!({"workload": "stages_flood", "k": k, "frames": received,
        "cpu_us_per_frame": cpu.as_secs_f64() * 1e6 / received as f64}),
    );
}

fn stages_closed_loop(frames: &[AudioFrame], k: usize) {
    let (mut input, mut chain, mut out) = Chain::new(k, 256);
    let mut lat = Vec::with_capacity(frames.len());
    for f in frames {
        let t = Instant::now();
        let _ = input.try_push(*f);
        chain.pump();
        let got = out.try_pop();
        lat.push(t.elapsed());
        assert!(got.is_some(), "the frame came through");
    }
    emit(
        json!({"workload": "stages_closed_loop", "k": k, "frames": lat.len(),
        "p50_us": percentile(&mut lat, 0.5), "p99_us": percentile(&mut lat, 0.99)}),
    );
}

// ---- Silero per frame ------------------------------------------------------

fn silero_per_frame(frames: &[AudioFrame]) {
    let Ok(mut vad) = VadKind::Silero.try_build() else {
        emit(
            json!({"workload": "silero_per_frame", "skipped": "no Silero model (colloquy models fetch)"}),
        );
        return;
    };
    let mut acc = 0.0f32;
    let cpu0 = process_cpu();
    for f in frames {
        acc += vad.speech_probability(f);
    }
    let cpu = process_cpu() - cpu0;
    std::hint::black_box(acc);
    emit(
        json!({"workload": "silero_per_frame", "frames": frames.len(),
        "cpu_us_per_frame": cpu.as_secs_f64() * 1e6 / frames.len() as f64}),
    );
}

/// The input path with Silero: `Session::process` per 20 ms of 16 kHz mono.
fn vad_path(pcm: &[i16]) {
    let config = SessionConfig {
        vad: VadKind::Silero,
        pacing: Pacing::Arrival,
        ..SessionConfig::default()
    };
    let (mut prod, cons) = input_ring(FRAME_SAMPLES * 8);
    let (out, mut out_cons) = output_ring(16_000);
    let Ok(mut session) = Session::new(config, Arc::new(ParrotAgent), cons, out) else {
        emit(json!({"workload": "vad_path_per_frame", "skipped": "no Silero model"}));
        return;
    };
    let input: Vec<f32> = pcm.iter().map(|&s| s as f32 / 32768.0).collect();
    let mut playback = [0.0f32; FRAME_SAMPLES];
    let mut frames = 0usize;
    let cpu0 = process_cpu();
    for chunk in input.chunks_exact(FRAME_SAMPLES) {
        prod.push(chunk);
        session.process(|_| frames += 1);
        out_cons.read(&mut playback);
    }
    let cpu = process_cpu() - cpu0;
    emit(json!({"workload": "vad_path_per_frame", "frames": frames,
        "cpu_us_per_frame": cpu.as_secs_f64() * 1e6 / frames.max(1) as f64}));
}

// ---- idle sessions ---------------------------------------------------------

fn idle_sessions(n: usize, vad: VadKind) {
    if vad.try_build().is_err() {
        emit(
            json!({"workload": "idle_session_kib", "vad": "silero", "skipped": "no Silero model"}),
        );
        return;
    }
    let before = rss_kib();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        // As the WebSocket server builds one (conn.rs: input ring of 200 ms
        // at the page's 48 kHz, output ring of 500 ms).
        let config = SessionConfig {
            vad,
            input_rate: 48_000,
            pacing: Pacing::Arrival,
            ..SessionConfig::default()
        };
        let (prod, cons) = input_ring(48_000 / 5);
        let (out, out_cons) = output_ring(8_000);
        let session = Session::new(config, Arc::new(ParrotAgent), cons, out).expect("session");
        held.push((session, prod, out_cons));
    }
    let after = rss_kib();
    let kib = after.saturating_sub(before) as f64 / n as f64;
    emit(
        json!({"workload": "idle_session_kib", "vad": if vad == VadKind::Silero { "silero" } else { "default" },
        "sessions": n, "kib_per_session": kib}),
    );
    drop(held);
}

// ---- interruption with queued audio ---------------------------------------

struct Recorder(Arc<Mutex<Vec<TurnJob>>>);

impl Agent for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn start(&self, job: TurnJob, _r: Reporter) {
        if let Ok(mut j) = self.0.lock() {
            j.push(job);
        }
    }
    fn transcribes(&self) -> bool {
        true
    }
}

/// 2 s of reply queued, 200 ms played, then a barge-in: the confirming
/// frame's tick plus the transport's next read, which must be silent.
fn one_interruption() -> Duration {
    let jobs = Arc::new(Mutex::new(Vec::new()));
    let (tx, _rx) = crossbeam_channel::unbounded();
    let (prod, mut cons) = output_ring(16_000 / 2);
    let playout = Playout::new(prod, 16_000).expect("playout");
    let config = CoordinatorConfig::default();
    let confirm_frames = config.interrupt_min_ms / 20;
    let mut c = Coordinator::new(
        config,
        Arc::new(Recorder(jobs.clone())),
        tx,
        CostMode::Zero,
        playout,
        CancellationToken::new(),
    );
    c.on_user_stopped(&[1; 16_000], 1000, 500, 1000);
    let job = jobs.lock().expect("jobs")[0].clone();
    c.on_message(
        TaskMessage {
            epoch: job.epoch,
            task: job.task,
            dispatched_ms: 1000,
            cost: Duration::ZERO,
            payload: Payload::Speech {
                text: "A reply two seconds long.".into(),
                audio: vec![9000; 32_000].into(),
            },
        },
        1000,
    );
    let mut buf = [0.0f32; FRAME_SAMPLES];
    let mut now = 16_000u64;
    for _ in 0..10 {
        now += 320;
        c.on_frame(now, now / 16);
        cons.read(&mut buf);
    }
    c.on_user_started(now, now / 16);
    for _ in 0..confirm_frames.saturating_sub(1) {
        now += 320;
        c.on_frame(now, now / 16);
        cons.read(&mut buf);
    }
    now += 320;
    let t = Instant::now();
    c.on_frame(now, now / 16);
    let n = cons.read(&mut buf);
    let d = t.elapsed();
    assert_eq!(n, 0, "audio after the barge-in");
    d
}

fn interruption(n: usize) {
    let mut v: Vec<Duration> = (0..n).map(|_| one_interruption()).collect();
    emit(
        json!({"workload": "interruption", "runs": n, "queued_ms": 2000,
        "p50_us": percentile(&mut v, 0.5), "p99_us": percentile(&mut v, 0.99)}),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench") && std::env::var_os("PEER_QUICK").is_none();
    if std::env::var_os("PEER_FETCH_MODELS").is_some() && VadKind::Silero.try_build().is_err() {
        let store = colloquy::models::ModelStore::from_env();
        for id in [ModelId::OnnxRuntime, ModelId::SileroVad] {
            if let Err(e) = store.fetch(id, false) {
                eprintln!("cannot fetch {id:?}: {e}");
            }
        }
    }
    let total_ms = if full { 40_000 } else { 1_000 };
    let pcm = recording(total_ms);
    if let Ok(path) = std::env::var("PEER_RECORDING") {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).expect("PEER_RECORDING: create");
        for &s in &pcm {
            w.write_sample(s).expect("write");
        }
        w.finalize().expect("finalize");
    }
    let frames = frames_of(&pcm);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    emit(
        json!({"workload": "meta", "side": "colloquy", "frames": frames.len(),
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")}),
    );
    // Warm the caches and the allocator once, off the record.
    stages_flood_quiet(&frames);
    for k in [1, 5, 10] {
        stages_flood(&frames, k);
        stages_closed_loop(&frames, k);
    }
    silero_per_frame(&frames);
    vad_path(&pcm);
    let (n_default, n_silero) = if full { (200, 50) } else { (2, 1) };
    idle_sessions(n_default, VadKind::default());
    idle_sessions(n_silero, VadKind::Silero);
    interruption(if full { 50 } else { 2 });
}

fn stages_flood_quiet(frames: &[AudioFrame]) {
    let (mut input, mut chain, mut out) = Chain::new(5, 256);
    for batch in frames.chunks(64) {
        for f in batch {
            let _ = input.try_push(*f);
        }
        chain.pump();
        while out.try_pop().is_some() {}
    }
}
