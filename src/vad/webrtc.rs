//! WebRTC's VAD (libfvad through the `webrtc-vad` crate), 20 ms frames at
//! 16 kHz, "aggressive" mode.
//!
//! # Invariants
//! 1. The wrapped `fvad` instance is owned by exactly one `WebrtcVad`; it has
//!    no thread-affine state, which is what makes the `Send` impl sound.

use super::Vad;
use crate::frame::AudioFrame;
use webrtc_vad::{SampleRate, VadMode};

/// WebRTC VAD backend.
pub struct WebrtcVad {
    inner: webrtc_vad::Vad,
}

// SAFETY: holds invariant 1 — the fvad state is plain heap memory owned
// exclusively by this value, used from one thread at a time (`&mut self`).
unsafe impl Send for WebrtcVad {}

impl WebrtcVad {
    pub fn new() -> Self {
        Self {
            inner: webrtc_vad::Vad::new_with_rate_and_mode(
                SampleRate::Rate16kHz,
                VadMode::Aggressive,
            ),
        }
    }
}

impl Default for WebrtcVad {
    fn default() -> Self {
        Self::new()
    }
}

impl Vad for WebrtcVad {
    fn name(&self) -> &'static str {
        "webrtc"
    }

    fn speech_probability(&mut self, frame: &AudioFrame) -> f32 {
        match self.inner.is_voice_segment(&frame.samples) {
            Ok(true) => 1.0,
            _ => 0.0,
        }
    }

    fn reset(&mut self) {
        self.inner.reset();
        self.inner.set_mode(VadMode::Aggressive);
        self.inner.set_sample_rate(SampleRate::Rate16kHz);
    }
}
