//! The interruption path: from the frame that confirms a barge-in to the
//! transport's next read coming back silent. Measures `Coordinator::on_frame`
//! on the confirming frame (played count, playout flush, epoch advance, task
//! cancellation, spoken prefix) plus the consumer's next 20 ms read. The
//! user-facing figure is this time plus at most one frame/callback period.

use colloquy::agent::{Agent, CostMode, Payload, Reporter, TaskMessage, TurnJob};
use colloquy::audio::output_ring;
use colloquy::turn::{Coordinator, CoordinatorConfig, Playout};
use criterion::{criterion_group, Criterion};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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

/// Returns the time of the confirming frame plus the next read, and checks
/// that read is silent.
fn one_barge_in() -> Duration {
    let jobs = Arc::new(Mutex::new(Vec::new()));
    let (tx, _rx) = crossbeam_channel::unbounded();
    let (prod, mut cons) = output_ring(16_000 * 8);
    let playout = Playout::new(prod, 16_000).expect("playout");
    let mut c = Coordinator::new(
        CoordinatorConfig::default(),
        Arc::new(Recorder(jobs.clone())),
        tx,
        CostMode::Zero,
        playout,
        CancellationToken::new(),
    );
    c.on_user_stopped(&[1; 16_000], 1000, 500, 1000);
    let job = jobs.lock().expect("jobs")[0].clone();
    for text in ["The first sentence of a reply.", "And a second one."] {
        c.on_message(
            TaskMessage {
                epoch: job.epoch,
                task: job.task,
                dispatched_ms: 1000,
                cost: Duration::ZERO,
                payload: Payload::Speech {
                    text: text.into(),
                    audio: vec![9000; 32_000].into(),
                },
            },
            1000,
        );
    }
    let mut buf = [0.0f32; 320];
    let mut now = 16_000u64;
    for _ in 0..25 {
        now += 320;
        c.on_frame(now, now / 16);
        cons.read(&mut buf);
    }
    c.on_user_started(now, now / 16);
    // Frames until just before confirmation (300 ms).
    for _ in 0..14 {
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

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("barge_in");
    g.bench_function("confirm_to_silent_read", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| one_barge_in()).sum())
    });
    g.finish();
    let mut v: Vec<Duration> = (0..200).map(|_| one_barge_in()).collect();
    v.sort();
    println!(
        "summary: confirmed barge-in → silent read p50 {:.1} µs p99 {:.1} µs (+ one 20 ms frame or device callback at most)",
        v[100].as_secs_f64() * 1e6,
        v[198].as_secs_f64() * 1e6
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
