//! The echo gate (`--echo gate`): keeps the bot from hearing (and
//! interrupting) itself when the speaker and the microphone share a room.
//!
//! It is a gate, not a canceller: while the bot's audio is playing (or just
//! played), a microphone frame counts as speech only if its energy exceeds the
//! energy of what was just played, times the estimated echo gain, by a margin
//! ([`EchoGate::MARGIN_DB`]). Otherwise the VAD's speech probability is forced
//! to zero for that frame. The transport tells the gate what it played with
//! [`EchoGate::set_playback_level`] (mean square of the played samples,
//! full scale = 1.0); a transport that never calls it (file replay, tests) gets
//! the VAD's probability unchanged.
//!
//! The echo gain (microphone energy over playback energy, in dB) starts at
//! [`EchoGate::INITIAL_GAIN_DB`] — "the microphone hears the speaker as loud as
//! it was played", safe for a first reply — and adapts on frames judged to be
//! echo towards their typical ratio (a slow quantile tracker). It never adapts
//! on frames that passed the gate, so a user talking over the bot cannot raise
//! the threshold against themselves.
//!
//! # Real-time
//! [`EchoGate::gate`] and [`EchoGate::set_playback_level`] do not allocate, lock
//! or log: the playback history is a fixed array.
//!
//! # Invariants
//! 1. Until the first `set_playback_level` call, `gate` returns its input
//!    probability unchanged (replays are unaffected).
//! 2. The reference is the loudest playback level pushed within the last
//!    [`EchoGate::WINDOW_MS`] of session time, so echo that arrives after the
//!    device and room delay is still compared with what caused it.
//! 3. The gain estimate moves only on frames the gate rejected, and stays
//!    within [`EchoGate::MIN_GAIN_DB`]..=[`EchoGate::MAX_GAIN_DB`].

use super::{EchoControl, EchoStats};
use crate::frame::{AudioFrame, FRAME_SAMPLES, SAMPLE_RATE};

/// Entries of playback history kept (one per driver tick).
const HISTORY: usize = 64;

/// The echo gate (see the module docs).
#[derive(Clone, Debug)]
pub struct EchoGate {
    armed: bool,
    /// (session sample, playback mean square) per push, a ring.
    history: [(u64, f32); HISTORY],
    next: usize,
    /// Session sample of the most recent push.
    last_push: u64,
    gain_db: f32,
    rejected: u64,
}

impl Default for EchoGate {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoGate {
    /// How far (dB) a frame must exceed the expected echo to count as speech.
    pub const MARGIN_DB: f32 = 6.0;
    /// Echo gain assumed before any adaptation (dB).
    pub const INITIAL_GAIN_DB: f32 = 0.0;
    pub const MIN_GAIN_DB: f32 = -50.0;
    pub const MAX_GAIN_DB: f32 = 10.0;
    /// How long played audio keeps the gate closed (device + room delay, tail).
    pub const WINDOW_MS: u64 = 400;
    /// Playback below this mean square (about -60 dBFS) does not gate.
    pub const FLOOR: f32 = 1e-6;
    /// Quantile tracker steps (dB per rejected frame): settles near the 75th
    /// percentile of the echo ratio, about 5 dB/s downwards.
    const DOWN_DB: f32 = 0.1;
    const UP_DB: f32 = 0.3;

    pub fn new() -> Self {
        Self {
            armed: false,
            history: [(0, 0.0); HISTORY],
            next: 0,
            last_push: 0,
            gain_db: Self::INITIAL_GAIN_DB,
            rejected: 0,
        }
    }

    /// Records that `mean_square` (full scale 1.0) was the loudest playback
    /// since the last call, at session sample `now`. Real-time safe.
    pub fn set_playback_level(&mut self, now: u64, mean_square: f32) {
        self.armed = true;
        let level = if mean_square.is_finite() {
            mean_square.max(0.0)
        } else {
            0.0
        };
        self.history[self.next] = (now, level);
        self.next = (self.next + 1) % HISTORY;
        self.last_push = now;
    }

    /// The reference playback energy for a frame ending at `now` (invariant 2).
    pub fn reference(&self, now: u64) -> f32 {
        let window = Self::WINDOW_MS * SAMPLE_RATE as u64 / 1000;
        // Pushes happen just before the frames they precede are processed, so
        // the window reaches back from the later of the two clocks.
        let t = now.max(self.last_push);
        let from = t.saturating_sub(window);
        self.history
            .iter()
            .filter(|(at, _)| *at >= from && *at <= t)
            .map(|(_, e)| *e)
            .fold(0.0, f32::max)
    }

    /// Current echo gain estimate (dB).
    pub fn gain_db(&self) -> f32 {
        self.gain_db
    }

