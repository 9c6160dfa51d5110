//! [`RoutedStt`]: speech to text over a candidate list (the local Whisper
//! worker and hosted services), through the shared routing core: the
//! preferred candidate transcribes, a late or failing one is hedged or
//! replaced by the next (a late hosted transcript loses to the local one).
//!
//! # Invariants
//! 1. The utterance is copied once per request into a shared buffer that
//!    every attempt reads; nothing is written to disk.
//! 2. A losing attempt is cancelled through its token (the Whisper worker
//!    aborts its decode, a hosted request is dropped) — STT invariant 3
//!    leaves every backend usable afterwards. The race drops a cancelled
//!    attempt's future without polling it again, so the Whisper backend
//!    also cancels on drop (`whisper.rs` invariant 2).
//! 3. The served name is the winner's store key (`stt:provider/model`).

use crate::llm::telemetry::Telemetry;
use crate::route::{RoutePolicy, Stage, StageCandidate, StageRoute};
use crate::stt::{SpeechToText, SttError, Transcript};
use async_trait::async_trait;
use futures::FutureExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Speech to text through the router.
#[derive(Debug)]
pub struct RoutedStt {
    name: String,
    route: StageRoute<dyn SpeechToText>,
}

impl RoutedStt {
    /// A router over `candidates` (preference order).
    pub fn new(
        candidates: Vec<StageCandidate<dyn SpeechToText>>,
        policy: RoutePolicy,
        telemetry: Telemetry,
    ) -> Self {
        let name = candidates
            .first()
            .map(|c| c.backend.name().to_string())
            .unwrap_or_default();
        Self {
            name,
            route: StageRoute::new(Stage::Stt, candidates, policy, telemetry),
        }
    }

    pub fn route(&self) -> &StageRoute<dyn SpeechToText> {
        &self.route
    }
}

#[async_trait]
impl SpeechToText for RoutedStt {
    /// The preferred candidate's name.
    fn name(&self) -> &str {
        &self.name
    }

    async fn transcribe(
        &self,
        audio: &[i16],
        cancel: &CancellationToken,
    ) -> Result<Transcript, SttError> {
        self.transcribe_served(audio, cancel).await.map(|(t, _)| t)
    }

    async fn transcribe_served(
        &self,
        audio: &[i16],
        cancel: &CancellationToken,
    ) -> Result<(Transcript, String), SttError> {
        if audio.is_empty() {
            return Err(SttError::Input("empty utterance".into()));
        }
        // Holds invariant 1.
        let audio: Arc<[i16]> = audio.into();
        self.route
            .run(cancel, move |backend, token| {
                let audio = audio.clone();
                async move { backend.transcribe(&audio, &token).await }.boxed()
            })
            .await
    }
}
