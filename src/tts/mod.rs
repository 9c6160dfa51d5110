//! Text to speech: the [`TextToSpeech`] trait and its backends, one per file.
//!
//! # Invariants
//! 1. `synthesize` returns audio at the backend's own rate, mono PCM16; the
//!    caller resamples to the pipeline rate (16 kHz) off the real-time path.
//! 2. A cancelled synthesis returns [`TtsError::Cancelled`] promptly and
//!    leaves the backend usable.

pub mod chunker;
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
    /// Synthesis was cancelled.
    #[error("text-to-speech cancelled")]
    Cancelled,
}

/// A speech synthesiser.
#[async_trait]
pub trait TextToSpeech: Send + Sync {
    /// Short name for logs and events.
    fn name(&self) -> &str;

    /// Speaks `text` (one sentence or clause) (holds invariant 1).
    async fn synthesize(&self, text: &str, cancel: &CancellationToken) -> Result<Speech, TtsError>;
}
