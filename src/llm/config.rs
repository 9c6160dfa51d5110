//! Configuration of the hosted model stages: the list of chat models
//! (provider, base URL, model, API-key variable, price), the STT and TTS
//! services, and the retry/router/leg knobs. Read from the `[llm]` TOML
//! table, then `COLLOQUY_LLM`/`COLLOQUY_STT`/`COLLOQUY_TTS`, then the
//! `--llm`/`--stt`/`--tts` flags (`BASE_URL::MODEL[::VOICE]`).
//!
//! # Invariants
//! 1. An API key is only ever read from the environment variable the config
//!    names, held in an [`ApiKey`] whose `Debug` prints `***`, and never put
//!    in a log, an event or an error message.
//! 2. The order of the model list is the preference while no latency is known.
//! 3. Later sources replace earlier ones as a whole: a `--llm` list replaces
//!    the config file's list rather than appending to it.

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
}

/// The `[llm]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    pub models: Vec<ModelSpec>,
    pub stt: Option<ServiceSpec>,
    pub tts: Option<ServiceSpec>,
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

fn invalid(origin: &str, message: impl Into<String>, hint: &str) -> ConfigError {
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
        toml::from_str(text)
            .map_err(|e| invalid(origin, e.to_string(), "see the [llm] example in the README"))
    }

    fn models_from_list(
        list: &[String],
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<ModelSpec>, ConfigError> {
        list.iter()
            .map(|s| {
                let e = parse_endpoint(s.trim(), origin)?;
                if e.voice.is_some() {
                    return Err(invalid(
                        origin,
                        format!("`{s}`: a chat model takes no voice"),
                        "write BASE_URL::MODEL",
                    ));
                }
                Ok(ModelSpec {
                    provider: None,
                    base_url: e.base_url,
                    model: e.model,
                    api_key_env: cli_key_env(env),
                    price: None,
                })
            })
            .collect()
    }

    fn service(
        s: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServiceSpec, ConfigError> {
        let e = parse_endpoint(s.trim(), origin)?;
        Ok(ServiceSpec {
            base_url: e.base_url,
            model: e.model,
            voice: e.voice,
            api_key_env: cli_key_env(env),
        })
    }

    /// Applies `COLLOQUY_LLM` (comma-separated endpoints), `COLLOQUY_STT` and
    /// `COLLOQUY_TTS` from `env` (invariant 3).
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(list) = env("COLLOQUY_LLM").filter(|v| !v.trim().is_empty()) {
            let items: Vec<String> = list.split(',').map(str::to_string).collect();
            self.models = Self::models_from_list(&items, "COLLOQUY_LLM", env)?;
        }
        if let Some(s) = env("COLLOQUY_STT").filter(|v| !v.trim().is_empty()) {
            self.stt = Some(Self::service(&s, "COLLOQUY_STT", env)?);
        }
        if let Some(s) = env("COLLOQUY_TTS").filter(|v| !v.trim().is_empty()) {
            self.tts = Some(Self::service(&s, "COLLOQUY_TTS", env)?);
        }
        Ok(())
    }

    /// Applies the `--llm` (repeatable), `--stt` and `--tts` flags
    /// (invariants 2 and 3).
    pub fn apply_cli(
        &mut self,
        llm: &[String],
        stt: Option<&str>,
        tts: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if !llm.is_empty() {
            self.models = Self::models_from_list(llm, "--llm", env)?;
        }
        if let Some(s) = stt {
            self.stt = Some(Self::service(s, "--stt", env)?);
        }
        if let Some(s) = tts {
            self.tts = Some(Self::service(s, "--tts", env)?);
        }
        Ok(())
    }
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
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn endpoints_parse_with_ports_paths_ipv6_and_voices() {
        let e = parse_endpoint("http://127.0.0.1:8080/v1::gpt-x", "t").unwrap();
        assert_eq!(e.base_url, "http://127.0.0.1:8080/v1");
        assert_eq!(e.model, "gpt-x");
        let e = parse_endpoint("http://[::1]:9000/v1/::m::alloy", "t").unwrap();
        assert_eq!(e.base_url, "http://[::1]:9000/v1");
        assert_eq!((e.model.as_str(), e.voice.as_deref()), ("m", Some("alloy")));
        for bad in [
            "127.0.0.1::m",
            "ftp://127.0.0.1::m",
            "http://127.0.0.1",
            "http://127.0.0.1::",
            "http://127.0.0.1::m::v::x",
        ] {
            let err = parse_endpoint(bad, "--llm").expect_err(bad);
            assert!(err.to_string().contains("fix:"), "{err}");
        }
    }

    #[test]
    fn cli_models_replace_the_file_list_in_order_with_the_default_key_var() {
        let mut c = LlmConfig::from_toml(
            r#"
            [[models]]
            provider = "a"
            base_url = "http://127.0.0.1:1/v1"
            model = "m1"
            api_key_env = "A_KEY"
            price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }
            [retry]
            max_attempts = 2
            "#,
            "colloquy.toml",
        )
        .unwrap();
        assert_eq!(c.models[0].key(), "a/m1");
        assert_eq!(c.retry.max_attempts, 2);
        let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk-test".to_string());
        c.apply_cli(
            &[
                "http://127.0.0.1:1/v1::x".into(),
                "http://127.0.0.1:2/v1::y".into(),
            ],
            None,
            Some("http://127.0.0.1:3/v1::tts-1::nova"),
            &env,
        )
        .unwrap();
        let keys: Vec<_> = c.models.iter().map(ModelSpec::key).collect();
        assert_eq!(keys, ["127.0.0.1:1/x", "127.0.0.1:2/y"]);
        assert_eq!(c.models[0].api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert_eq!(
            c.tts.as_ref().and_then(|t| t.voice.as_deref()),
            Some("nova")
        );
        c.apply_cli(&["http://127.0.0.1::x".into()], None, None, &no_env)
            .unwrap();
        assert_eq!(c.models[0].api_key_env, None, "no OPENAI_API_KEY: no key");
    }

    #[test]
    fn env_lists_apply_and_unknown_fields_are_rejected() {
        let mut c = LlmConfig::default();
        let env = |k: &str| {
            (k == "COLLOQUY_LLM")
                .then(|| "http://127.0.0.1:4/v1::m1, http://127.0.0.1:5/v1::m2".to_string())
        };
        c.apply_env(&env).unwrap();
        assert_eq!(c.models.len(), 2);
        let err = LlmConfig::from_toml("[[models]]\nbase_url='x'\nmodel='m'\nkey='oops'", "f.toml")
            .expect_err("unknown field");
        assert!(err.to_string().contains("f.toml"), "{err}");
    }

    #[test]
    fn keys_come_from_the_named_variable_and_never_print() {
        let env = |k: &str| (k == "MY_KEY").then(|| "sk-secret-123".to_string());
        let key = resolve_key(Some("MY_KEY"), "m", &env).unwrap().unwrap();
        assert_eq!(format!("{key:?}"), "***");
        assert_eq!(key.redact("bearer sk-secret-123!"), "bearer ***!");
        let err = resolve_key(Some("NOPE"), "p/m", &env).expect_err("missing");
        assert!(err.to_string().contains("NOPE") && err.to_string().contains("fix:"));
        assert_eq!(resolve_key(None, "m", &env).unwrap(), None);
    }
}
