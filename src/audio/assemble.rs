//! Cuts a continuous stream of 16 kHz mono samples into [`AudioFrame`]s.
//!
//! # Real-time
//! `push` writes into one inline frame and allocates nothing.
//!
//! # Invariants
//! 1. Frames are contiguous: each frame's `start` is the previous frame's
//!    `start + FRAME_SAMPLES` (frame invariant 2).

use super::resample::f32_to_i16;
use crate::frame::{AudioFrame, FRAME_SAMPLES};

/// Accumulates samples into whole frames.
pub struct FrameAssembler {
    frame: AudioFrame,
    filled: usize,
    next_start: u64,
}

impl FrameAssembler {
    /// An assembler whose first frame starts at sample `start`.
    pub fn new(start: u64) -> Self {
        Self {
            frame: AudioFrame::silent(start),
            filled: 0,
            next_start: start,
        }
    }

    /// Adds samples; calls `emit` for every frame completed (invariant 1).
    pub fn push(&mut self, samples: &[f32], mut emit: impl FnMut(&AudioFrame)) {
        for &s in samples {
            self.frame.samples[self.filled] = f32_to_i16(s);
            self.filled += 1;
            if self.filled == FRAME_SAMPLES {
                self.frame.start = self.next_start;
                emit(&self.frame);
                self.next_start += FRAME_SAMPLES as u64;
                self.filled = 0;
            }
        }
    }

    /// Samples waiting for a frame to fill.
    pub fn pending(&self) -> usize {
        self.filled
    }

    /// Emits the partial frame padded with silence, if any.
    pub fn flush(&mut self, emit: impl FnMut(&AudioFrame)) {
        if self.filled > 0 {
            let pad = [0.0f32; FRAME_SAMPLES];
            let missing = FRAME_SAMPLES - self.filled;
            self.push(&pad[..missing], emit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_contiguous_and_complete() {
        let mut a = FrameAssembler::new(0);
        let mut starts = Vec::new();
        a.push(&vec![0.1; 1000], |f| starts.push(f.start));
        assert_eq!(starts, vec![0, 320, 640]);
        assert_eq!(a.pending(), 40);
        a.flush(|f| starts.push(f.start));
        assert_eq!(starts, vec![0, 320, 640, 960]);
        assert_eq!(a.pending(), 0);
    }
}
