//! End of turn, `--turn silence` against `--turn smart`, on the evaluation
//! set `assets/eot/` (utterances with one mid-sentence pause of 0.5–1.2 s,
//! and the same utterances whole; `scripts/make-eot-set.sh`). Each utterance
//! is a fresh session (1 s of room noise, the utterance, 5 s of room noise)
//! replayed at `--pace fast`, which charges every stage's real compute time
//! (the Smart Turn model's included) to the timeline. Prints the README's
//! table:
//! - cut-offs: paused utterances whose end of turn was declared inside the
//!   mid-sentence pause (the agent answers half a sentence);
//! - false holds: whole utterances the judge held as incomplete past the
//!   endpoint;
//! - median silence from the end of a whole utterance to the parrot's first
//!   audio; voice-to-voice p50/p95 on the embedded stack (whole utterances).
//!
//! `cargo bench --bench eot` (parrot and the embedded stack with espeak-ng
//! speech; needs `colloquy models fetch`), `-- --parrot` (parrot only),
//! `-- --voice-only` (the embedded stack only). `EOT_VERBOSE=1` prints each utterance's verdicts. Under
//! `cargo test --all-targets` it only checks that it starts.

use colloquy::agent::parrot::ParrotAgent;
use colloquy::agent::stack::{StackOptions, VoiceStack};
use colloquy::agent::Agent;
use colloquy::eot::{EotConfig, TurnMode};
use colloquy::frame::{Event, TimedEvent};
use colloquy::models::ModelStore;
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Item {
    name: String,
    kind: String,
    cut_ms: u64,
    pause_ms: u64,
    paused: PathBuf,
    whole: PathBuf,
}

fn items() -> Vec<Item> {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let tsv = std::fs::read_to_string(assets.join("eot/set.tsv")).expect("assets/eot/set.tsv");
    tsv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Item {
                name: f[0].into(),
                kind: f[1].into(),
                cut_ms: f[2].parse().expect("cut_ms"),
                pause_ms: f[3].parse().expect("pause_ms"),
                paused: assets.join(f[4]),
                whole: assets.join(f[5]),
            }
        })
        .collect()
}

const LEAD_MS: u64 = 1000;

/// Room noise (≈ -60 dBFS), deterministic.
fn noise(ms: u64, seed: u32) -> Vec<i16> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..ms * 16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((x % 64) as i16) - 32
        })
        .collect()
}

fn timeline(path: &Path, dir: &Path) -> PathBuf {
    let audio = colloquy::audio::read_wav(path).expect("eval asset");
    let speech = colloquy::audio::resample_to_16k(&audio).expect("resample");
    let mut s = noise(LEAD_MS, 1);
    s.extend(speech);
    s.extend(noise(5000, 2));
    let out = dir.join("in.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&out, spec).expect("wav");
    for x in s {
        w.write_sample(x).expect("write");
    }
    w.finalize().expect("finalize");
    out
}

#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    mode: TurnMode,
    audio_model: bool,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "silence",
        mode: TurnMode::Silence,
        audio_model: false,
    },
    Variant {
        label: "smart (words only)",
        mode: TurnMode::Smart,
        audio_model: false,
    },
    Variant {
        label: "smart (words + Smart Turn)",
        mode: TurnMode::Smart,
        audio_model: true,
    },
];

fn run(agent: Arc<dyn Agent>, v: Variant, input: &Path) -> Vec<TimedEvent> {
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = timeline(input, dir.path());
    let mut opts = ReplayOptions::new(&wav);
    opts.pace = Pace::Fast;
    let config = SessionConfig {
        eot: EotConfig {
            mode: v.mode,
            audio_model: v.audio_model,
            ..EotConfig::default()
        },
        ..SessionConfig::default()
    };
    replay(&opts, agent, config).expect("replay").events
}

#[derive(Default)]
struct Tally {
    paused: usize,
    cut: usize,
    whole: usize,
    false_holds: usize,
    /// Whole utterances answered as two turns or more.
    split: usize,
    early: usize,
    /// End of speech → first bot audio, whole utterances (ms).
    first_audio: Vec<u64>,
}

fn pct(v: &[u64], q: f64) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize])
}

