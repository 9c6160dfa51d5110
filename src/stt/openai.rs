//! Speech to text through any OpenAI-compatible transcription service
//! (`/audio/transcriptions`, via `async-openai`).
//!
//! # Invariants
//! 1. The audio is sent as a 16 kHz mono PCM16 WAV built in memory (STT
//!    invariant 1); nothing is written to disk.
//! 2. A cancel drops the request future at once, which closes the HTTP
//!    connection, and returns [`SttError::Cancelled`] (STT invariant 3).
//! 3. The client never retries on its own and error messages are redacted of
//!    the API key (see `llm::openai`); a failure is [`SttError::Hosted`]
//!    with its class, status and retry-after.

use crate::frame::SAMPLE_RATE;
use crate::llm::config::ApiKey;
use crate::llm::openai::{build_client, classify, SPEECH_REQUEST_TIMEOUT};
use crate::stt::{SpeechToText, SttError, Transcript};
use async_openai::config::OpenAIConfig;
use async_openai::types::audio::{AudioInput, CreateTranscriptionRequest};
use async_openai::types::InputSource;
use async_openai::Client;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

#[derive(serde::Deserialize)]
struct TranscriptJson {
    #[serde(default)]
    text: String,
}

/// A hosted speech recogniser.
pub struct OpenAiStt {
    name: String,
    model: String,
    language: Option<String>,
    key: Option<ApiKey>,
    client: Client<OpenAIConfig>,
}

impl std::fmt::Debug for OpenAiStt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiStt")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// 16 kHz mono PCM16 as WAV bytes (invariant 1).
pub fn wav_bytes(audio: &[i16]) -> Result<Vec<u8>, SttError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Vec::with_capacity(44 + audio.len() * 2);
    let err = |e: hound::Error| SttError::Input(format!("cannot encode the utterance as WAV: {e}"));
    let mut w = hound::WavWriter::new(std::io::Cursor::new(&mut out), spec).map_err(err)?;
    for &s in audio {
        w.write_sample(s).map_err(err)?;
    }
    w.finalize().map_err(err)?;
    Ok(out)
}

impl OpenAiStt {
    /// A recogniser using `model` at `base_url` (…/v1).
    pub fn new(base_url: &str, model: impl Into<String>, key: Option<ApiKey>) -> Self {
        let model = model.into();
        Self {
            name: format!("openai:{model}"),
            client: build_client(base_url, key.as_ref(), Some(SPEECH_REQUEST_TIMEOUT)),
            model,
            language: Some("en".into()),
            key,
        }
    }

    /// Sets the language hint (`None`: the service detects it).
    pub fn with_language(mut self, language: Option<String>) -> Self {
        self.language = language;
        self
    }
}

#[async_trait]
impl SpeechToText for OpenAiStt {
    fn name(&self) -> &str {
        &self.name
    }

    async fn transcribe(
        &self,
        audio: &[i16],
        cancel: &CancellationToken,
    ) -> Result<Transcript, SttError> {
        if audio.is_empty() {
            return Err(SttError::Input("empty utterance".into()));
        }
        let request = CreateTranscriptionRequest {
            file: AudioInput {
                source: InputSource::VecU8 {
                    filename: "utterance.wav".into(),
                    vec: wav_bytes(audio)?,
                },
            },
            model: self.model.clone(),
            language: self.language.clone(),
            ..Default::default()
        };
        let audio = self.client.audio();
        // Parsed leniently: compatible servers often send only `text`.
        let call = async {
            audio
                .transcription()
                .create_byot::<CreateTranscriptionRequest, TranscriptJson>(request)
                .await
        };
        // Holds invariant 2.
        let response = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(SttError::Cancelled),
            r = call => r,
        };
        match response {
            Ok(r) => Ok(Transcript {
                text: r.text.trim().to_string(),
            }),
            Err(e) => Err(SttError::Hosted {
                backend: self.name.clone(),
                error: classify(e, &self.name, self.key.as_ref()),
            }),
        }
    }
}
