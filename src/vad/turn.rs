//! The turn-taking state machine: turns per-frame speech probabilities into
//! user speech start, short pauses, and end of turn.
//!
//! ```text
//!   Quiet ──(start_ms of consecutive voiced frames)──▶ Speaking
//!   Speaking ──(pause_ms unvoiced)──▶ emits Paused (once per gap)
//!   Speaking ──(voiced after a pause)──▶ emits Continued
//!   Speaking ──(endpoint_ms unvoiced)──▶ Quiet, emits Stopped
//! ```
//!
//! Hysteresis works twice: in level (a frame counts as voiced above
//! `on_threshold` while quiet, above the lower `off_threshold` while speaking)
//! and in time (a gap shorter than `endpoint_ms` does not end the turn).
//!
//! # Real-time
//! [`TurnDetector::push`] is a few comparisons per frame; no allocation.
//!
//! # Invariants
//! 1. Events alternate: `Started` is always followed by `Stopped` before the
//!    next `Started`; `Paused`/`Continued` only occur in between.
//! 2. `Started.at` is the first sample of the first voiced frame of the run
//!    that confirmed speech; `Stopped.end` is the end of the last voiced frame.
//! 3. Output depends only on the input sequence (no clock), so replays are
//!    deterministic.

use crate::frame::{FRAME_MS, FRAME_SAMPLES};
use serde::{Deserialize, Serialize};

/// Turn-taking settings. Defaults come from measurements on real recordings
/// (see README, "Turn-taking defaults").
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TurnConfig {
    /// Voiced time needed to confirm the user started speaking.
    pub start_ms: u64,
    /// Silence after speech that ends the user's turn (endpointing).
    pub endpoint_ms: u64,
    /// Silence after which a short pause is reported (speculative STT).
    /// 100 ms: every millisecond here is a millisecond of voice-to-voice
    /// latency, and a pause that turns out not to be one only costs a
    /// cancelled decode (the reply waits for `endpoint_ms` or the end-of-turn
    /// judge anyway).
    pub pause_ms: u64,
    /// Probability above which a frame is voiced while quiet.
    pub on_threshold: f32,
    /// Probability above which a frame stays voiced while speaking.
    pub off_threshold: f32,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            start_ms: 80,
            endpoint_ms: 400,
            pause_ms: 100,
            on_threshold: 0.5,
            off_threshold: 0.35,
        }
    }
}

impl TurnConfig {
    fn frames(ms: u64) -> u32 {
        ms.div_ceil(FRAME_MS).max(1) as u32
    }
}

/// What the detector saw (sample positions on the session timeline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    /// Speech confirmed; it began at sample `at` (invariant 2).
    Started { at: u64 },
    /// The user has been silent for `pause_ms` since sample `at`.
    Paused { at: u64 },
    /// Speech resumed after a reported pause.
    Continued { at: u64 },
    /// End of the user's turn: speech from `start` to `end`.
    Stopped { start: u64, end: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Quiet {
        run: u32,
        run_start: u64,
    },
    Speaking {
        start: u64,
        last_voiced_end: u64,
        silent: u32,
    },
}

/// The state machine. One per input stream.
#[derive(Clone, Debug)]
pub struct TurnDetector {
    config: TurnConfig,
    start_frames: u32,
    pause_frames: u32,
    endpoint_frames: u32,
    state: State,
}

impl TurnDetector {
    pub fn new(config: TurnConfig) -> Self {
        Self {
            config,
            start_frames: TurnConfig::frames(config.start_ms),
            pause_frames: TurnConfig::frames(config.pause_ms),
            endpoint_frames: TurnConfig::frames(config.endpoint_ms),
            state: State::Quiet {
                run: 0,
                run_start: 0,
            },
        }
    }

    pub fn config(&self) -> &TurnConfig {
        &self.config
    }

