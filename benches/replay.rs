//! End-to-end replay benchmark: a 60 s conversation built from the real
//! recordings in `assets/speech/` (utterances with 3 s gaps), replayed with
//! the parrot agent at `--pace fast`. Reports time per replay; the speed
//! (× real time) is printed as a `summary:` line.

use colloquy::agent::parrot::ParrotAgent;
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions};
use criterion::{criterion_group, Criterion};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn sixty_second_conversation(dir: &Path) -> std::path::PathBuf {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/speech");
    let mut names: Vec<_> = std::fs::read_dir(&assets)
        .expect("assets")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    names.sort();
    let mut samples: Vec<i16> = Vec::new();
    'outer: loop {
        for p in &names {
            let audio = colloquy::audio::read_wav(p).expect("asset");
            samples.extend(colloquy::audio::resample_to_16k(&audio).expect("resample"));
            samples.extend(std::iter::repeat_n(0i16, 3 * 16_000));
            if samples.len() >= 60 * 16_000 {
                break 'outer;
            }
        }
    }
    samples.truncate(60 * 16_000);
    let path = dir.join("sixty.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).expect("create");
    for s in samples {
        w.write_sample(s).expect("write");
    }
    w.finalize().expect("finalize");
    path
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = sixty_second_conversation(dir.path());
    let mut opts = ReplayOptions::new(&input);
    opts.pace = Pace::Fast;
    opts.out_wav = Some(dir.path().join("out.wav"));
    opts.events = Some(dir.path().join("events.jsonl"));
    let mut g = c.benchmark_group("replay");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("parrot_60s_fast", |b| {
        b.iter(|| replay(&opts, Arc::new(ParrotAgent), SessionConfig::default()).expect("replay"))
    });
    g.finish();
    let report = replay(&opts, Arc::new(ParrotAgent), SessionConfig::default()).expect("replay");
    println!(
        "summary: replayed {:.1} s (60 s input + tail) in {:.3} s = {:.0}x real time, {} turns",
        report.timeline_ms as f64 / 1000.0,
        report.wall.as_secs_f64(),
        report.speed(),
        report.committed.len()
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
