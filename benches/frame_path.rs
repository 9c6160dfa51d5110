//! Data-plane benchmarks: ring push/pop, edge resampling, VAD per frame, and
//! the frame path through K = 1, 5, 10 pass-through stages in three modes:
//! - flood: frames pushed as fast as possible (throughput, CPU per frame);
//! - closed loop: one frame in flight across two threads (round-trip latency);
//! - paced: one frame every 20 ms, as a live transport would (added latency).
//!
//! Closed-loop and paced percentiles are printed as `summary:` lines after the
//! criterion groups (criterion reports means).

use colloquy::audio::{input_ring, EdgeResampler};
use colloquy::frame::AudioFrame;
use colloquy::pipeline::{frame_ring, FrameStage, PassThrough, StageChain};
use colloquy::vad::VadKind;
use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use ringbuf::traits::{Consumer, Producer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn speech_frames() -> Vec<AudioFrame> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/speech/librivox-0870.wav"
    );
    let audio = colloquy::audio::read_wav(std::path::Path::new(path)).expect("asset");
    let pcm = colloquy::audio::resample_to_16k(&audio).expect("resample");
    pcm.chunks_exact(320)
        .enumerate()
        .map(|(i, c)| {
            let mut f = AudioFrame::silent(i as u64 * 320);
            f.samples.copy_from_slice(c);
            f
        })
        .collect()
}

fn rings(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    let (mut p, mut cons) = input_ring(320 * 64);
    let frame = [0.25f32; 320];
    let mut out = [0.0f32; 320];
    g.throughput(Throughput::Elements(320));
    g.bench_function("push_pop_20ms_f32", |b| {
        b.iter(|| {
            p.push(black_box(&frame));
            black_box(cons.pop(&mut out));
        })
    });
    g.finish();
}

fn resampling(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample_20ms");
    for (rate, ch) in [(48_000u32, 2u16), (44_100, 2), (16_000, 1), (8_000, 1)] {
        let input = vec![0.1f32; (rate / 50) as usize * ch as usize];
        let mut r = EdgeResampler::new(rate, ch, 16_000).expect("resampler");
        g.bench_function(
            BenchmarkId::from_parameter(format!("{rate}Hz_{ch}ch_to_16k")),
            |b| {
                b.iter(|| {
                    let mut n = 0;
                    r.process(black_box(&input), |s| n += s.len());
                    black_box(n)
                })
            },
        );
    }
    g.finish();
}

fn vad(c: &mut Criterion) {
    let frames = speech_frames();
    let mut g = c.benchmark_group("vad_per_frame");
    let silero = VadKind::Silero
        .try_build()
        .is_ok()
        .then_some(VadKind::Silero);
    for kind in VadKind::ALL.into_iter().chain(silero) {
        let mut vad = kind.build();
        let mut i = 0;
        g.bench_function(BenchmarkId::from_parameter(format!("{kind:?}")), |b| {
            b.iter(|| {
                i = (i + 1) % frames.len();
                black_box(vad.speech_probability(&frames[i]))
            })
        });
    }
    g.finish();
}

fn chain(
    k: usize,
) -> (
    colloquy::pipeline::FrameProducer,
    StageChain,
    colloquy::pipeline::FrameConsumer,
) {
    let (inp, in_cons) = frame_ring(256);
    let (out_prod, out) = frame_ring(256);
    let stages: Vec<Box<dyn FrameStage>> = (0..k)
        .map(|_| Box::new(PassThrough::default()) as Box<dyn FrameStage>)
        .collect();
    (inp, StageChain::new(stages, in_cons, out_prod, 256), out)
}

/// Flood: one thread pushes, pumps and pops batches of frames.
fn flood(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_path_flood");
    let frame = AudioFrame::silent(0);
    for k in [1usize, 5, 10] {
        let (mut inp, mut ch, mut out) = chain(k);
        g.throughput(Throughput::Elements(64));
        g.bench_function(BenchmarkId::from_parameter(format!("K={k}")), |b| {
            b.iter(|| {
                for _ in 0..64 {
                    let _ = inp.try_push(frame);
                }
                ch.pump();
                let mut n = 0;
                while out.try_pop().is_some() {
                    n += 1;
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

/// A pipeline thread that spins on its input ring: the real-time loop shape.
struct Worker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(mut ch: StageChain) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if ch.pump() == 0 {
                    std::hint::spin_loop();
                }
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn round_trip(
    inp: &mut colloquy::pipeline::FrameProducer,
    out: &mut colloquy::pipeline::FrameConsumer,
    frame: AudioFrame,
) -> Duration {
    let t = Instant::now();
    let _ = inp.try_push(frame);
    loop {
        if out.try_pop().is_some() {
            return t.elapsed();
        }
        std::hint::spin_loop();
    }
}

/// Closed loop: one frame in flight, main thread ↔ pipeline thread.
fn closed_loop(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_path_closed_loop");
    let frame = AudioFrame::silent(0);
    for k in [1usize, 5, 10] {
        let (mut inp, ch, mut out) = chain(k);
        let _worker = Worker::start(ch);
        g.bench_function(BenchmarkId::from_parameter(format!("K={k}")), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| round_trip(&mut inp, &mut out, frame))
                    .sum()
            })
        });
    }
    g.finish();
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (p(0.5), p(0.99))
}

/// Prints p50/p99 for closed loop (10 000 round trips) and paced real time
/// (250 frames, one every 20 ms) for each K.
fn summary() {
    let frame = AudioFrame::silent(0);
    let paced_frames = if std::env::args().any(|a| a == "--bench") {
        250
    } else {
        5
    };
    for k in [1usize, 5, 10] {
        let (mut inp, ch, mut out) = chain(k);
        let _worker = Worker::start(ch);
        for _ in 0..1000 {
            round_trip(&mut inp, &mut out, frame);
        }
        let closed: Vec<Duration> = (0..10_000)
            .map(|_| round_trip(&mut inp, &mut out, frame))
            .collect();
        let (c50, c99) = percentiles(closed);
        let mut paced = Vec::new();
        let start = Instant::now();
        for i in 0..paced_frames {
            let due = start + Duration::from_millis(20 * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            paced.push(round_trip(&mut inp, &mut out, frame));
        }
        let (r50, r99) = percentiles(paced);
        println!(
            "summary: K={k:<2} closed-loop p50 {c50:.2} µs p99 {c99:.2} µs | paced p50 {r50:.2} µs p99 {r99:.2} µs"
        );
    }
}

criterion_group!(benches, rings, resampling, vad, flood, closed_loop);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
