//! Text to speech through any OpenAI-compatible speech service
//! (`/audio/speech`, via `async-openai`).
//!
//! # Invariants
//! 1. WAV is requested; a WAV answer is decoded at its own rate (TTS
//!    invariant 1). A body that is not WAV is read as raw PCM16 at 24 kHz,
//!    the service's `pcm` format.
//! 2. A cancel drops the request at once (closing the connection) and
//!    returns [`TtsError::Cancelled`].
//! 3. The client never retries on its own and error messages are redacted of
//!    the API key (see `llm::openai`); a failure is [`TtsError::Hosted`]
//!    with its class, status and retry-after.

use crate::llm::config::ApiKey;
use crate::llm::openai::{build_client, classify, SPEECH_REQUEST_TIMEOUT};
use crate::tts::{Speech, TextToSpeech, TtsError};
use async_openai::config::OpenAIConfig;
use async_openai::types::audio::{CreateSpeechRequest, SpeechModel, SpeechResponseFormat, Voice};
use async_openai::Client;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

/// The rate of the `pcm` response format.
const RAW_PCM_RATE: u32 = 24_000;

/// A hosted speech synthesiser.
pub struct OpenAiTts {
    name: String,
    model: String,
    voice: String,
    key: Option<ApiKey>,
    client: Client<OpenAIConfig>,
}

impl std::fmt::Debug for OpenAiTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiTts")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Decodes a speech body (invariant 1).
pub fn decode_audio(bytes: &[u8]) -> Result<Speech, String> {
    if bytes.starts_with(b"RIFF") {
        let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
            .map_err(|e| format!("bad WAV: {e}"))?;
        let spec = reader.spec();
        if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
            return Err(format!(
                "WAV is {}-bit {:?}, expected 16-bit PCM",
                spec.bits_per_sample, spec.sample_format
            ));
        }
        let channels = spec.channels.max(1) as usize;
        let all: Vec<i16> = reader
            .into_samples::<i16>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad WAV data: {e}"))?;
        // Down-mix to mono by taking the first channel.
        let samples = all.into_iter().step_by(channels).collect();
        return Ok(Speech {
            samples,
            sample_rate: spec.sample_rate,
        });
    }
    let samples = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Ok(Speech {
        samples,
        sample_rate: RAW_PCM_RATE,
    })
}

impl OpenAiTts {
    /// A synthesiser using `model` and `voice` at `base_url` (…/v1).
    pub fn new(
        base_url: &str,
        model: impl Into<String>,
        voice: impl Into<String>,
        key: Option<ApiKey>,
    ) -> Self {
        let model = model.into();
        let voice = voice.into();
        Self {
            name: format!("openai:{model}:{voice}"),
            client: build_client(base_url, key.as_ref(), Some(SPEECH_REQUEST_TIMEOUT)),
            model,
            voice,
            key,
        }
    }
}

#[async_trait]
impl TextToSpeech for OpenAiTts {
    fn name(&self) -> &str {
        &self.name
    }

    async fn synthesize(&self, text: &str, cancel: &CancellationToken) -> Result<Speech, TtsError> {
        let request = CreateSpeechRequest {
            input: text.to_string(),
            model: SpeechModel::Other(self.model.clone()),
            voice: Voice::Other(self.voice.clone()),
            instructions: None,
            response_format: Some(SpeechResponseFormat::Wav),
            speed: None,
            stream_format: None,
        };
        let audio = self.client.audio();
        let call = async { audio.speech().create(request).await };
        // Holds invariant 2.
        let response = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(TtsError::Cancelled),
            r = call => r,
        };
        let backend = |message: String| TtsError::Backend {
            backend: self.name.clone(),
            message,
        };
        match response {
            Ok(r) => decode_audio(&r.bytes).map_err(backend),
            Err(e) => Err(TtsError::Hosted {
                backend: self.name.clone(),
                error: classify(e, &self.name, self.key.as_ref()),
            }),
        }
    }
}
