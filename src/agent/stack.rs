//! Builds the voice agent's stages from the command line and the model
//! store: embedded by default (Whisper worker, llama.cpp, Piper or espeak),
//! or OpenAI-compatible services per stage (`--llm`, `--stt`, `--tts`).
//!
//! # Invariants
//! 1. Every model is loaded once per process and shared by all sessions.
//! 2. A missing or corrupt embedded model fails here, at start, with an
//!    error that names the model and the command that fixes it.
//! 3. API keys come only from the environment (`OPENAI_API_KEY` or the
//!    variable named in config) and never appear in errors or logs.

use super::voice::{VoiceAgent, VoiceOptions};
use super::Agent;
use crate::llm::config::{self, LlmConfig};
use crate::llm::leg::LegModel;
use crate::llm::leg::{LegRunner, LegTimeouts};
use crate::llm::retry::RetryPolicy;
use crate::llm::router::{Router, RouterPolicy};
use crate::llm::span::SpanSink;
use crate::llm::telemetry::{self, Telemetry, WindowConfig};
use crate::models::{ModelId, ModelStore};
use crate::stt::SpeechToText;
use crate::tts::TextToSpeech;
use std::path::PathBuf;
use std::sync::Arc;

/// Which embedded voice speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TtsEngine {
    /// Piper `en_US-joe-medium` (natural; ≈ 0.1–0.3 s per sentence).
    #[default]
    Piper,
    /// espeak-ng (robotic; instant).
    Espeak,
}

/// What the voice stack is built from.
#[derive(Clone, Debug, Default)]
pub struct StackOptions {
    /// Hosted chat models, `BASE_URL::MODEL` (order = preference).
    pub llm: Vec<String>,
    /// Hosted transcription, `BASE_URL::MODEL`.
    pub stt: Option<String>,
    /// Hosted speech, `BASE_URL::MODEL[::VOICE]`.
    pub tts: Option<String>,
    pub tts_engine: TtsEngine,
    /// TOML file with an `[llm]` table (models, keys' variable names, prices).
    pub config_toml: Option<String>,
    /// Threads for llama.cpp decoding (1 measured best beside TTS on 2 cores).
    pub llm_threads: usize,
    /// Threads for Whisper.
    pub stt_threads: usize,
    /// Whisper's encoder window: the full 30 s, or fitted to the utterance.
    pub stt_window: SttWindow,
    /// The conversation flow every session follows (`None`: open chat).
    pub flow: Option<Arc<crate::flows::Flow>>,
}

/// Whisper's encoder window (the main term of voice-to-voice latency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SttWindow {
    /// The full 30 s window: best accuracy, cost independent of length.
    Full,
    /// The utterance + 3 s (at least 10 s), with a loop check that falls back
    /// to the full window: ≈ 2.7× less compute, ≈ 2 WER points more. The
    /// default: it is what brings voice-to-voice latency under 1.5 s.
    #[default]
    Fit,
}

