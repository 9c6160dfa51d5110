//! Language models: the [`ChatModel`] trait every backend implements
//! (embedded llama.cpp, any OpenAI-compatible service), and the message types.
//!
//! # Invariants
//! 1. A reply is a stream of [`ChatDelta`]s ending with exactly one
//!    `Finished` or one error; dropping the stream cancels the request (the
//!    HTTP connection is closed, embedded generation stops within one token).
//! 2. An [`LlmError`] always carries an [`ErrorClass`]; routing and retries
//!    decide on the class, never on message text.
//! 3. A request whose last message is the assistant's asks the model to
//!    continue that text (`continuation`): the embedded model renders it
//!    as the open assistant turn; a hosted server may restart it instead,
//!    which the router's repeat guard absorbs.

pub mod config;
pub mod continuation;
pub mod entry;
pub mod leg;
pub mod lifecycle;
pub mod openai;
pub mod retry;
pub mod router;
pub mod span;
pub mod stack;
pub mod telemetry;
mod telemetry_io;
pub mod testkit;

pub use config::{ApiKey, LlmConfig, ModelSpec, Price};
pub use leg::{CancelSignal, LegRunner, LegTimeouts};
pub use router::{Candidate, RoutePlan, Router, RouterPolicy, TurnItem, TurnReply};
pub use span::{SpanEvent, SpanKind, SpanSink};
pub use stack::LlmStack;
pub use telemetry::{Telemetry, TelemetryStore, WindowConfig};

#[cfg(feature = "embedded")]
pub mod llama;

#[cfg(feature = "embedded")]
pub use llama::LlamaChat;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The provider name of the embedded model (llama.cpp), the `embedded`
/// candidate of the LLM stage.
pub const EMBEDDED_PROVIDER: &str = "embedded";

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// A tool call the model asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Arguments as a JSON object text.
    pub arguments: String,
}

/// One message of the conversation context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Tool calls made in this (assistant) message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `Tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For an assistant message: the user cut it off; `content` is what was heard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl ChatMessage {
    fn plain(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            interrupted: false,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::plain(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::plain(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::plain(Role::Assistant, content)
    }

    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::plain(Role::Tool, content)
        }
    }
}

/// A tool the model may call, with a JSON-schema for its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// What is sent to a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
    pub temperature: f32,
}

impl ChatRequest {
    /// A request with voice-friendly defaults (short, low temperature).
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            tools: Vec::new(),
            max_tokens: 96,
            temperature: 0.3,
        }
    }

    /// Rough prompt size in characters (for spans when no tokenizer is at hand).
    pub fn prompt_chars(&self) -> usize {
        self.messages.iter().map(|m| m.content.len()).sum()
    }
}

/// Why generation stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    Other(String),
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub tokens_in: u32,
    pub tokens_out: u32,
}

/// One piece of a streamed reply.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatDelta {
    /// Text tokens.
    Text(String),
    /// A complete tool call.
    ToolCall(ToolCall),
    /// The end of the reply (holds invariant 1).
    Finished {
        reason: FinishReason,
        usage: Option<Usage>,
    },
}

/// A streamed reply.
pub type ChatStream = BoxStream<'static, Result<ChatDelta, LlmError>>;

/// The class of a failure; retries and routing decide on it (invariant 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// No answer in time; a retry may help.
    Timeout,
    /// 429 or a quota error; retry after the cooldown, preferably elsewhere.
    RateLimited,
    /// 5xx; a retry may help.
    Server,
    /// 4xx other than 429 (bad key, bad request); retrying will not help.
    Client,
    /// Connection refused or reset; a retry may help.
    Network,
    /// The response could not be parsed; a retry may help.
    Malformed,
    /// Anything else.
    Other,
}

impl ErrorClass {
    /// Whether retrying the same request can succeed.
    pub fn retryable(self) -> bool {
        !matches!(self, ErrorClass::Client | ErrorClass::Other)
    }
}

/// A failed LLM request.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
#[error("{class:?} error from {provider}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct LlmError {
    pub class: ErrorClass,
    pub provider: String,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl LlmError {
    pub fn new(class: ErrorClass, provider: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            provider: provider.into(),
            status: None,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// A chat model: embedded or hosted.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// Provider name (`embedded`, or the configured provider's name).
    fn provider(&self) -> &str;
    /// Model name.
    fn model(&self) -> &str;
    /// Starts a streamed reply (holds invariant 1).
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError>;

    /// Warm start: loads a prompt prefix (system prompt and history, no
    /// user turn yet) into the model's cache, so the next request that
    /// starts with it only pays for its new tokens. Models without such a
    /// cache (hosted ones) do nothing and return `Ok(None)`. Dropping the
    /// future abandons the prefill.
    async fn prefill(&self, _messages: &[ChatMessage]) -> Result<Option<Prefilled>, LlmError> {
        Ok(None)
    }
}

/// What a [`ChatModel::prefill`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prefilled {
    /// Tokens of the prefix.
    pub tokens: u32,
    /// Of which already in the cache (not decoded again).
    pub reused: u32,
}
