//! Builds the voice agent's stages from the command line and the model
//! store: each stage is a router over its candidate list (`--llm`, `--stt`,
//! `--tts`, repeatable; `embedded` is this machine's model — Whisper
//! worker, llama.cpp, Piper or espeak — and `BASE_URL::MODEL` a hosted
//! OpenAI-compatible one). The default is `embedded` alone per stage.
//!
//! # Invariants
//! 1. Every model is loaded once per process and shared by all sessions.
//! 2. A missing or corrupt embedded model fails here, at start, with an
//!    error that names the model and the command that fixes it.
//! 3. API keys come only from the environment (`OPENAI_API_KEY` or the
//!    variable named in config) and never appear in errors or logs.
//! 4. Every stage shares one telemetry store (loaded once, saved by
//!    [`VoiceStack::save`] and the autosave thread) and one routing policy.

use super::voice::{VoiceAgent, VoiceOptions};
use super::Agent;
use crate::llm::config::{self, Entry, LlmConfig};
use crate::llm::leg::LegModel;
use crate::llm::router::Router;
use crate::llm::span::SpanSink;
use crate::llm::telemetry::{self, Telemetry};
use crate::models::{ModelId, ModelStore};
use crate::route::StageCandidate;
use crate::stt::routed::RoutedStt;
use crate::stt::SpeechToText;
use crate::tts::routed::RoutedTts;
use crate::tts::TextToSpeech;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// Chat model candidates, `embedded` or `BASE_URL::MODEL` (order =
    /// preference; empty: the config file's list, else `embedded`).
    pub llm: Vec<String>,
    /// Transcription candidates, `embedded` or `BASE_URL::MODEL`.
    pub stt: Vec<String>,
    /// Speech candidates, `embedded` or `BASE_URL::MODEL[::VOICE]`.
    pub tts: Vec<String>,
    /// Where the telemetry store lives.
    pub telemetry: StoreLocation,
    pub tts_engine: TtsEngine,
    /// TOML file with an `[llm]` table (models, keys' variable names, prices).
    pub config_toml: Option<String>,
    /// Threads for llama.cpp decoding (1 measured best beside TTS on 2 cores).
    pub llm_threads: usize,
    /// Threads for llama.cpp's prompt prefill (`None`: 2, see
    /// [`DEFAULT_PREFILL_THREADS`]).
    pub llm_prefill_threads: Option<usize>,
    /// Threads for Whisper.
    pub stt_threads: usize,
    /// Whisper's encoder window: the full 30 s, or fitted to the utterance.
    pub stt_window: SttWindow,
    /// The conversation flow every session follows (`None`: open chat).
    pub flow: Option<Arc<crate::flows::Flow>>,
}

/// Prefill threads by default: a turn's prompt is prefilled right after its
/// transcript, when Whisper is done and no reply plays yet, so both cores
/// are free. Measured (`cargo bench --bench voice_latency`, quiet 2-core
/// machine): first token 80 ms after the transcript against 140 ms with one
/// thread (first turns, p50).
pub const DEFAULT_PREFILL_THREADS: usize = 2;

/// Where the routing telemetry store is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreLocation {
    /// The user's state directory (`colloquy status` reads it).
    #[default]
    UserState,
    /// In memory only (tests: no state from earlier runs).
    Memory,
    At(PathBuf),
}

/// Whisper's encoder window (the main term of voice-to-voice latency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SttWindow {
    /// The full 30 s window: best accuracy, cost independent of length.
    Full,
    /// The utterance + 1 s (at least 10 s), with a loop ladder that widens
    /// the window ([`crate::stt::whisper::AudioCtx::FIT_DEFAULT`]): less
    /// compute for utterances under ~9 s, ≈ 2 WER points more. The default.
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

