//! Silero VAD (v6, 16 kHz ONNX from the PyPI `silero-vad` wheel) on
//! onnxruntime through `ort`. The model scores 512-sample windows (32 ms)
//! with 64 samples of context from the previous window, as the reference
//! implementation does; a 20 ms pipeline frame feeds the windows it
//! completes and reports the highest score (or the last one).
//!
//! # Real-time
//! Unlike the other backends this one is **not** allocation-free: every
//! window is an onnxruntime call (≈ 0.1–0.2 ms). It is selectable
//! (`--vad silero`) and measured, not the default.
//!
//! # Invariants
//! 1. The recurrent state and the 64-sample context carry over between
//!    windows; `reset` clears both.
//! 2. A failed inference reports probability 0 (silence) and is logged once;
//!    it never panics on the audio path.

use super::Vad;
use crate::frame::{AudioFrame, FRAME_SAMPLES};
use ort::session::Session;
use ort::value::Tensor;
use std::path::Path;

const WINDOW: usize = 512;
const CONTEXT: usize = 64;

/// Silero VAD backend.
pub struct SileroVad {
    session: Session,
    state: Vec<f32>,
    context: [f32; CONTEXT],
    carry: [f32; WINDOW],
    carry_len: usize,
    last: f32,
    failed: bool,
}

impl SileroVad {
    /// Loads the model with the process's onnxruntime (`lib`).
    pub fn load(model: &Path, lib: &Path) -> Result<Self, String> {
        let env = crate::tts::piper::onnx_environment(lib)?;
        let session = Session::builder(&env)
            .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
            .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(model))
            .map_err(|e| format!("Silero VAD {}: {e}", model.display()))?;
        Ok(Self {
            session,
            state: vec![0.0; 2 * 128],
            context: [0.0; CONTEXT],
            carry: [0.0; WINDOW],
            carry_len: 0,
            last: 0.0,
            failed: false,
        })
    }

    /// Loads from the model store (`COLLOQUY_MODELS`).
    pub fn from_store(store: &crate::models::ModelStore) -> Result<Self, String> {
        use crate::models::ModelId;
        let model = store
            .require(ModelId::SileroVad)
            .map_err(|e| e.to_string())?;
        let lib = store
            .require(ModelId::OnnxRuntime)
            .map_err(|e| e.to_string())?;
        Self::load(&model, &lib)
    }

    fn score_window(&mut self) -> Result<f32, ort::Error> {
        let mut input = Vec::with_capacity(CONTEXT + WINDOW);
        input.extend_from_slice(&self.context);
        input.extend_from_slice(&self.carry);
        self.context
            .copy_from_slice(&self.carry[WINDOW - CONTEXT..]);
        let x = Tensor::from_array(([1usize, CONTEXT + WINDOW], input))?;
        let state = Tensor::from_array(([2usize, 1, 128], self.state.clone()))?;
        let sr = Tensor::from_array(([1usize], vec![16_000i64]))?;
        let outputs = self
            .session
            .run(ort::inputs!["input" => x, "state" => state, "sr" => sr])?;
        let (_, prob) = outputs[0].try_extract_tensor::<f32>()?;
        let (_, next) = outputs[1].try_extract_tensor::<f32>()?;
        if next.len() == self.state.len() {
            self.state.copy_from_slice(next);
        }
        Ok(prob.first().copied().unwrap_or(0.0))
    }
}

impl Vad for SileroVad {
    fn name(&self) -> &'static str {
        "silero"
    }

    fn speech_probability(&mut self, frame: &AudioFrame) -> f32 {
        let mut best: Option<f32> = None;
        let mut i = 0;
        while i < FRAME_SAMPLES {
            let take = (WINDOW - self.carry_len).min(FRAME_SAMPLES - i);
            for (dst, &s) in self.carry[self.carry_len..self.carry_len + take]
                .iter_mut()
                .zip(&frame.samples[i..i + take])
            {
                *dst = s as f32 / 32768.0;
            }
            self.carry_len += take;
            i += take;
            if self.carry_len == WINDOW {
                self.carry_len = 0;
                // Holds invariant 2.
                let p = match self.score_window() {
                    Ok(p) => p,
                    Err(e) => {
                        if !self.failed {
                            tracing::error!(error = %e, "Silero VAD inference failed; treating audio as silence");
                            self.failed = true;
                        }
                        0.0
                    }
                };
                best = Some(best.map_or(p, |b: f32| b.max(p)));
            }
        }
        if let Some(p) = best {
            self.last = p.clamp(0.0, 1.0);
        }
        self.last
    }

    fn reset(&mut self) {
        self.state.fill(0.0);
        self.context = [0.0; CONTEXT];
        self.carry_len = 0;
        self.last = 0.0;
    }
}
