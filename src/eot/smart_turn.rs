//! Smart Turn v3.2 (pipecat-ai's audio end-of-turn model, ONNX, about 8 M
//! parameters) on onnxruntime through `ort`, one intra-op thread. Input
//! `input_features` `[1, 80, 800]` from [`super::features`]; output the
//! probability that the turn is complete.
//!
//! # Invariants
//! 1. One inference at a time per loaded model (the session is behind a
//!    mutex); one intra-op thread, so a call costs one core for ~0.1 s.
//! 2. A failed call is an error for that pause only (the judge then decides
//!    on the words); it never panics.

use super::features::{log_mel, N_FRAMES, N_MELS};
use super::job::TurnModel;
use crate::models::{ModelId, ModelStore};
use ort::session::Session;
use ort::value::Tensor;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// The loaded model.
pub struct SmartTurn {
    session: Mutex<Session>,
}

impl SmartTurn {
    /// Loads `model` with the onnxruntime library `lib`.
    pub fn load(model: &Path, lib: &Path) -> Result<Self, String> {
        let env = crate::tts::piper::onnx_environment(lib)?;
        let session = Session::builder(&env)
            .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(model))
            .map_err(|e| {
                format!(
                    "Smart Turn model {}: {e} (fix: run `colloquy models fetch`)",
                    model.display()
                )
            })?;
        Ok(Self {
            session: Mutex::new(session),
        })
    }

    /// Loads from the model store.
    pub fn from_store(store: &ModelStore) -> Result<Self, String> {
        let model = store
            .require(ModelId::SmartTurn)
            .map_err(|e| e.to_string())?;
        let lib = store
            .require(ModelId::OnnxRuntime)
            .map_err(|e| e.to_string())?;
        Self::load(&model, &lib)
    }

    /// The probability for ready-made features (`N_MELS * N_FRAMES`).
    pub fn probability_of_features(&self, features: Vec<f32>) -> Result<f32, String> {
        let input = Tensor::from_array(([1usize, N_MELS, N_FRAMES], features))
            .map_err(|e| format!("Smart Turn input: {e}"))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| "the Smart Turn session lock is poisoned".to_string())?;
        let outputs = session
            .run(ort::inputs!["input_features" => input])
            .map_err(|e| format!("Smart Turn inference: {e}"))?;
        let (_, p) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| format!("Smart Turn output: {e}"))?;
        p.first()
            .copied()
            .filter(|p| p.is_finite())
            .ok_or_else(|| "Smart Turn returned no probability".to_string())
    }
}

impl TurnModel for SmartTurn {
    fn name(&self) -> &str {
        "smart-turn-v3.2"
    }

    fn probability(&self, audio: &[i16]) -> Result<f32, String> {
        self.probability_of_features(log_mel(audio))
    }
}

/// The process's Smart Turn model from `$COLLOQUY_MODELS`, loaded once; the
/// reason it is missing otherwise (logged once by the caller).
pub fn shared() -> Result<Arc<SmartTurn>, String> {
    static MODEL: OnceLock<Result<Arc<SmartTurn>, String>> = OnceLock::new();
    MODEL
        .get_or_init(|| SmartTurn::from_store(&ModelStore::from_env()).map(Arc::new))
        .clone()
}
