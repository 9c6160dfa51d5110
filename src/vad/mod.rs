//! Voice activity: the [`Vad`] trait (one backend per file) and the
//! turn-taking state machine ([`turn::TurnDetector`]) built on it.
//!
//! # Real-time
//! `Vad::speech_probability` and `TurnDetector::push` run once per 20 ms
//! frame on the data plane: no allocation, no lock, no logging.
//!
//! # Invariants
//! 1. A backend consumes exactly one [`AudioFrame`] per call and returns a
//!    probability in `0.0..=1.0` (binary backends return 0 or 1).
//! 2. Backends keep their own state per stream; one instance per session.

use crate::frame::AudioFrame;

pub mod earshot;
pub mod energy;
#[cfg(feature = "embedded")]
pub mod silero;
pub mod turn;
pub mod webrtc;

pub use turn::{TurnConfig, TurnDetector, TurnEvent};

/// A voice activity detector.
pub trait Vad: Send {
    /// Backend name (`webrtc`, `earshot`, `energy`).
    fn name(&self) -> &'static str;
    /// Probability that `frame` contains speech (invariant 1). Real-time safe.
    fn speech_probability(&mut self, frame: &AudioFrame) -> f32;
    /// Forgets the stream's history.
    fn reset(&mut self);
}

/// The VAD backends colloquy ships.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum VadKind {
    /// WebRTC's GMM VAD (libfvad), aggressive mode.
    Webrtc,
    /// earshot, a small pure-Rust neural VAD (chosen default, see README).
    #[default]
    Earshot,
    /// Adaptive energy threshold (baseline).
    Energy,
    /// Silero VAD v6 on onnxruntime (needs `colloquy models fetch`; not
    /// allocation-free: one onnxruntime call per 32 ms).
    Silero,
}

impl VadKind {
    /// Builds a fresh detector of this kind; an error names what is missing
    /// (only Silero can fail: it loads a model).
    pub fn try_build(self) -> Result<Box<dyn Vad>, String> {
        Ok(match self {
            VadKind::Webrtc => Box::new(webrtc::WebrtcVad::new()),
            VadKind::Earshot => Box::new(earshot::EarshotVad::new()),
            VadKind::Energy => Box::new(energy::EnergyVad::new()),
            #[cfg(feature = "embedded")]
            VadKind::Silero => Box::new(
                silero::SileroVad::from_store(&crate::models::ModelStore::from_env())
                    .map_err(|e| format!("{e} (fix: run `colloquy models fetch`)"))?,
            ),
            #[cfg(not(feature = "embedded"))]
            VadKind::Silero => {
                return Err("this build has no onnxruntime support (feature `embedded`)".into())
            }
        })
    }

    /// Builds a fresh detector; if Silero cannot load, logs why and uses
    /// the default backend (offline helpers; sessions use `try_build`).
    pub fn build(self) -> Box<dyn Vad> {
        self.try_build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "VAD {self:?} unavailable; using the default");
            Box::new(earshot::EarshotVad::new())
        })
    }

    /// The allocation-free kinds (data-plane tests and benchmarks).
    pub const ALL: [VadKind; 3] = [VadKind::Webrtc, VadKind::Earshot, VadKind::Energy];
}

/// Runs a fresh `kind` detector and turn detector over 16 kHz mono audio and
/// returns the user turns found, as (start, end) sample pairs. Offline helper
/// for tests and measurements (allocates).
pub fn segment(samples: &[i16], kind: VadKind, config: TurnConfig) -> Vec<(u64, u64)> {
    let mut vad = kind.build();
    let mut detector = TurnDetector::new(config);
    let mut turns = Vec::new();
    let mut frame = AudioFrame::silent(0);
    for (i, chunk) in samples.chunks(crate::frame::FRAME_SAMPLES).enumerate() {
        frame.samples.fill(0);
        frame.samples[..chunk.len()].copy_from_slice(chunk);
        frame.start = (i * crate::frame::FRAME_SAMPLES) as u64;
        let p = vad.speech_probability(&frame);
        if let Some(TurnEvent::Stopped { start, end }) = detector.push(p, frame.start) {
            turns.push((start, end));
        }
    }
    if let Some(TurnEvent::Stopped { start, end }) = detector.finish() {
        turns.push((start, end));
    }
    turns
}

/// Per-frame speech decisions (probability ≥ 0.5) of a fresh `kind` detector.
pub fn frame_decisions(samples: &[i16], kind: VadKind) -> Vec<bool> {
    let mut vad = kind.build();
    let mut frame = AudioFrame::silent(0);
    samples
        .chunks(crate::frame::FRAME_SAMPLES)
        .enumerate()
        .map(|(i, chunk)| {
            frame.samples.fill(0);
            frame.samples[..chunk.len()].copy_from_slice(chunk);
            frame.start = (i * crate::frame::FRAME_SAMPLES) as u64;
            vad.speech_probability(&frame) >= 0.5
        })
        .collect()
}
