//! Configuration of the model stages: each stage's candidate list — the
//! word `embedded` (this machine's model: SmolLM2, Whisper, Piper/espeak-ng)
//! or a hosted `BASE_URL::MODEL[::VOICE]` (provider, API-key variable,
//! price) — and the retry/router/leg knobs. Read from the config file
//! (`models`, `stt`, `tts` lists), then `COLLOQUY_LLM`/`COLLOQUY_STT`/
//! `COLLOQUY_TTS` (comma-separated), then the repeatable `--llm`/`--stt`/
//! `--tts` flags. An empty list means `embedded` alone.
//!
//! # Invariants
//! 1. An API key is only ever read from the environment variable the config
//!    names, held in an [`ApiKey`] whose `Debug` prints `***`, and never put
//!    in a log, an event or an error message.
//! 2. The order of the model list is the preference while no latency is known.
//! 3. Later sources replace earlier ones as a whole: a `--llm` list replaces
//!    the config file's list rather than appending to it.
//! 4. A list entry is `embedded` or a URL with an http(s) scheme and a
//!    model; anything else (another scheme, a bare word, an empty entry, a
//!    candidate listed twice) is an error naming the entry and its source.

use crate::llm::leg::LegTimeouts;
use crate::llm::retry::RetryPolicy;
use crate::llm::router::RouterPolicy;
use crate::llm::telemetry::WindowConfig;
use serde::{Deserialize, Serialize};

/// The variable the key comes from when the command line gives no other.
pub const DEFAULT_KEY_ENV: &str = "OPENAI_API_KEY";

/// A secret API key (holds invariant 1).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the HTTP client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, "***")
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Price per million tokens, in US dollars.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    /// The cost of one request.
    pub fn cost_usd(&self, tokens_in: u32, tokens_out: u32) -> f64 {
        (tokens_in as f64 * self.input_per_mtok + tokens_out as f64 * self.output_per_mtok) / 1e6
    }
}

/// One chat model candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Provider name for spans and the store; defaults to the base URL's host.
    #[serde(default)]
    pub provider: Option<String>,
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the key; none: no key is sent.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub price: Option<Price>,
    /// Written as a `BASE_URL::MODEL` string: the key comes from
    /// `OPENAI_API_KEY` when that is set.
    #[serde(skip)]
    pub default_key: bool,
}

impl ModelSpec {
    /// The provider name (given, or the base URL's host and port).
    pub fn provider_name(&self) -> String {
        self.provider
            .clone()
            .unwrap_or_else(|| host_of(&self.base_url))
    }

    /// `provider/model`, the key of the store and the router.
    pub fn key(&self) -> String {
        format!("{}/{}", self.provider_name(), self.model)
    }
}

/// A speech service (STT or TTS).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub voice: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// As in [`ModelSpec::default_key`].
    #[serde(skip)]
    pub default_key: bool,
}

impl ServiceSpec {
    /// `host:port/model`, the store key's provider/model part.
    pub fn key(&self) -> String {
        format!("{}/{}", host_of(&self.base_url), self.model)
    }
}

use super::entry::{check_unique, one_or_many};
pub use super::entry::{parse_entry, parse_list, Entry, FromEndpoint};

/// The `[llm]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// The LLM candidates (empty: `embedded` alone).
    pub models: Vec<Entry<ModelSpec>>,
    #[serde(deserialize_with = "one_or_many")]
    pub stt: Vec<Entry<ServiceSpec>>,
    #[serde(deserialize_with = "one_or_many")]
    pub tts: Vec<Entry<ServiceSpec>>,
    pub retry: RetryPolicy,
    pub router: RouterPolicy,
    pub leg: LegTimeouts,
    pub telemetry: WindowConfig,
}

/// A configuration problem.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{origin}: {message} (fix: {hint})")]
    Invalid {
        origin: String,
        message: String,
        hint: String,
    },
    #[error("model {model}: environment variable {var} is not set (fix: export {var}=<your key>, or remove api_key_env for a server without auth)")]
    MissingKey { model: String, var: String },
}

pub(crate) fn invalid(origin: &str, message: impl Into<String>, hint: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.into(),
        message: message.into(),
        hint: hint.into(),
    }
}

/// A parsed `BASE_URL::MODEL[::VOICE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub base_url: String,
    pub model: String,
    pub voice: Option<String>,
}

/// The host (and port) of a URL, for a default provider name.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Parses `BASE_URL::MODEL[::VOICE]`. The base URL may itself contain `::`
/// inside an IPv6 literal (`http://[::1]:8080/v1::model`).
pub fn parse_endpoint(s: &str, origin: &str) -> Result<Endpoint, ConfigError> {
    const HINT: &str = "write BASE_URL::MODEL, e.g. http://127.0.0.1:8080/v1::my-model";
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        invalid(
            origin,
            format!("`{s}` has no base URL with an http or https scheme"),
            HINT,
        )
    })?;
    if scheme != "http" && scheme != "https" {
        return Err(invalid(
            origin,
            format!("`{s}`: scheme `{scheme}` is not http or https"),
            HINT,
        ));
    }
    // Skip an IPv6 literal, whose colons are not separators.
    let search_from = if rest.starts_with('[') {
        rest.find(']').map(|i| i + 1).unwrap_or(0)
    } else {
        0
    };
    let sep = rest[search_from..]
        .find("::")
        .map(|i| i + search_from)
        .ok_or_else(|| invalid(origin, format!("`{s}` names no model"), HINT))?;
    let base = &rest[..sep];
    let mut parts = rest[sep + 2..].split("::");
    let model = parts.next().unwrap_or_default();
    let voice = parts.next();
    if parts.next().is_some() {
        return Err(invalid(
            origin,
            format!("`{s}` has more than BASE_URL::MODEL::VOICE"),
            HINT,
        ));
    }
    if base.is_empty() || model.is_empty() || voice.is_some_and(str::is_empty) {
        return Err(invalid(origin, format!("`{s}` has an empty part"), HINT));
    }
    Ok(Endpoint {
        base_url: format!("{scheme}://{}", base.trim_end_matches('/')),
        model: model.to_string(),
        voice: voice.map(str::to_string),
    })
}

