//! Text to speech: the [`TextToSpeech`] trait and its backends, one per file.
//!
//! # Invariants
//! 1. `synthesize` returns audio at the backend's own rate, mono PCM16; the
//!    caller resamples to the pipeline rate (16 kHz) off the real-time path.
//! 2. A cancelled synthesis returns [`TtsError::Cancelled`] promptly and
//!    leaves the backend usable.
//! 3. A hosted service's failure is [`TtsError::Hosted`], carrying the
//!    classified error (status, retry-after) the router cools down on.

pub mod chunker;
pub mod edges;
pub mod espeak;
#[cfg(feature = "embedded")]
pub mod piper;

pub use chunker::SentenceChunker;
pub use espeak::EspeakTts;
#[cfg(feature = "embedded")]
pub use piper::PiperTts;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub mod openai;
pub mod routed;

/// Synthesised speech.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Speech {
    pub samples: Vec<i16>,
    pub sample_rate: u32,
}

/// Why synthesis failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TtsError {
    /// The voice model is missing or unusable; retrying will not help.
    #[error("text-to-speech model {model}: {reason} (fix: {hint})")]
    Model {
        model: String,
        reason: String,
        hint: String,
    },
    /// The backend failed this time; a retry may help.
    #[error("text-to-speech backend {backend}: {message}")]
    Backend { backend: String, message: String },
    /// A hosted service failed (invariant 3); a retry or another voice may help.
    #[error("text-to-speech service {backend}: {error}")]
    Hosted {
        backend: String,
        error: crate::llm::LlmError,
    },
    /// Synthesis was cancelled.
    #[error("text-to-speech cancelled")]
    Cancelled,
}

impl crate::route::stage::StageError for TtsError {
    fn cancelled() -> Self {
        TtsError::Cancelled
    }

    fn is_cancelled(&self) -> bool {
        matches!(self, TtsError::Cancelled)
    }

    fn is_input(&self) -> bool {
        false
    }

    fn to_llm_error(&self, key: &str) -> crate::llm::LlmError {
        use crate::llm::{ErrorClass, LlmError};
        match self {
            TtsError::Hosted { error, .. } => error.clone(),
            TtsError::Model { .. } => LlmError::new(ErrorClass::Client, key, self.to_string()),
            _ => LlmError::new(ErrorClass::Server, key, self.to_string()),
        }
    }
}

/// A speech synthesiser.
#[async_trait]
pub trait TextToSpeech: Send + Sync {
    /// Short name for logs and events.
    fn name(&self) -> &str;

    /// Speaks `text` (one sentence or clause) (holds invariant 1).
    async fn synthesize(&self, text: &str, cancel: &CancellationToken) -> Result<Speech, TtsError>;

    /// Synthesises and says which voice did (a router answers with the
    /// candidate that won; a single backend with its own name).
    async fn synthesize_served(
        &self,
        text: &str,
        cancel: &CancellationToken,
    ) -> Result<(Speech, String), TtsError> {
        let s = self.synthesize(text, cancel).await?;
        Ok((s, self.name().to_string()))
    }
}
