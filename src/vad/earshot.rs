//! earshot: a small pure-Rust neural VAD working on 16 ms (256-sample) frames.
//! Each 20 ms pipeline frame feeds the 256-sample windows it completes; the
//! frame's probability is the highest score among them (or the last one when
//! none completed).
//!
//! # Invariants
//! 1. Samples are carried over between frames in a fixed inline buffer, so no
//!    sample is skipped and nothing is allocated per frame.

use super::Vad;
use crate::frame::{AudioFrame, FRAME_SAMPLES};

const WINDOW: usize = 256;

/// earshot backend.
pub struct EarshotVad {
    detector: Box<::earshot::Detector>,
    carry: [i16; WINDOW],
    carry_len: usize,
    last: f32,
}

impl EarshotVad {
    pub fn new() -> Self {
        Self {
            detector: ::earshot::Detector::default_boxed(),
            carry: [0; WINDOW],
            carry_len: 0,
            last: 0.0,
        }
    }
}

impl Default for EarshotVad {
    fn default() -> Self {
        Self::new()
    }
}

impl Vad for EarshotVad {
    fn name(&self) -> &'static str {
        "earshot"
    }

    fn speech_probability(&mut self, frame: &AudioFrame) -> f32 {
        let mut best: Option<f32> = None;
        let mut i = 0;
        while i < FRAME_SAMPLES {
            let take = (WINDOW - self.carry_len).min(FRAME_SAMPLES - i);
            self.carry[self.carry_len..self.carry_len + take]
                .copy_from_slice(&frame.samples[i..i + take]);
            self.carry_len += take;
            i += take;
            if self.carry_len == WINDOW {
                let p = self.detector.predict_i16(&self.carry);
                best = Some(best.map_or(p, |b: f32| b.max(p)));
                self.carry_len = 0;
            }
        }
        if let Some(p) = best {
            self.last = p.clamp(0.0, 1.0);
        }
        self.last
    }

    fn reset(&mut self) {
        self.detector.reset();
        self.carry_len = 0;
        self.last = 0.0;
    }
}
