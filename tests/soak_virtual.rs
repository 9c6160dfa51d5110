//! Soak on the virtual clock (issue 18): a one-hour conversation through a
//! whole [`Session`] — resampling, VAD, turn detector, coordinator, playout —
//! with barge-ins every third turn, driven frame by frame as replay does
//! (`Pacing::Charged`, zero cost: results land on the session clock, so the
//! run is deterministic and takes seconds, not an hour).
//!
//! The caller is scripted and reacts to the bot: it says a recording, waits
//! for the reply, and on every third turn cuts in 800 ms after the bot
//! starts speaking; otherwise it waits until the reply ended. Two agents:
//! the parrot, and a scripted model agent that reports what the voice agent
//! does — a transcript, tokens, then four spoken sentences of 900 ms each —
//! so barge-ins are judged on words (`transcribes`), as with real models.
//!
//! Checked (deterministic): the conversation goes the whole hour; every
//! turn is committed, the cut ones marked interrupted; no task is left
//! running and no outcome is given twice; each turn's latency on the session
//! clock (end of speech → first bot audio) stays within a fixed band.
//! Memory, deterministically: the in-memory history stays within its bound
//! (`turn/history.rs`: at most `DEFAULT_HISTORY_MESSAGES` plain messages,
//! the rest dropped from memory), and the live heap (bytes allocated and not
//! freed, counted by this binary's global allocator) sampled at the same
//! point of every turn (its commit) does not grow once the bound is reached:
//! its least-squares slope over the last two thirds of the turns is under
//! 16 bytes per turn (an unbounded history grows ≈ 300 bytes per turn).
//! Reported, not asserted: the slopes of the process's RSS (KiB per
//! virtual minute) and of the per-turn latency (ms per turn) — both
//! should be about zero.