    /// Whether the user is currently speaking (between Started and Stopped).
    pub fn is_speaking(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// Where the current utterance began (`None` outside one).
    pub fn utterance_start(&self) -> Option<u64> {
        match self.state {
            State::Speaking { start, .. } => Some(start),
            State::Quiet { .. } => None,
        }
    }

    /// Feeds one frame's speech probability; `frame_start` is the frame's
    /// first sample. Returns at most one event. Real-time safe.
    pub fn push(&mut self, probability: f32, frame_start: u64) -> Option<TurnEvent> {
        let frame_end = frame_start + FRAME_SAMPLES as u64;
        match &mut self.state {
            State::Quiet { run, run_start } => {
                if probability >= self.config.on_threshold {
                    if *run == 0 {
                        *run_start = frame_start;
                    }
                    *run += 1;
                    if *run >= self.start_frames {
                        let start = *run_start;
                        self.state = State::Speaking {
                            start,
                            last_voiced_end: frame_end,
                            silent: 0,
                        };
                        return Some(TurnEvent::Started { at: start });
                    }
                } else {
                    *run = 0;
                }
                None
            }
            State::Speaking {
                start,
                last_voiced_end,
                silent,
            } => {
                if probability >= self.config.off_threshold {
                    let was_paused = *silent >= self.pause_frames;
                    *silent = 0;
                    *last_voiced_end = frame_end;
                    return was_paused.then_some(TurnEvent::Continued { at: frame_start });
                }
                *silent += 1;
                if *silent >= self.endpoint_frames {
                    let ev = TurnEvent::Stopped {
                        start: *start,
                        end: *last_voiced_end,
                    };
                    self.state = State::Quiet {
                        run: 0,
                        run_start: 0,
                    };
                    return Some(ev);
                }
                (*silent == self.pause_frames).then_some(TurnEvent::Paused {
                    at: *last_voiced_end,
                })
            }
        }
    }

    /// Ends an open turn at end of input (as if the endpoint elapsed).
    pub fn finish(&mut self) -> Option<TurnEvent> {
        match self.state {
            State::Speaking {
                start,
                last_voiced_end,
                ..
            } => {
                self.state = State::Quiet {
                    run: 0,
                    run_start: 0,
                };
                Some(TurnEvent::Stopped {
                    start,
                    end: last_voiced_end,
                })
            }
            State::Quiet { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(detector: &mut TurnDetector, pattern: &[f32]) -> Vec<TurnEvent> {
        pattern
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| detector.push(p, (i * FRAME_SAMPLES) as u64))
            .collect()
    }

    fn frames(ms: u64, p: f32) -> Vec<f32> {
        vec![p; (ms / FRAME_MS) as usize]
    }

    #[test]
    fn a_short_blip_does_not_start_a_turn() {
        let mut d = TurnDetector::new(TurnConfig::default());
        let mut input = frames(200, 0.0);
        input.extend(frames(40, 1.0)); // 40 ms click < 80 ms start
        input.extend(frames(1000, 0.0));
        assert!(run(&mut d, &input).is_empty());
    }

    #[test]
    fn a_pause_shorter_than_the_endpoint_does_not_end_the_turn() {
        let mut d = TurnDetector::new(TurnConfig::default());
        let mut input = frames(200, 0.0);
        input.extend(frames(600, 0.9));
        input.extend(frames(300, 0.0)); // 300 ms pause < 400 ms endpoint
        input.extend(frames(400, 0.9));
        input.extend(frames(800, 0.0));
        let ev = run(&mut d, &input);
        let start = 200 * 16;
        assert_eq!(
            ev,
            vec![
                TurnEvent::Started { at: start },
                TurnEvent::Paused {
                    at: (200 + 600) * 16
                },
                TurnEvent::Continued {
                    at: (200 + 600 + 300) * 16
                },
                // The final silence is first a pause, then the end of turn.
                TurnEvent::Paused {
                    at: (200 + 600 + 300 + 400) * 16
                },
                TurnEvent::Stopped {
                    start,
                    end: (200 + 600 + 300 + 400) * 16
                },
            ]
        );
    }

    #[test]
    fn hysteresis_keeps_weaker_frames_inside_speech() {
        let mut d = TurnDetector::new(TurnConfig::default());
        let mut input = frames(100, 0.9);
        input.extend(frames(600, 0.4)); // between off (0.35) and on (0.5)
        input.extend(frames(600, 0.0));
        let ev = run(&mut d, &input);
        assert_eq!(
            ev,
            vec![
                TurnEvent::Started { at: 0 },
                TurnEvent::Paused { at: 700 * 16 },
                TurnEvent::Stopped {
                    start: 0,
                    end: 700 * 16
                }
            ]
        );
    }

    #[test]
    fn finish_closes_an_open_turn() {
        let mut d = TurnDetector::new(TurnConfig::default());
        run(&mut d, &frames(300, 1.0));
        assert_eq!(
            d.finish(),
            Some(TurnEvent::Stopped {
                start: 0,
                end: 300 * 16
            })
        );
        assert_eq!(d.finish(), None);
    }

    proptest! {
        /// Holds invariant 1 for any probability sequence.
        #[test]
        fn events_alternate(probs in proptest::collection::vec(0.0f32..1.0, 0..600)) {
            let mut d = TurnDetector::new(TurnConfig::default());
            let mut speaking = false;
            for ev in run(&mut d, &probs) {
                match ev {
                    TurnEvent::Started { .. } => { prop_assert!(!speaking); speaking = true; }
                    TurnEvent::Stopped { start, end } => {
                        prop_assert!(speaking);
                        prop_assert!(end > start);
                        speaking = false;
                    }
                    TurnEvent::Paused { .. } | TurnEvent::Continued { .. } => prop_assert!(speaking),
                }
            }
        }
    }
}
