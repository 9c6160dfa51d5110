//! Speech to text: the [`SpeechToText`] trait and its backends, one per file.
//!
//! # Invariants
//! 1. Input is always 16 kHz mono PCM16 (the pipeline's format); backends
//!    convert internally.
//! 2. A backend is only called on audio the VAD judged to be speech (the turn
//!    detector's utterances), so silence and noise are never transcribed.
//! 3. A cancelled transcription returns [`SttError::Cancelled`] and leaves the
//!    backend usable.
//! 4. A hosted service's failure is [`SttError::Hosted`], carrying the
//!    classified error (status, retry-after) the router cools down on.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub mod normalize;
#[cfg(feature = "embedded")]
pub mod whisper;

pub mod openai;
pub mod routed;

/// The text of one utterance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transcript {
    /// The backend's text, as written (punctuation, digits).
    pub text: String,
}

impl Transcript {
    /// The text normalised for matching (see [`normalize::normalize`]).
    pub fn normalized(&self) -> String {
        normalize::normalize(&self.text)
    }
}

/// Why a transcription failed. `retryable()` says whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SttError {
    /// The model file is missing or unusable; retrying will not help.
    #[error("speech-to-text model {model}: {reason} (fix: {hint})")]
    Model {
        model: String,
        reason: String,
        hint: String,
    },
    /// The audio cannot be transcribed (empty, too long); retrying will not help.
    #[error("speech-to-text input: {0}")]
    Input(String),
    /// The backend failed this time (service error, engine error); a retry may help.
    #[error("speech-to-text backend {backend}: {message}")]
    Backend { backend: String, message: String },
    /// A hosted service failed (invariant 4); a retry or another model may help.
    #[error("speech-to-text service {backend}: {error}")]
    Hosted {
        backend: String,
        error: crate::llm::LlmError,
    },
    /// The transcription was cancelled.
    #[error("speech-to-text cancelled")]
    Cancelled,
}

impl crate::route::stage::StageError for SttError {
    fn cancelled() -> Self {
        SttError::Cancelled
    }

    fn is_cancelled(&self) -> bool {
        matches!(self, SttError::Cancelled)
    }

    fn is_input(&self) -> bool {
        matches!(self, SttError::Input(_))
    }

    fn to_llm_error(&self, key: &str) -> crate::llm::LlmError {
        use crate::llm::{ErrorClass, LlmError};
        match self {
            SttError::Hosted { error, .. } => error.clone(),
            SttError::Model { .. } => LlmError::new(ErrorClass::Client, key, self.to_string()),
            _ => LlmError::new(ErrorClass::Server, key, self.to_string()),
        }
    }
}

/// A speech recogniser.
#[async_trait]
pub trait SpeechToText: Send + Sync {
    /// Short name for logs and events (`whisper-tiny.en`, `openai:whisper-1`).
    fn name(&self) -> &str;

    /// Transcribes one utterance of 16 kHz mono PCM16 (holds invariant 1).
    async fn transcribe(
        &self,
        audio: &[i16],
        cancel: &CancellationToken,
    ) -> Result<Transcript, SttError>;

    /// Transcribes and says which model did (a router answers with the
    /// candidate that won; a single backend with its own name).
    async fn transcribe_served(
        &self,
        audio: &[i16],
        cancel: &CancellationToken,
    ) -> Result<(Transcript, String), SttError> {
        let t = self.transcribe(audio, cancel).await?;
        Ok((t, self.name().to_string()))
    }
}