mod common;
use colloquy::agent::parrot::ParrotAgent;
use colloquy::agent::{Agent, Payload, Reporter, TurnJob};
use colloquy::audio::{input_ring, output_ring};
use colloquy::frame::{Event, FRAME_SAMPLES};
use colloquy::session::{Pacing, Session, SessionConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Bytes allocated and not yet freed, the whole process.
static LIVE: AtomicI64 = AtomicI64::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const HOUR_MS: u64 = 3_600_000;
const BARGE_EVERY: u64 = 3;
const BARGE_AFTER_MS: u64 = 800;

/// What the scripted caller is doing.
enum Caller {
    /// Saying utterance `i` from sample `at`.
    Speaking { clip: usize, at: usize },
    /// Waiting (noise) until the bot starts (then maybe cuts in), or until
    /// it stopped.
    Waiting { since_ms: u64 },
}

struct SoakReport {
    turns: u64,
    interrupted: u64,
    latencies: Vec<(u64, u64)>,
    rss: Vec<(f64, u64)>,
    /// Live heap bytes at each commit.
    live: Vec<i64>,
    /// Messages the coordinator keeps, and plain messages it dropped.
    history_kept: usize,
    history_dropped: u64,
    wall_secs: f64,
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

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn soak(agent: Arc<dyn Agent>, duration_ms: u64) -> SoakReport {
    let clips: Vec<Vec<i16>> = [
        "speech/librivox-0880.wav",
        "speech/q-france.wav",
        "speech/cards-005.wav",
        "speech/q-germany-f3.wav",
        "speech/librivox-0930.wav",
        "speech/q-week.wav",
    ]
    .iter()
    .map(|c| common::load16k(c))
    .collect();
    let noise = common::noise(16_000, 7);
    let config = SessionConfig {
        input_rate: 16_000,
        input_channels: 1,
        output_rate: 16_000,
        pacing: Pacing::Charged,
        cost_mode: colloquy::agent::CostMode::Zero,
        ..SessionConfig::default()
    };
    let (mut input, in_cons) = input_ring(FRAME_SAMPLES * 16);
    let (out_prod, mut output) = output_ring(16_000 * 8);
    let mut session = Session::new(config, agent, in_cons, out_prod).expect("session");
    let mut out_frame = [0.0f32; FRAME_SAMPLES];
    let mut frame = [0.0f32; FRAME_SAMPLES];
    let mut caller = Caller::Speaking { clip: 0, at: 0 };
    let mut said = 0u64;
    let mut bot_speaking_since: Option<u64> = None;
    let mut report = SoakReport {
        turns: 0,
        interrupted: 0,
        // Sized up front: the report's own growth must not count as the
        // session's (live heap check).
        latencies: Vec::with_capacity(4096),
        rss: Vec::with_capacity(128),
        live: Vec::with_capacity(4096),
        history_kept: 0,
        history_dropped: 0,
        wall_secs: 0.0,
    };
    let wall = Instant::now();
    let mut noise_at = 0usize;
    let mut next_rss = 0u64;
    while session.now_ms() < duration_ms {
        let now = session.now_ms();
        // The caller's next 20 ms.
        let mut speaking_done = None;
        let mut next = None;
        match &mut caller {
            Caller::Speaking { clip, at } => {
                let c = &clips[*clip % clips.len()];
                for (i, s) in frame.iter_mut().enumerate() {
                    let v = c.get(*at + i).copied().unwrap_or(0) / 2
                        + noise[(noise_at + i) % noise.len()];
                    *s = f32::from(v) / 32768.0;
                }
                *at += FRAME_SAMPLES;
                if *at >= c.len() {
                    speaking_done = Some(());
                }
            }
            Caller::Waiting { since_ms } => {
                for (i, s) in frame.iter_mut().enumerate() {
                    *s = f32::from(noise[(noise_at + i) % noise.len()]) / 32768.0;
                }
                let barge = said % BARGE_EVERY == 0;
                let start_next = match bot_speaking_since {
                    Some(t) if barge => now >= t + BARGE_AFTER_MS,
                    Some(_) => false,
                    // The reply ended (or never came): talk again after 800 ms.
                    None => now >= *since_ms + 800 && !session.busy(),
                };
                if start_next || now > *since_ms + 30_000 {
                    next = Some(Caller::Speaking {
                        clip: said as usize,
                        at: 0,
                    });
                }
            }
        }
        if let Some(n) = next {
            caller = n;
        }
        noise_at = (noise_at + FRAME_SAMPLES) % noise.len();
        if speaking_done.is_some() {
            said += 1;
            caller = Caller::Waiting { since_ms: now };
        }
        input.push(&frame);
        session.settle(now + 20);
        session.process(|_| {
            output.read(&mut out_frame);
        });
        let _ = session.drain_committed();
        let events: Vec<_> = session.drain_events().collect();
        for e in events {
            match e.event {
                Event::BotStartedSpeaking { .. } => bot_speaking_since = Some(e.t_ms),
                Event::BotStoppedSpeaking { .. } | Event::Interrupted { .. } => {
                    if let Caller::Waiting { since_ms } = &mut caller {
                        *since_ms = e.t_ms;
                    }
                    bot_speaking_since = None;
                }
                Event::TurnLatency {
                    end_of_speech_ms,
                    first_audio_ms,
                    ..
                } => report
                    .latencies
                    .push((e.t_ms, first_audio_ms.saturating_sub(end_of_speech_ms))),
                Event::Committed { interrupted, .. } => {
                    report.turns += 1;
                    report.interrupted += u64::from(interrupted);
                    report.live.push(LIVE.load(Ordering::Relaxed));
                    let kept = session.coordinator().history().len();
                    assert!(
                        kept <= colloquy::turn::DEFAULT_HISTORY_MESSAGES,
                        "the history kept {kept} messages, over its bound"
                    );
                }
                _ => {}
            }
        }
        if now >= next_rss {
            report.rss.push((now as f64 / 60_000.0, rss_kib()));
            next_rss += 60_000;
        }
    }
    session.shutdown();
    let _ = session.drain_committed();
    for e in session.drain_events() {
        if let Event::Committed { interrupted, .. } = e.event {
            report.turns += 1;
            report.interrupted += u64::from(interrupted);
        }
    }
    assert_eq!(session.coordinator().in_flight(), 0, "no task left running");
    assert_eq!(session.coordinator().outcome_conflicts(), 0, "invariant 4");
    report.history_kept = session.coordinator().history().len();
    report.history_dropped = session.coordinator().history_dropped();
    report.wall_secs = wall.elapsed().as_secs_f64();
    report
}

/// Slope (bytes per turn) of the live heap at commits over the last two
/// thirds of the turns (the history bound is reached in the first third).
fn live_slope(r: &SoakReport) -> f64 {
    let from = r.live.len() / 3;
    let points: Vec<(f64, f64)> = r.live[from..]
        .iter()
        .enumerate()
        .map(|(i, &b)| ((from + i) as f64, b as f64))
        .collect();
    slope(&points)
}

/// The memory checks both soaks share (see the module doc).
fn assert_memory_flat(name: &str, r: &SoakReport) {
    let kept = r.history_kept;
    let slope = live_slope(r);
    println!(
        "soak {name}: history kept {kept} messages, {} dropped from memory; live heap at commits {} -> {} bytes, \
         slope over the last two thirds {slope:.1} bytes/turn",
        r.history_dropped,
        r.live.first().copied().unwrap_or(0),
        r.live.last().copied().unwrap_or(0),
    );
    assert!(
        r.history_dropped > 0,
        "a long session reached its history bound"
    );
    assert!(
        slope.abs() < 16.0,
        "live heap grows {slope:.1} bytes per turn after the history bound"
    );
}

fn summarize(name: &str, r: &SoakReport) -> (f64, f64) {
    // Memory from minute 5 on (allocator and buffers warm).
    let rss: Vec<(f64, f64)> = r
        .rss
        .iter()
        .filter(|(m, _)| *m >= 5.0)
        .map(|&(m, k)| (m, k as f64))
        .collect();
    let lat: Vec<(f64, f64)> = r
        .latencies
        .iter()
        .enumerate()
        .map(|(i, &(_, l))| (i as f64, l as f64))
        .collect();
    let (rss_slope, lat_slope) = (slope(&rss), slope(&lat));
    println!(
        "soak {name}: {} turns ({} interrupted) in {:.1} s wall for {} min of conversation; \
         RSS {} -> {} KiB, slope {rss_slope:.1} KiB/min; latency {}..{} ms, slope {lat_slope:.3} ms/turn",
        r.turns,
        r.interrupted,
        r.wall_secs,
        HOUR_MS / 60_000,
        r.rss.first().map_or(0, |x| x.1),
        r.rss.last().map_or(0, |x| x.1),
        r.latencies.iter().map(|x| x.1).min().unwrap_or(0),
        r.latencies.iter().map(|x| x.1).max().unwrap_or(0),
    );
    (rss_slope, lat_slope)
}

/// Scripted models: a transcript, tokens, four sentences of 900 ms each.
struct ScriptedModels;

impl Agent for ScriptedModels {
    fn name(&self) -> &str {
        "scripted"
    }

    fn start(&self, job: TurnJob, reporter: Reporter) {
        if job.cancel.is_cancelled() {
            return;
        }
        let turn = job.history.len() / 2;
        if !reporter.send(Payload::Transcript(format!(
            "tell me more about number {turn}"
        ))) {
            return;
        }
        for t in ["Sure", ",", " here", " it", " is", "."] {
            reporter.send(Payload::Token(t.to_string()));
        }
        for i in 0..4 {
            let tone: Vec<i16> = (0..14_400).map(|k| ((k % 50) as i16 - 25) * 200).collect();
            if !reporter.send(Payload::Speech {
                text: format!("Sentence {i} of the answer to turn {turn}."),
                audio: tone.into(),
            }) {
                return;
            }
        }
        reporter.send(Payload::Done);
    }

    fn transcribes(&self) -> bool {
        true
    }
}

/// Both soaks measure the process's RSS: they must not overlap.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn an_hour_with_the_parrot_and_barge_ins_stays_flat() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = soak(Arc::new(ParrotAgent), HOUR_MS);
    summarize("parrot", &r);
    assert_memory_flat("parrot", &r);
    // About 6 s per turn (3 s of speech, the reply, pauses): hundreds of
    // turns in the hour, a third of them cut.
    assert!(r.turns >= 300, "{} turns", r.turns);
    assert!(
        r.interrupted * 4 >= r.turns,
        "{} of {} interrupted",
        r.interrupted,
        r.turns
    );
    assert!(
        r.latencies.len() as u64 * 10 >= r.turns * 9,
        "{} replies for {} turns",
        r.latencies.len(),
        r.turns
    );
    // The parrot answers at the endpoint: the latency is the endpoint
    // silence, the same every turn (deterministic on the virtual clock).
    let (lo, hi) = (
        r.latencies.iter().map(|x| x.1).min().unwrap_or(0),
        r.latencies.iter().map(|x| x.1).max().unwrap_or(0),
    );
    assert!(hi - lo <= 200, "latency band {lo}..{hi} ms");
}

#[test]
fn an_hour_with_scripted_models_and_barge_ins_stays_flat() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = soak(Arc::new(ScriptedModels), HOUR_MS);
    summarize("scripted models", &r);
    assert_memory_flat("scripted models", &r);
    assert!(r.turns >= 300, "{} turns", r.turns);
    assert!(
        r.interrupted * 4 >= r.turns,
        "{} of {} interrupted",
        r.interrupted,
        r.turns
    );
    assert!(
        r.latencies.len() as u64 * 10 >= r.turns * 9,
        "{} replies for {} turns",
        r.latencies.len(),
        r.turns
    );
    let (lo, hi) = (
        r.latencies.iter().map(|x| x.1).min().unwrap_or(0),
        r.latencies.iter().map(|x| x.1).max().unwrap_or(0),
    );
    assert!(hi - lo <= 200, "latency band {lo}..{hi} ms");
}