    /// Frames rejected as echo so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The gated speech probability for `frame` (holds invariants 1 and 3).
    pub fn gate(&mut self, p: f32, frame: &AudioFrame) -> f32 {
        if !self.armed {
            return p;
        }
        let now = frame.start + FRAME_SAMPLES as u64;
        let reference = self.reference(now);
        if reference < Self::FLOOR {
            return p;
        }
        let mic = mean_square(&frame.samples).max(1e-12);
        let ratio_db = 10.0 * (mic / reference).log10();
        if ratio_db > self.gain_db + Self::MARGIN_DB {
            return p;
        }
        self.rejected += 1;
        let step = if ratio_db > self.gain_db {
            Self::UP_DB
        } else {
            -Self::DOWN_DB
        };
        self.gain_db = (self.gain_db + step).clamp(Self::MIN_GAIN_DB, Self::MAX_GAIN_DB);
        0.0
    }
}

impl EchoControl for EchoGate {
    fn name(&self) -> &'static str {
        "gate"
    }

    fn gate(&mut self, p: f32, frame: &AudioFrame) -> f32 {
        EchoGate::gate(self, p, frame)
    }

    fn set_playback_level(&mut self, now: u64, mean_square: f32) {
        EchoGate::set_playback_level(self, now, mean_square)
    }

    fn stats(&self) -> EchoStats {
        EchoStats {
            rejected: self.rejected,
            ..EchoStats::default()
        }
    }
}

/// Mean square of i16 samples, full scale = 1.0.
pub fn mean_square(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples
        .iter()
        .map(|&s| {
            let x = s as f64 / 32768.0;
            x * x
        })
        .sum();
    (sum / samples.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(start: u64, amp: f32, seed: u32) -> AudioFrame {
        // A deterministic noise-like signal at amplitude `amp` (full scale 1.0).
        let mut samples = [0i16; FRAME_SAMPLES];
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        for s in samples.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let u = (x as f32 / u32::MAX as f32) * 2.0 - 1.0;
            *s = (u * amp * 32767.0) as i16;
        }
        AudioFrame { start, samples }
    }

    fn db_to_amp(db: f32) -> f32 {
        10f32.powf(db / 20.0)
    }

    #[test]
    fn without_a_playback_level_the_probability_passes_unchanged() {
        let mut gate = EchoGate::new();
        for i in 0..50u64 {
            let f = frame(i * FRAME_SAMPLES as u64, 0.01, i as u32);
            assert_eq!(gate.gate(0.9, &f), 0.9);
        }
        assert_eq!(gate.rejected(), 0);
    }

    #[test]
    fn echo_at_the_speaker_level_never_counts_as_speech() {
        // Worst case: the microphone hears the speaker as loud as it was played.
        let mut gate = EchoGate::new();
        let played = 0.3f32;
        for i in 0..500u64 {
            let now = i * FRAME_SAMPLES as u64;
            gate.set_playback_level(now, played * played / 3.0);
            let f = frame(now, played, i as u32);
            assert_eq!(gate.gate(1.0, &f), 0.0, "frame {i} passed as speech");
        }
    }

    #[test]
    fn the_gain_adapts_down_to_a_quiet_echo_and_a_user_over_it_passes() {
        let mut gate = EchoGate::new();
        let played = 0.3f32;
        let echo = played * db_to_amp(-25.0);
        let mut t = 0u64;
        for i in 0..400u32 {
            gate.set_playback_level(t, played * played / 3.0);
            let f = frame(t, echo, i);
            assert_eq!(gate.gate(1.0, &f), 0.0);
            t += FRAME_SAMPLES as u64;
        }
        assert!(
            gate.gain_db() < -15.0 && gate.gain_db() > -30.0,
            "gain estimate {} dB",
            gate.gain_db()
        );
        // The user speaks 15 dB above the echo: every frame passes, and the
        // estimate does not move (invariant 3).
        let before = gate.gain_db();
        for i in 0..50u32 {
            gate.set_playback_level(t, played * played / 3.0);
            let f = frame(t, echo * db_to_amp(15.0), 1000 + i);
            assert_eq!(gate.gate(0.8, &f), 0.8, "user frame {i} was gated");
            t += FRAME_SAMPLES as u64;
        }
        assert_eq!(gate.gain_db(), before);
    }

    #[test]
    fn the_gate_opens_once_playback_is_older_than_the_window() {
        let mut gate = EchoGate::new();
        gate.set_playback_level(0, 0.05);
        let loud = frame(0, 0.1, 7);
        assert_eq!(gate.gate(1.0, &loud), 0.0);
        let later = (EchoGate::WINDOW_MS + 100) * SAMPLE_RATE as u64 / 1000;
        gate.set_playback_level(later, 0.0);
        let f = frame(later, 0.1, 8);
        assert_eq!(gate.gate(1.0, &f), 1.0);
    }
}
