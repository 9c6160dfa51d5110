//! End-to-end replay with the parrot agent on real recordings: the whole audio
//! path (WAV → ring → resample → VAD → turn detector → coordinator → playout →
//! timeline) and barge-in timing, on the virtual clock.

mod common;
use colloquy::agent::parrot::ParrotAgent;
use colloquy::frame::{Event, TimedEvent};
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions, ReplayReport};
use common::*;
use std::sync::Arc;

fn run(samples: &[i16], pace: Pace) -> ReplayReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.wav");
    write_wav16k(&input, samples);
    let mut opts = ReplayOptions::new(&input);
    opts.pace = pace;
    opts.out_wav = Some(dir.path().join("out.wav"));
    opts.events = Some(dir.path().join("events.jsonl"));
    let report = replay(&opts, Arc::new(ParrotAgent), SessionConfig::default()).expect("replay");
    // The files exist and agree with the report.
    let out = hound::WavReader::open(dir.path().join("out.wav")).expect("timeline wav");
    assert_eq!(out.spec().channels, 2);
    assert_eq!(out.len() as usize, report.user.len() * 2);
    let lines = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events");
    assert_eq!(lines.lines().count(), report.events.len());
    report
}

fn times_of(events: &[TimedEvent], kind: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.event.kind() == kind)
        .map(|e| e.t_ms)
        .collect()
}

fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f32>() / n as f32;
    let mb = b.iter().sum::<f32>() / n as f32;
    let cov: f32 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f32 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f32 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va.sqrt() * vb.sqrt()).max(1e-9)
}