fn judged(events: &[TimedEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::TurnJudged {
                verdict,
                action,
                words,
                audio,
            } => Some(format!(
                "{}@{} {verdict} [{}; audio {}]",
                action,
                e.t_ms,
                words.as_deref().unwrap_or("-"),
                audio.map_or("-".into(), |p| format!("{p:.2}"))
            )),
            Event::Transcript { text, .. } => Some(format!("\"{text}\"")),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn evaluate(agent: Arc<dyn Agent>, v: Variant, set: &[Item], verbose: bool) -> Tally {
    let mut t = Tally::default();
    for item in set {
        // Paused: was the end of turn declared inside the pause?
        let ev = run(agent.clone(), v, &item.paused);
        // The second half starts at `to`: an end of turn declared before
        // then answers half a sentence.
        let to = LEAD_MS + item.cut_ms + item.pause_ms;
        let cut = ev
            .iter()
            .any(|e| matches!(e.event, Event::SpeechStopped { .. }) && e.t_ms <= to);
        t.paused += 1;
        t.cut += cut as usize;
        if verbose {
            println!(
                "  {:<8} paused {:<14} cut={cut} {}",
                v.label.split(' ').next().unwrap_or(""),
                item.name,
                judged(&ev)
            );
        }
        // Whole: held as incomplete? first audio?
        let ev = run(agent.clone(), v, &item.whole);
        let held = ev.iter().any(|e| {
            matches!(&e.event, Event::TurnJudged { verdict, action, .. } if action == "hold" && verdict == "incomplete")
        });
        t.whole += 1;
        t.false_holds += held as usize;
        t.split += (ev
            .iter()
            .filter(|e| matches!(e.event, Event::SpeechStopped { .. }))
            .count()
            > 1) as usize;
        t.early += ev
            .iter()
            .any(|e| matches!(&e.event, Event::TurnJudged { action, .. } if action == "early"))
            as usize;
        let end = ev.iter().find_map(|e| match e.event {
            Event::SpeechStopped { at_ms, .. } => Some(at_ms),
            _ => None,
        });
        let first = ev.iter().find_map(|e| match e.event {
            Event::BotStartedSpeaking { .. } => Some(e.t_ms),
            _ => None,
        });
        if let (Some(end), Some(first)) = (end, first) {
            t.first_audio.push(first.saturating_sub(end));
        }
        if verbose {
            println!(
                "  {:<8} whole  {:<14} held={held} {}",
                v.label.split(' ').next().unwrap_or(""),
                item.name,
                judged(&ev)
            );
        }
    }
    t
}

fn row(agent: &str, v: Variant, t: &Tally) -> String {
    let f = |x: Option<u64>| x.map_or("-".into(), |v| format!("{v} ms"));
    format!(
        "| {agent} | {} | {} of {} ({:.0} %) | {} of {} ({:.0} %) | {} | {} | {} / {} | {} |",
        v.label,
        t.cut,
        t.paused,
        100.0 * t.cut as f64 / t.paused.max(1) as f64,
        t.false_holds,
        t.whole,
        100.0 * t.false_holds as f64 / t.whole.max(1) as f64,
        t.split,
        t.early,
        f(pct(&t.first_audio, 0.5)),
        f(pct(&t.first_audio, 0.95)),
        t.first_audio.len(),
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("eot: run with `cargo bench --bench eot`");
        return;
    }
    let parrot_only = std::env::args().any(|a| a == "--parrot");
    let verbose = std::env::var("EOT_VERBOSE").is_ok_and(|v| v == "1");
    let set = items();
    let real = set.iter().filter(|i| i.kind == "real").count();
    println!(
        "end-of-turn set: {} utterances ({real} real, {} synthetic), each paused and whole; --pace fast (loaded 2-core machine)",
        set.len(),
        set.len() - real
    );
    let header = "| agent | end of turn | cut-offs at mid-sentence pauses | false holds (whole held as incomplete) | whole split in two | ended before the endpoint | first audio after end of speech p50 / p95 | answered |\n|---|---|---|---|---|---|---|---|";
    let mut rows = Vec::new();
    let parrot: Arc<dyn Agent> = Arc::new(ParrotAgent);
    let voice_only = std::env::args().any(|a| a == "--voice-only");
    for v in VARIANTS.into_iter().filter(|_| !voice_only) {
        let t = evaluate(parrot.clone(), v, &set, verbose);
        rows.push(row("parrot", v, &t));
        println!("{}", rows.last().expect("row"));
    }
    if !parrot_only {
        let store = ModelStore::from_env();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let stack = {
            let _guard = runtime.enter();
            VoiceStack::build(
                &StackOptions {
                    llm_threads: 1,
                    stt_threads: 2,
                    // espeak-ng: instant speech, so the set runs in minutes;
                    // the end of turn is the same with Piper.
                    tts_engine: colloquy::agent::stack::TtsEngine::Espeak,
                    ..StackOptions::default()
                },
                &store,
            )
            .expect("voice stack (run `colloquy models fetch`)")
        };
        let voice = stack.agent(runtime.handle().clone());
        for v in VARIANTS {
            let t = evaluate(voice.clone(), v, &set, verbose);
            rows.push(row("voice (embedded, espeak-ng)", v, &t));
            println!("{}", rows.last().expect("row"));
        }
    }
    println!("\n{header}");
    for r in rows {
        println!("{r}");
    }
}
