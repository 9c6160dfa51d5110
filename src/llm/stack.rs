//! [`LlmStack`]: everything the pipeline needs from the LLM layer, built
//! from an [`LlmConfig`]: the span sink, the telemetry store (loaded at start,
//! saved on shutdown), the router, and the hosted STT/TTS backends when
//! configured.
//!
//! # Invariants
//! 1. The store is loaded once at start and saved by [`LlmStack::save`]
//!    (call it on shutdown); a corrupt store file is an error naming the file,
//!    never silently replaced.
//! 2. Keys are resolved from the environment at build time (config
//!    invariant 1); a key variable that is named but unset fails the build
//!    with a hint, before any request.

use crate::llm::config::{key_env, resolve_key, ConfigError, LlmConfig, ServiceSpec};
use crate::llm::router::Router;
use crate::llm::span::SpanSink;
use crate::llm::telemetry::{StoreError, Telemetry};
use crate::stt::openai::OpenAiStt;
use crate::tts::openai::OpenAiTts;
use std::path::PathBuf;
use std::sync::Arc;

/// Failing to build the stack.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The LLM layer, ready for turns.
#[derive(Debug)]
pub struct LlmStack {
    pub router: Arc<Router>,
    pub sink: SpanSink,
    pub telemetry: Telemetry,
    store_path: Option<PathBuf>,
}

/// The default voice when `--tts` names none.
pub const DEFAULT_VOICE: &str = "alloy";

/// A hosted STT backend for `spec` (key from `env`).
pub fn build_stt(
    spec: &ServiceSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OpenAiStt, ConfigError> {
    let var = key_env(spec.api_key_env.as_deref(), spec.default_key, env);
    let key = resolve_key(var.as_deref(), &format!("stt {}", spec.model), env)?;
    Ok(OpenAiStt::new(&spec.base_url, spec.model.clone(), key))
}

/// A hosted TTS backend for `spec` (key from `env`).
pub fn build_tts(
    spec: &ServiceSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OpenAiTts, ConfigError> {
    let var = key_env(spec.api_key_env.as_deref(), spec.default_key, env);
    let key = resolve_key(var.as_deref(), &format!("tts {}", spec.model), env)?;
    let voice = spec
        .voice
        .clone()
        .unwrap_or_else(|| DEFAULT_VOICE.to_string());
    Ok(OpenAiTts::new(
        &spec.base_url,
        spec.model.clone(),
        voice,
        key,
    ))
}

impl LlmStack {
    /// Loads the store at `store_path` (none: in memory only) and builds the
    /// router over `config.models` (holds invariants 1 and 2).
    pub fn start(
        config: &LlmConfig,
        store_path: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StackError> {
        let telemetry = match &store_path {
            Some(p) => Telemetry::load(p, config.telemetry.clone())?,
            None => Telemetry::empty(config.telemetry.clone()),
        };
        let sink = SpanSink::default();
        let router = Arc::new(Router::from_config(
            config,
            sink.clone(),
            telemetry.clone(),
            env,
        )?);
        Ok(Self {
            router,
            sink,
            telemetry,
            store_path,
        })
    }

    /// Saves the store (call on shutdown); no-op without a store path.
    pub fn save(&self) -> Result<(), StoreError> {
        match &self.store_path {
            Some(p) => self.telemetry.save(p),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stack_loads_and_saves_its_store_and_fails_early_on_a_missing_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.json");
        let mut config = LlmConfig::default();
        config
            .apply_cli(
                &["http://127.0.0.1:9/v1::m".into()],
                &["http://127.0.0.1:9/v1::w".into()],
                &[],
                &|_| None,
            )
            .expect("cli");
        let stack = LlmStack::start(&config, Some(path.clone()), &|_| None).expect("stack");
        stack.telemetry.record_success(
            "127.0.0.1:9/m",
            Some(std::time::Duration::from_millis(90)),
            None,
        );
        stack.save().expect("save");
        let again = LlmStack::start(&config, Some(path), &|_| None).expect("reload");
        assert_eq!(
            again.telemetry.summary("127.0.0.1:9/m").ttft_p50_ms,
            Some(90)
        );
        assert_eq!(again.router.candidates().len(), 1);
        let crate::llm::config::Entry::Hosted(spec) = &config.stt[0] else {
            panic!("hosted stt");
        };
        let stt = build_stt(spec, &|_| None).expect("stt");
        assert_eq!(crate::stt::SpeechToText::name(&stt), "openai:w");

        if let crate::llm::config::Entry::Hosted(m) = &mut config.models[0] {
            m.api_key_env = Some("COLLOQUY_TEST_UNSET_KEY".into());
        }
        let err = LlmStack::start(&config, None, &|_| None).expect_err("missing key");
        assert!(err.to_string().contains("COLLOQUY_TEST_UNSET_KEY"), "{err}");
    }
}
