//! [`RoutedTts`]: text to speech over a candidate list (Piper or espeak-ng
//! on this machine, hosted voices), through the shared routing core: each
//! sentence is one race, so a hosted voice that fails mid-reply is replaced
//! by the local one for the rest of the reply.
//!
//! # Invariants
//! 1. A losing attempt is cancelled through its token (TTS invariant 2
//!    leaves every backend usable afterwards).
//! 2. The served name is the winner's store key (`tts:provider/model`).

use crate::llm::telemetry::Telemetry;
use crate::route::{RoutePolicy, Stage, StageCandidate, StageRoute};
use crate::tts::{Speech, TextToSpeech, TtsError};
use async_trait::async_trait;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

/// Text to speech through the router.
#[derive(Debug)]
pub struct RoutedTts {
    name: String,
    route: StageRoute<dyn TextToSpeech>,
}

impl RoutedTts {
    /// A router over `candidates` (preference order).
    pub fn new(
        candidates: Vec<StageCandidate<dyn TextToSpeech>>,
        policy: RoutePolicy,
        telemetry: Telemetry,
    ) -> Self {
        let name = candidates
            .first()
            .map(|c| c.backend.name().to_string())
            .unwrap_or_default();
        Self {
            name,
            route: StageRoute::new(Stage::Tts, candidates, policy, telemetry),
        }
    }

    pub fn route(&self) -> &StageRoute<dyn TextToSpeech> {
        &self.route
    }
}

#[async_trait]
impl TextToSpeech for RoutedTts {
    /// The preferred candidate's name.
    fn name(&self) -> &str {
        &self.name
    }

    async fn synthesize(&self, text: &str, cancel: &CancellationToken) -> Result<Speech, TtsError> {
        self.synthesize_served(text, cancel).await.map(|(s, _)| s)
    }

    async fn synthesize_served(
        &self,
        text: &str,
        cancel: &CancellationToken,
    ) -> Result<(Speech, String), TtsError> {
        let text: std::sync::Arc<str> = text.into();
        self.route
            .run(cancel, move |backend, token| {
                let text = text.clone();
                async move { backend.synthesize(&text, &token).await }.boxed()
            })
            .await
    }
}
