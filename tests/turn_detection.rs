//! The turn detector on real human speech (LibriVox and CMU recordings from
//! Debian `pocketsphinx-testdata`): it finds the utterances of a recording
//! with known pauses, and a pause shorter than the endpointing silence does
//! not end the turn — with the default VAD (the others are compared in
//! `tests/vad_accuracy.rs`).

mod common;
use colloquy::vad::{segment, TurnConfig, VadKind};
use common::*;

const CLIPS: [&str; 5] = [
    "speech/librivox-0880.wav",
    "speech/cards-005.wav",
    "speech/librivox-0930.wav",
    "speech/cards-002.wav",
    "speech/librivox-0890.wav",
];

/// Clips separated by 1.5 s gaps: one turn per clip, boundaries within 250 ms
/// of the clip's speech (measured on the clean clip).
#[test]
fn finds_each_utterance_of_a_recording_with_known_pauses() {
    let mut pieces = vec![silence_ms(1000, 1)];
    for (i, c) in CLIPS.iter().enumerate() {
        pieces.push(load16k(c));
        pieces.push(silence_ms(1500, 10 + i as u32));
    }
    let (timeline, starts) = concat(&pieces);
    for kind in [VadKind::default()] {
        let turns = segment(&timeline, kind, TurnConfig::default());
        assert_eq!(turns.len(), CLIPS.len(), "{kind:?} found {turns:?}");
        for (i, c) in CLIPS.iter().enumerate() {
            let clip = &pieces[1 + 2 * i];
            let (s, e) = speech_bounds(clip);
            let (s, e) = (
                (starts[1 + 2 * i] + s) as i64,
                (starts[1 + 2 * i] + e) as i64,
            );
            let (ts, te) = (turns[i].0 as i64, turns[i].1 as i64);
            assert!((ts - s).abs() <= 4000, "{kind:?} {c}: start {ts} vs {s}");
            assert!((te - e).abs() <= 4000, "{kind:?} {c}: end {te} vs {e}");
        }
    }
}

/// A 300 ms pause inside an utterance (endpoint 400 ms) keeps one turn; a
/// 1000 ms pause makes two.
#[test]
fn a_pause_shorter_than_the_endpoint_does_not_end_the_turn() {
    let a = load16k("speech/librivox-0880.wav");
    let b = load16k("speech/cards-005.wav");
    let (_, a_end) = speech_bounds(&a);
    let (b_start, _) = speech_bounds(&b);
    let a = &a[..a_end];
    let b = &b[b_start..];
    for kind in [VadKind::default()] {
        for (pause_ms, want) in [(300usize, 1usize), (1000, 2)] {
            let (timeline, _) = concat(&[
                silence_ms(800, 2),
                a.to_vec(),
                silence_ms(pause_ms, 3),
                b.to_vec(),
                silence_ms(1200, 4),
            ]);
            let turns = segment(&timeline, kind, TurnConfig::default());
            assert_eq!(turns.len(), want, "{kind:?} pause {pause_ms} ms: {turns:?}");
        }
    }
}
