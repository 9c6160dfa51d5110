//! The units that move through colloquy: audio frames on the data plane,
//! events on the control plane, and the clock both are timed by.
//!
//! # Invariants
//! 1. An [`AudioFrame`] is always exactly [`FRAME_SAMPLES`] samples of 16 kHz
//!    mono PCM16, stored inline (no heap), so moving one never allocates.
//! 2. A frame's `start` is its first sample's index on the session timeline;
//!    frames of one source are contiguous (`next.start == prev.start + 320`).
//! 3. `Display` for [`Event`] prints only the event's kind, never its payload
//!    (transcripts and prompts are personal data).

mod cancel;
mod clock;
mod event;

pub use cancel::CancelSignal;
pub use clock::{Clock, RealClock, VirtualClock};
pub use event::{CancelReason, Event, EventKind, Speaker, TimedEvent};

/// Sample rate inside the pipeline (Hz). Transports resample at the edge.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples in one frame: 20 ms at 16 kHz.
pub const FRAME_SAMPLES: usize = 320;
/// Duration of one frame in milliseconds.
pub const FRAME_MS: u64 = 20;

/// 20 ms of 16 kHz mono PCM16, with its position on the session timeline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AudioFrame {
    /// Index of the first sample on the session timeline (holds invariant 2).
    pub start: u64,
    /// The samples, inline (holds invariant 1).
    pub samples: [i16; FRAME_SAMPLES],
}

impl AudioFrame {
    /// A frame of silence starting at `start`.
    pub const fn silent(start: u64) -> Self {
        Self {
            start,
            samples: [0; FRAME_SAMPLES],
        }
    }

    /// Start time on the timeline, in milliseconds.
    pub fn start_ms(&self) -> u64 {
        samples_to_ms(self.start)
    }

    /// Root-mean-square level in full-scale units (0.0 ..= 1.0).
    pub fn rms(&self) -> f32 {
        rms(&self.samples)
    }
}

impl Default for AudioFrame {
    fn default() -> Self {
        Self::silent(0)
    }
}

impl std::fmt::Debug for AudioFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AudioFrame(start={}, rms={:.4})", self.start, self.rms())
    }
}

/// Root-mean-square of PCM16 samples, in full-scale units.
pub fn rms(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
    ((sum / samples.len() as f64).sqrt() / 32768.0) as f32
}

/// Converts a sample count at 16 kHz to milliseconds.
pub const fn samples_to_ms(samples: u64) -> u64 {
    samples * 1000 / SAMPLE_RATE as u64
}

/// Converts milliseconds to a sample count at 16 kHz.
pub const fn ms_to_samples(ms: u64) -> u64 {
    ms * SAMPLE_RATE as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_twenty_ms_and_inline() {
        assert_eq!(samples_to_ms(FRAME_SAMPLES as u64), FRAME_MS);
        // 320 samples of i16 plus the u64 timestamp: nothing on the heap.
        assert_eq!(std::mem::size_of::<AudioFrame>(), 8 + 640);
    }

    #[test]
    fn rms_of_full_scale_square_wave_is_one() {
        let mut f = AudioFrame::silent(0);
        for (i, s) in f.samples.iter_mut().enumerate() {
            *s = if i % 2 == 0 { i16::MAX } else { -i16::MAX };
        }
        assert!((f.rms() - 1.0).abs() < 1e-3);
        assert_eq!(AudioFrame::silent(0).rms(), 0.0);
    }
}