/// Each utterance is spoken back once, right after the endpointing silence,
/// and the bot channel carries the user's own audio.
#[test]
fn the_parrot_speaks_each_utterance_back_after_the_endpoint() {
    let a = load16k("speech/librivox-0880.wav");
    let b = load16k("speech/cards-005.wav");
    let (timeline, _) = concat(&[
        silence_ms(1000, 1),
        a,
        silence_ms(5000, 2),
        b,
        silence_ms(5000, 3),
    ]);
    let report = run(&timeline, Pace::Instant);
    assert_eq!(report.committed.len(), 2, "events: {:?}", report.events);
    assert!(report.committed.iter().all(|r| !r.interrupted));
    let stops = times_of(&report.events, "speech_stopped");
    let speaks = times_of(&report.events, "bot_started_speaking");
    assert_eq!(stops.len(), 2);
    assert_eq!(speaks.len(), 2);
    for (i, (&stop, &speak)) in stops.iter().zip(&speaks).enumerate() {
        // Parrot costs nothing under Pace::Instant: first audio within one frame.
        assert!(
            speak >= stop && speak - stop <= 20,
            "turn {i}: stop {stop} speak {speak}"
        );
    }
    // The bot channel carries the utterance from its detected start: its
    // envelope matches the user's (best alignment within ±2 frames).
    let onsets: Vec<u64> = report
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::SpeechStarted { at_ms } => Some(at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(onsets.len(), 2);
    for i in 0..2 {
        // The utterance handed to the agent starts `lead_ms` before the onset.
        let lead = SessionConfig::default().lead_ms as usize;
        let user_start = (onsets[i] as usize).saturating_sub(lead) * 16;
        let bot_start = speaks[i] as usize * 16;
        assert!(
            colloquy::frame::rms(&report.bot[bot_start..bot_start + 16_000]) > 0.01,
            "turn {i}: bot silent"
        );
        let user_env = envelope(&report.user[user_start..user_start + 32_000]);
        let c = (0..=4)
            .map(|lag| {
                let from = (bot_start + lag * 320).saturating_sub(640);
                correlation(&user_env, &envelope(&report.bot[from..from + 32_000]))
            })
            .fold(f32::MIN, f32::max);
        assert!(c > 0.95, "turn {i}: envelope correlation {c}");
    }
    // Nothing plays before the first reply.
    assert!(report.bot[..stops[0] as usize * 16].iter().all(|&s| s == 0));
}

/// The same input gives the same events, in the same order, at the same
/// times, and the same bot audio (virtual clock).
#[test]
fn replay_is_deterministic() {
    let (timeline, _) = concat(&[
        silence_ms(500, 4),
        load16k("speech/librivox-0930.wav"),
        silence_ms(4000, 5),
    ]);
    let r1 = run(&timeline, Pace::Instant);
    let r2 = run(&timeline, Pace::Instant);
    assert!(!r1.events.is_empty());
    assert_eq!(r1.events, r2.events);
    assert_eq!(r1.bot, r2.bot);
}

/// Speech over the bot for longer than the interruption threshold stops the
/// bot within one frame, commits only what was heard (marked interrupted), and
/// the interrupting question is answered next.
#[test]
fn a_barge_in_silences_the_bot_within_one_frame_and_commits_the_heard_prefix() {
    // Cut in at the start, the middle and near the end of a 5.3 s reply.
    for cut_ms in [200usize, 1500, 4200] {
        barge_in_at(cut_ms);
    }
}

fn barge_in_at(cut_ms: usize) {
    let a = load16k("speech/librivox-0890.wav");
    let q = load16k("speech/q-germany-f3.wav");
    let (mut timeline, _) = concat(&[silence_ms(800, 6), a.clone(), silence_ms(9000, 7)]);
    // First pass without interruption: when does the reply start?
    let quiet = run(&timeline, Pace::Instant);
    let reply_start = times_of(&quiet.events, "bot_started_speaking")[0] as usize;
    // Second pass: a second voice cuts in `cut_ms` into the reply.
    mix(&mut timeline, &q, (reply_start + cut_ms) * 16);
    timeline.extend(silence_ms(6000, 8));
    let report = run(&timeline, Pace::Instant);

    let clear = times_of(&report.events, "clear_playback");
    assert_eq!(clear.len(), 1, "one barge-in: {:?}", report.events);
    let clear_sample = clear[0] as usize * 16;
    // Bot channel silent from the frame after the confirmation until the next reply.
    let next_reply = times_of(&report.events, "bot_started_speaking")
        .into_iter()
        .find(|&t| t > clear[0])
        .expect("the interrupting question is answered");
    let quiet = &report.bot[clear_sample + 320..next_reply as usize * 16];
    assert!(
        quiet.iter().all(|&s| s == 0),
        "old reply leaked after the barge-in"
    );
    // The bot was audible right before the barge-in.
    assert!(colloquy::frame::rms(&report.bot[reply_start * 16..clear_sample]) > 0.003);

    let interrupted = report
        .events
        .iter()
        .find_map(|e| match &e.event {
            Event::Interrupted { played_ms, .. } => Some(*played_ms),
            _ => None,
        })
        .expect("interrupted event");
    // Heard: the cut, plus the interruption threshold (300 ms) counted from
    // the first voiced frame, plus at most a few frames of VAD onset.
    let cut = cut_ms as u64;
    assert!(
        (cut + 280..=cut + 400).contains(&interrupted),
        "cut at {cut_ms} ms: played {interrupted} ms"
    );
    assert_eq!(report.committed.len(), 2);
    assert!(report.committed[0].interrupted);
    assert!(report.committed[0]
        .messages
        .last()
        .is_some_and(|m| m.interrupted));
    assert!(!report.committed[1].interrupted);
}

/// A short cough-like burst over the bot (shorter than the interruption
/// threshold) does not stop it; a slightly longer one is a false interruption
/// and the bot resumes, committing the whole reply.
#[test]
fn a_cough_does_not_stop_the_bot_and_a_short_noise_is_recovered() {
    let a = load16k("speech/librivox-0870.wav");
    let (_, a_end) = speech_bounds(&a);
    let burst_src = load16k("speech/cards-002.wav");
    let (b_start, _) = speech_bounds(&burst_src);
    for (burst_ms, expect_clear) in [(160usize, false), (500, true)] {
        let (mut timeline, starts) =
            concat(&[silence_ms(800, 9), a.clone(), silence_ms(12_000, 10)]);
        let at = starts[1] + a_end + 500 * 16 + 2000 * 16;
        mix(
            &mut timeline,
            &burst_src[b_start..b_start + burst_ms * 16],
            at,
        );
        let report = run(&timeline, Pace::Instant);
        let clears = times_of(&report.events, "clear_playback").len();
        assert_eq!(
            clears > 0,
            expect_clear,
            "burst {burst_ms} ms: {:?}",
            report.events
        );
        if expect_clear {
            assert_eq!(times_of(&report.events, "false_interruption").len(), 1);
            assert_eq!(times_of(&report.events, "resumed").len(), 1);
        }
        assert_eq!(report.committed.len(), 1, "burst {burst_ms} ms");
        assert!(
            !report.committed[0].interrupted,
            "burst {burst_ms} ms: reply must complete"
        );
    }
}

/// Speculative turns (coordinator invariant 8): a pause shorter than the
/// endpoint opens a turn that is dropped when the user goes on, and the
/// whole utterance is answered once; at the real end, the turn opened at the
/// pause is the one that answers, and nothing plays before the endpoint.
#[test]
fn a_turn_opened_at_a_pause_is_dropped_when_the_user_goes_on_and_used_when_they_stop() {
    // Two clips without their silent edges, 240 ms apart: a pause longer
    // than pause_ms (100) and shorter than the endpoint (400).
    let trim = |v: Vec<i16>| {
        let loud = |s: &i16| s.unsigned_abs() > 400;
        let a = v.iter().position(loud).unwrap_or(0);
        let b = v.iter().rposition(loud).map_or(v.len(), |i| i + 1);
        v[a..b].to_vec()
    };
    let (timeline, _) = concat(&[
        silence_ms(500, 6),
        trim(load16k("speech/cards-002.wav")),
        silence_ms(240, 7),
        trim(load16k("speech/cards-003.wav")),
        silence_ms(5000, 8),
    ]);
    let report = run(&timeline, Pace::Instant);
    assert_eq!(report.committed.len(), 1, "events: {:#?}", report.events);
    let kinds: Vec<&str> = report.events.iter().map(|e| e.event.kind()).collect();
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    // A turn opened at every pause (at least the gap and the real end's
    // pause; a 100 ms gap inside a clip opens one too); each but the last
    // was cancelled when the user went on, the last answered.
    assert!(count("speech_paused") >= 2, "{kinds:?}");
    assert!(count("turn_opened") >= 2, "{kinds:?}");
    assert_eq!(
        count("task_cancelled"),
        count("turn_opened") - 1,
        "{kinds:?}"
    );
    let opened = times_of(&report.events, "turn_opened");
    let stopped = times_of(&report.events, "speech_stopped");
    let speaks = times_of(&report.events, "bot_started_speaking");
    assert_eq!((stopped.len(), speaks.len()), (1, 1));
    // The answering turn opened at the final pause, 300 ms before the
    // endpoint (400 − 100), and still spoke only once the endpoint passed.
    assert_eq!(stopped[0] - opened[opened.len() - 1], 300);
    assert!(speaks[0] >= stopped[0] && speaks[0] - stopped[0] <= 20);
    assert!(report.bot[..stopped[0] as usize * 16]
        .iter()
        .all(|&s| s == 0));
    // The reply is the whole utterance: both clips, not the first alone.
    let heard = report
        .bot
        .iter()
        .filter(|&&s| s.unsigned_abs() > 300)
        .count();
    let first = trim(load16k("speech/cards-002.wav"));
    let first_loud = first.iter().filter(|&&s| s.unsigned_abs() > 300).count();
    assert!(
        heard > first_loud + first_loud / 4,
        "the reply holds only the first part ({heard} vs {first_loud} loud samples)"
    );
}