/// Why the stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Stt(#[from] crate::stt::SttError),
    #[error(transparent)]
    Tts(#[from] crate::tts::TtsError),
    #[error(transparent)]
    Llm(#[from] crate::llm::LlmError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Store(#[from] crate::llm::telemetry::StoreError),
    #[error(transparent)]
    LlmStack(#[from] crate::llm::stack::StackError),
}

/// The loaded stages (shared by every session, invariant 1).
pub struct VoiceStack {
    pub stt: Arc<dyn SpeechToText>,
    pub tts: Arc<dyn TextToSpeech>,
    pub router: Arc<Router>,
    pub telemetry: Telemetry,
    telemetry_path: Option<PathBuf>,
    /// Describes each stage for the start-up banner.
    pub summary: Vec<String>,
    /// The flow the agents follow.
    pub flow: Option<Arc<crate::flows::Flow>>,
}

impl VoiceStack {
    /// Loads every stage (blocking; a second or two with embedded models).
    pub fn build(opts: &StackOptions, store: &ModelStore) -> Result<Self, StackError> {
        let env = &config::process_env;
        let mut cfg = match &opts.config_toml {
            Some(text) => LlmConfig::from_toml(text, "colloquy.toml")?,
            None => LlmConfig::default(),
        };
        cfg.apply_env(env)?;
        cfg.apply_cli(&opts.llm, opts.stt.as_deref(), opts.tts.as_deref(), env)?;
        let mut summary = Vec::new();

        let stt: Arc<dyn SpeechToText> = match &cfg.stt {
            Some(spec) => {
                summary.push(format!("stt: {} (hosted)", spec.model));
                Arc::new(crate::llm::stack::build_stt(spec, env)?)
            }
            None => {
                summary.push("stt: whisper tiny.en (embedded, worker process)".into());
                embedded_stt(store, opts)?
            }
        };
        let tts: Arc<dyn TextToSpeech> = match &cfg.tts {
            Some(spec) => {
                summary.push(format!("tts: {} (hosted)", spec.model));
                Arc::new(crate::llm::stack::build_tts(spec, env)?)
            }
            None => embedded_tts(store, opts, &mut summary)?,
        };
        let telemetry_path = telemetry::default_store_path();
        let (router, telemetry) = if cfg.models.is_empty() {
            let telemetry = match &telemetry_path {
                Some(p) => Telemetry::load(p, cfg.telemetry.clone())?,
                None => Telemetry::empty(WindowConfig::default()),
            };
            let model = embedded_llm(store, opts)?;
            summary.push(format!("llm: {} (embedded)", model.key));
            let runner = LegRunner::new(
                SpanSink::default(),
                telemetry.clone(),
                RetryPolicy::default(),
                LegTimeouts::default(),
            );
            (
                Arc::new(Router::new(vec![model], runner, RouterPolicy::default())),
                telemetry,
            )
        } else {
            let stack = crate::llm::LlmStack::start(&cfg, telemetry_path.clone(), env)?;
            for m in &cfg.models {
                summary.push(format!("llm: {} (hosted)", m.model));
            }
            (stack.router, stack.telemetry)
        };
        if let Some(flow) = &opts.flow {
            summary.push(format!("flow: {}", flow.file.display()));
        }
        Ok(Self {
            flow: opts.flow.clone(),
            stt,
            tts,
            router,
            telemetry,
            telemetry_path,
            summary,
        })
    }

    /// A voice agent over these stages; its tasks run on `runtime`.
    pub fn agent(&self, runtime: tokio::runtime::Handle) -> Arc<dyn Agent> {
        Arc::new(VoiceAgent::new(
            self.stt.clone(),
            self.router.clone(),
            self.tts.clone(),
            VoiceOptions {
                flow: self.flow.clone(),
                ..VoiceOptions::default()
            },
            runtime,
        ))
    }

    /// Saves the routing telemetry (call at shutdown).
    pub fn save(&self) {
        if let Some(p) = &self.telemetry_path {
            if let Err(e) = self.telemetry.save(p) {
                tracing::warn!(error = %e, "could not save the LLM telemetry store");
            }
        }
    }
}

#[cfg(feature = "embedded")]
fn embedded_stt(
    store: &ModelStore,
    opts: &StackOptions,
) -> Result<Arc<dyn SpeechToText>, StackError> {
    let config = crate::stt::whisper::WhisperConfig {
        threads: opts.stt_threads.max(1),
        audio_ctx: match opts.stt_window {
            SttWindow::Full => crate::stt::whisper::AudioCtx::Full,
            SttWindow::Fit => crate::stt::whisper::AudioCtx::FIT_DEFAULT,
        },
        ..Default::default()
    };
    Ok(Arc::new(crate::stt::whisper::WhisperStt::from_store(
        store, config,
    )?))
}

#[cfg(feature = "embedded")]
fn embedded_llm(store: &ModelStore, opts: &StackOptions) -> Result<LegModel, StackError> {
    let path = store.require(ModelId::SmolLm2)?;
    let options = crate::llm::llama::LlamaOptions {
        threads: opts.llm_threads.max(1),
        ..Default::default()
    };
    let model = crate::llm::llama::LlamaChat::load(&path, options)?;
    Ok(LegModel::new(Arc::new(model), None))
}

#[cfg(feature = "embedded")]
fn embedded_tts(
    store: &ModelStore,
    opts: &StackOptions,
    summary: &mut Vec<String>,
) -> Result<Arc<dyn TextToSpeech>, StackError> {
    if opts.tts_engine == TtsEngine::Espeak {
        summary.push("tts: espeak-ng (embedded)".into());
        return Ok(Arc::new(crate::tts::espeak::EspeakTts::new(
            crate::tts::espeak::DEFAULT_RATE_WPM,
        )?));
    }
    let onnx = store.require(ModelId::PiperJoe)?;
    let json = onnx.with_extension("onnx.json");
    let lib = store.require(ModelId::OnnxRuntime)?;
    summary.push("tts: piper en_US-joe-medium (embedded)".into());
    Ok(Arc::new(crate::tts::piper::PiperTts::load(
        &onnx, &json, &lib, 1,
    )?))
}

#[cfg(not(feature = "embedded"))]
fn embedded_stt(_: &ModelStore, _: &StackOptions) -> Result<Arc<dyn SpeechToText>, StackError> {
    Err(crate::stt::SttError::Model {
        model: "whisper-tiny.en".into(),
        reason: "this build has no embedded models".into(),
        hint: "rebuild with the `embedded` feature or pass --stt BASE_URL::MODEL".into(),
    }
    .into())
}

#[cfg(not(feature = "embedded"))]
fn embedded_llm(_: &ModelStore, _: &StackOptions) -> Result<LegModel, StackError> {
    Err(crate::llm::LlmError::new(
        crate::llm::ErrorClass::Client,
        "embedded",
        "this build has no embedded LLM; pass --llm BASE_URL::MODEL",
    )
    .into())
}

#[cfg(not(feature = "embedded"))]
fn embedded_tts(
    _: &ModelStore,
    _: &StackOptions,
    summary: &mut Vec<String>,
) -> Result<Arc<dyn TextToSpeech>, StackError> {
    summary.push("tts: espeak-ng (embedded)".into());
    Ok(Arc::new(crate::tts::espeak::EspeakTts::new(
        crate::tts::espeak::DEFAULT_RATE_WPM,
    )?))
}