/// The default key variable for endpoints given on the command line:
/// `OPENAI_API_KEY` when it is set (invariant 1).
fn cli_key_env(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    env(DEFAULT_KEY_ENV).map(|_| DEFAULT_KEY_ENV.to_string())
}

impl LlmConfig {
    /// Parses a TOML text holding the `[llm]` table's contents.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| {
            invalid(
                origin,
                e.to_string(),
                "see the routing example in the README",
            )
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn with_key_env<S>(
        mut list: Vec<Entry<S>>,
        env: &dyn Fn(&str) -> Option<String>,
        set: impl Fn(&mut S, Option<String>),
    ) -> Vec<Entry<S>> {
        for e in &mut list {
            if let Entry::Hosted(s) = e {
                set(s, cli_key_env(env));
            }
        }
        list
    }

    fn set_llm(
        &mut self,
        items: &[String],
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let list = parse_list::<ModelSpec>(items, origin)?;
        self.models = Self::with_key_env(list, env, |s, k| {
            s.api_key_env = k;
            s.default_key = false;
        });
        Ok(())
    }

    fn set_service(
        items: &[String],
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<Entry<ServiceSpec>>, ConfigError> {
        let list = parse_list::<ServiceSpec>(items, origin)?;
        Ok(Self::with_key_env(list, env, |s, k| {
            s.api_key_env = k;
            s.default_key = false;
        }))
    }

    /// Applies `COLLOQUY_LLM`, `COLLOQUY_STT` and `COLLOQUY_TTS`
    /// (comma-separated lists) from `env` (invariants 3 and 4).
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let split = |v: String| v.split(',').map(str::to_string).collect::<Vec<_>>();
        if let Some(list) = env("COLLOQUY_LLM").filter(|v| !v.trim().is_empty()) {
            self.set_llm(&split(list), "COLLOQUY_LLM", env)?;
        }
        if let Some(list) = env("COLLOQUY_STT").filter(|v| !v.trim().is_empty()) {
            self.stt = Self::set_service(&split(list), "COLLOQUY_STT", env)?;
        }
        if let Some(list) = env("COLLOQUY_TTS").filter(|v| !v.trim().is_empty()) {
            self.tts = Self::set_service(&split(list), "COLLOQUY_TTS", env)?;
        }
        Ok(())
    }

    /// Applies the repeatable `--llm`, `--stt` and `--tts` flags
    /// (invariants 2, 3 and 4).
    pub fn apply_cli(
        &mut self,
        llm: &[String],
        stt: &[String],
        tts: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if !llm.is_empty() {
            self.set_llm(llm, "--llm", env)?;
        }
        if !stt.is_empty() {
            self.stt = Self::set_service(stt, "--stt", env)?;
        }
        if !tts.is_empty() {
            self.tts = Self::set_service(tts, "--tts", env)?;
        }
        Ok(())
    }

    /// Checks the file's lists (invariant 4: no candidate twice).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        check_unique(&self.models, origin)?;
        check_unique(&self.stt, origin)?;
        check_unique(&self.tts, origin)
    }

    /// The LLM candidates (`embedded` alone when none are listed).
    pub fn llm_candidates(&self) -> Vec<Entry<ModelSpec>> {
        if self.models.is_empty() {
            vec![Entry::Embedded]
        } else {
            self.models.clone()
        }
    }

    /// The STT candidates (`embedded` alone when none are listed).
    pub fn stt_candidates(&self) -> Vec<Entry<ServiceSpec>> {
        if self.stt.is_empty() {
            vec![Entry::Embedded]
        } else {
            self.stt.clone()
        }
    }

    /// The TTS candidates (`embedded` alone when none are listed).
    pub fn tts_candidates(&self) -> Vec<Entry<ServiceSpec>> {
        if self.tts.is_empty() {
            vec![Entry::Embedded]
        } else {
            self.tts.clone()
        }
    }
}

/// The variable a spec's key comes from: the one it names, else
/// `OPENAI_API_KEY` for a string entry when that is set (invariant 1).
pub fn key_env(
    api_key_env: Option<&str>,
    default_key: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    api_key_env
        .map(str::to_string)
        .or_else(|| (default_key).then(|| cli_key_env(env)).flatten())
}

/// Reads the key a spec names from `env` (invariant 1).
pub fn resolve_key(
    api_key_env: Option<&str>,
    what: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ApiKey>, ConfigError> {
    match api_key_env {
        None => Ok(None),
        Some(var) => env(var)
            .filter(|k| !k.is_empty())
            .map(|k| Some(ApiKey::new(k)))
            .ok_or_else(|| ConfigError::MissingKey {
                model: what.to_string(),
                var: var.to_string(),
            }),
    }
}

/// The process environment, for `apply_env`/`apply_cli`/`resolve_key`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