impl StackError {
    /// The command line or config file was wrong (exit status 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, StackError::Config(_))
    }
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
        cfg.apply_cli(&opts.llm, &opts.stt, &opts.tts, env)?;
        let telemetry_path = match &opts.telemetry {
            StoreLocation::UserState => telemetry::default_store_path(),
            StoreLocation::Memory => None,
            StoreLocation::At(p) => Some(p.clone()),
        };
        let telemetry = match &telemetry_path {
            Some(p) => Telemetry::load(p, cfg.telemetry.clone())?,
            None => Telemetry::empty(cfg.telemetry.clone()),
        };
        let mut summary = Vec::new();

        let mut stt = Vec::new();
        for entry in cfg.stt_candidates() {
            stt.push(match entry {
                Entry::Embedded => {
                    let backend = embedded_stt(store, opts)?;
                    StageCandidate {
                        name: format!("embedded/{}", backend.name()),
                        backend,
                        local: true,
                    }
                }
                Entry::Hosted(spec) => StageCandidate {
                    name: spec.key(),
                    backend: Arc::new(crate::llm::stack::build_stt(&spec, env)?)
                        as Arc<dyn SpeechToText>,
                    local: false,
                },
            });
        }
        summary.push(stage_line("stt", stt.iter().map(|c| (&c.name, c.local))));
        let mut tts = Vec::new();
        for entry in cfg.tts_candidates() {
            tts.push(match entry {
                Entry::Embedded => {
                    let backend = embedded_tts(store, opts)?;
                    StageCandidate {
                        name: format!("embedded/{}", backend.name()),
                        backend,
                        local: true,
                    }
                }
                Entry::Hosted(spec) => StageCandidate {
                    name: spec.key(),
                    backend: Arc::new(crate::llm::stack::build_tts(&spec, env)?)
                        as Arc<dyn TextToSpeech>,
                    local: false,
                },
            });
        }
        summary.push(stage_line("tts", tts.iter().map(|c| (&c.name, c.local))));
        let embedded = if cfg
            .llm_candidates()
            .iter()
            .any(|e| matches!(e, Entry::Embedded))
        {
            Some(embedded_llm(store, opts)?)
        } else {
            None
        };
        let router =
            Router::from_config_with(&cfg, embedded, SpanSink::default(), telemetry.clone(), env)?;
        summary.push(stage_line(
            "llm",
            router.candidates().iter().map(|c| (&c.key, c.local)),
        ));
        if let Some(flow) = &opts.flow {
            summary.push(format!("flow: {}", flow.file.display()));
        }
        Ok(Self {
            flow: opts.flow.clone(),
            stt: Arc::new(RoutedStt::new(stt, cfg.router.clone(), telemetry.clone())),
            tts: Arc::new(RoutedTts::new(tts, cfg.router.clone(), telemetry.clone())),
            router: Arc::new(router),
            telemetry,
            telemetry_path,
            summary,
        })
    }

    /// Saves the store every `every` on a thread of its own, for the life
    /// of the process (`serve`, `run`); [`VoiceStack::save`] at shutdown
    /// writes the last of it. No-op without a store path.
    pub fn start_autosave(&self, every: Duration) {
        let Some(path) = self.telemetry_path.clone() else {
            return;
        };
        let telemetry = self.telemetry.clone();
        let spawned = std::thread::Builder::new()
            .name("telemetry-save".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                if let Err(e) = telemetry.save(&path) {
                    tracing::warn!(error = %e, "could not save the routing telemetry store");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no autosave thread for the routing telemetry");
        }
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
                tracing::warn!(error = %e, "could not save the routing telemetry store");
            }
        }
    }

    /// Where the store is saved (none: in memory only).
    pub fn telemetry_path(&self) -> Option<&std::path::Path> {
        self.telemetry_path.as_deref()
    }
}

/// `stt: a (hosted), embedded/whisper-tiny.en (embedded)` for the banner.
fn stage_line<'a>(stage: &str, c: impl Iterator<Item = (&'a String, bool)>) -> String {
    let list: Vec<String> = c
        .map(|(name, local)| format!("{name} ({})", if local { "embedded" } else { "hosted" }))
        .collect();
    format!("{stage}: {}", list.join(", then "))
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
        prefill_threads: Some(opts.llm_prefill_threads.unwrap_or(DEFAULT_PREFILL_THREADS)),
        ..Default::default()
    };
    let model = crate::llm::llama::LlamaChat::load(&path, options)?;
    Ok(LegModel::new(Arc::new(model), None))
}

#[cfg(feature = "embedded")]
fn embedded_tts(
    store: &ModelStore,
    opts: &StackOptions,
) -> Result<Arc<dyn TextToSpeech>, StackError> {
    if opts.tts_engine == TtsEngine::Espeak {
        return Ok(Arc::new(crate::tts::espeak::EspeakTts::new(
            crate::tts::espeak::DEFAULT_RATE_WPM,
        )?));
    }
    let onnx = store.require(ModelId::PiperJoe)?;
    let json = onnx.with_extension("onnx.json");
    let lib = store.require(ModelId::OnnxRuntime)?;
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
fn embedded_tts(_: &ModelStore, _: &StackOptions) -> Result<Arc<dyn TextToSpeech>, StackError> {
    Ok(Arc::new(crate::tts::espeak::EspeakTts::new(
        crate::tts::espeak::DEFAULT_RATE_WPM,
    )?))
}
