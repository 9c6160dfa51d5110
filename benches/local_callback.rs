//! Cost of the local transport's device callback bodies per call
//! (`transport/local/callback.rs`): what runs on the audio thread besides
//! cpal itself. Typical PulseAudio/ALSA buffers: 10–20 ms at 48 kHz.
//!
//! - input: stereo f32 (fast path) and stereo i16 (converted) into the input ring;
//! - output: mono f32 from the output ring duplicated into stereo f32 / i16,
//!   with a reply playing (ring refilled between calls, outside the timing).

use colloquy::audio::{input_ring, output_ring};
use colloquy::transport::local::callback::{CallbackShared, InputCallback, OutputCallback};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn input(c: &mut Criterion) {
    let mut g = c.benchmark_group("local_input_callback");
    for frames in [480usize, 960] {
        let (p, mut cons) = input_ring(frames * 2 * 64);
        let mut cb = InputCallback::new(p, 2, Arc::new(CallbackShared::default()));
        let data_f32: Vec<f32> = (0..frames * 2).map(|i| (i as f32 * 0.01).sin()).collect();
        let data_i16: Vec<i16> = data_f32.iter().map(|&s| (s * 20000.0) as i16).collect();
        let mut sink = vec![0.0f32; frames * 2 * 64];
        g.bench_function(BenchmarkId::new("stereo_f32", frames), |b| {
            b.iter(|| {
                cb.process_f32(std::hint::black_box(&data_f32));
                if cons.available() > frames * 2 * 32 {
                    cons.pop(&mut sink);
                }
            })
        });
        g.bench_function(BenchmarkId::new("stereo_i16", frames), |b| {
            b.iter(|| {
                cb.process::<i16>(std::hint::black_box(&data_i16));
                if cons.available() > frames * 2 * 32 {
                    cons.pop(&mut sink);
                }
            })
        });
    }
    g.finish();
}

fn output(c: &mut Criterion) {
    let mut g = c.benchmark_group("local_output_callback");
    for frames in [480usize, 960] {
        let (mut prod, cons) = output_ring(frames * 4);
        let shared = Arc::new(CallbackShared::default());
        shared.bot_speaking.store(true, Ordering::Release);
        let mut cb = OutputCallback::new(cons, 2, shared.clone());
        let reply: Vec<f32> = (0..frames).map(|i| (i as f32 * 0.02).sin() * 0.3).collect();
        let mut out_f32 = vec![0.0f32; frames * 2];
        let mut out_i16 = vec![0i16; frames * 2];
        g.bench_function(BenchmarkId::new("stereo_f32", frames), |b| {
            b.iter_batched(
                || {
                    prod.write(&reply);
                },
                |_| cb.process(std::hint::black_box(&mut out_f32[..])),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(BenchmarkId::new("stereo_i16", frames), |b| {
            b.iter_batched(
                || {
                    prod.write(&reply);
                },
                |_| cb.process(std::hint::black_box(&mut out_i16[..])),
                BatchSize::SmallInput,
            )
        });
        let _ = shared.take_playback_level();
    }
    g.finish();
}

criterion_group!(benches, input, output);
criterion_main!(benches);
