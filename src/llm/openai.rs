//! The OpenAI-compatible chat backend ([`OpenAiChat`], streaming through
//! `async-openai`) and the HTTP plumbing the STT and TTS backends share:
//! a client that never retries on its own and keeps the status and
//! retry-after of failed responses.
//!
//! # Invariants
//! 1. The HTTP client does no retries: `async-openai`'s default executor
//!    retries 429/5xx/connect errors itself, so every client here is built
//!    with [`NoRetryService`]; retrying is the leg's job (see `retry`).
//! 2. Every error is classified into an [`ErrorClass`] from its status or
//!    transport kind, never from guessing at text — except the documented
//!    quota words in a 4xx body, which mean "rate limited".
//! 3. Error messages are redacted with the model's [`ApiKey`] before they
//!    leave this module; the key is only in the `Authorization` header.
//! 4. Dropping the returned stream closes the HTTP connection (async-openai's
//!    reader task watches its channel closing and drops the response).

use crate::llm::config::ApiKey;
use crate::llm::{
    ChatDelta, ChatModel, ChatRequest, ChatStream, ErrorClass, FinishReason, LlmError, Role,
    ToolCall, Usage,
};
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::Client;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A non-success HTTP response, with what retrying needs.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {message}")]
pub struct HttpStatusError {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub message: String,
    /// The error `type`/`code` of an OpenAI-style error body.
    pub code: Option<String>,
}

/// Parses `Retry-After` (seconds, fractional allowed) or `retry-after-ms`.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

/// The tower service every client here runs on: one plain HTTP request, no
/// retry (invariant 1), non-success responses turned into [`HttpStatusError`].
#[derive(Clone, Debug)]
pub struct NoRetryService {
    http: reqwest::Client,
}

impl tower::Service<HttpRequestFactory> for NoRetryService {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
            if response.status().is_success() {
                return Ok(response);
            }
            let status = response.status().as_u16();
            let retry_after = retry_after(response.headers());
            let body = response.bytes().await.unwrap_or_default();
            let (message, code) = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(b) => {
                    let code = b
                        .error
                        .code
                        .and_then(|c| c.as_str().map(str::to_string))
                        .or(b.error.kind);
                    (b.error.message, code)
                }
                Err(_) => (
                    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
                    None,
                ),
            };
            Err(OpenAIError::Boxed(Box::new(HttpStatusError {
                status,
                retry_after,
                message,
                code,
            })))
        })
    }
}

/// Whether an address is on this machine (no proxy for it).
fn is_loopback(base_url: &str) -> bool {
    let rest = base_url.split_once("://").map_or(base_url, |(_, r)| r);
    ["127.", "localhost", "[::1]"]
        .iter()
        .any(|p| rest.starts_with(p))
}

/// Whole-request limit of the STT and TTS clients (chat streams are timed by
/// the leg instead).
pub const SPEECH_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An `async-openai` client for `base_url` that never retries (invariant 1),
/// with an optional whole-request `timeout`.
pub fn build_client(
    base_url: &str,
    key: Option<&ApiKey>,
    timeout: Option<Duration>,
) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(base_url)
        .with_api_key(key.map(ApiKey::expose).unwrap_or_default())
        .with_org_id("")
        .with_project_id("");
    let mut builder = reqwest::Client::builder();
    if is_loopback(base_url) {
        builder = builder.no_proxy();
    }
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    // Building only fails on TLS back-end set-up; the default client then.
    let http = builder.build().unwrap_or_default();
    Client::with_config(config).with_http_service(NoRetryService { http })
}

/// Classifies an `async-openai` error (invariant 2) and redacts it (invariant 3).
pub fn classify(error: OpenAIError, provider: &str, key: Option<&ApiKey>) -> LlmError {
    let redact = |s: String| key.map_or(s.clone(), |k| k.redact(&s));
    let (class, status, retry_after, message) = match error {
        OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpStatusError>() {
            Ok(h) => {
                let quota = {
                    let text = format!("{} {}", h.message, h.code.clone().unwrap_or_default())
                        .to_lowercase();
                    text.contains("quota")
                        || text.contains("rate limit")
                        || text.contains("rate_limit")
                };
                let class = match h.status {
                    429 => ErrorClass::RateLimited,
                    408 | 504 => ErrorClass::Timeout,
                    500..=599 => ErrorClass::Server,
                    400..=499 if quota => ErrorClass::RateLimited,
                    400..=499 => ErrorClass::Client,
                    _ => ErrorClass::Other,
                };
                (class, Some(h.status), h.retry_after, h.message)
            }
            Err(other) => (ErrorClass::Other, None, None, other.to_string()),
        },
        OpenAIError::Reqwest(e) => {
            let class = if e.is_timeout() {
                ErrorClass::Timeout
            } else if e.is_decode() {
                ErrorClass::Malformed
            } else if e.is_connect() || e.is_request() || e.is_body() {
                ErrorClass::Network
            } else {
                ErrorClass::Other
            };
            let status = e.status().map(|s| s.as_u16());
            (class, status, None, e.to_string())
        }
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            let class = match status {
                429 => ErrorClass::RateLimited,
                500..=599 => ErrorClass::Server,
                400..=499 => ErrorClass::Client,
                _ => ErrorClass::Other,
            };
            (class, Some(status), None, api.api_error.message)
        }
        OpenAIError::JSONDeserialize(e, _) => (
            ErrorClass::Malformed,
            None,
            None,
            format!("invalid JSON in the response: {e}"),
        ),
        // The SSE byte stream broke: the connection was reset or closed mid-body.
        OpenAIError::StreamError(e) => match *e {
            async_openai::error::StreamError::EventStream(m) => {
                (ErrorClass::Network, None, None, m)
            }
            other => (ErrorClass::Malformed, None, None, other.to_string()),
        },
        OpenAIError::InvalidArgument(m) => (ErrorClass::Client, None, None, m),
        other => (ErrorClass::Other, None, None, other.to_string()),
    };
    LlmError {
        class,
        provider: provider.to_string(),
        status,
        retry_after,
        message: redact(message),
    }
}

/// An OpenAI-compatible chat-completions model, streamed.
pub struct OpenAiChat {
    provider: String,
    model: String,
    key: Option<ApiKey>,
    client: Client<OpenAIConfig>,
}

impl std::fmt::Debug for OpenAiChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiChat")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl OpenAiChat {
    /// A model at `base_url` (…/v1), authenticated with `key` when given.
    pub fn new(
        provider: impl Into<String>,
        base_url: &str,
        model: impl Into<String>,
        key: Option<ApiKey>,
    ) -> Self {
        Self {
            provider: provider.into(),
            model: model.into(),
            client: build_client(base_url, key.as_ref(), None),
            key,
        }
    }

    fn body(&self, request: &ChatRequest) -> serde_json::Value {
        let messages: Vec<serde_json::Value> = request
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::Tool => "tool",
                };
                let mut v = serde_json::json!({ "role": role, "content": m.content });
                if !m.tool_calls.is_empty() {
                    v["tool_calls"] = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "id": c.id, "type": "function",
                                "function": { "name": c.name, "arguments": c.arguments }
                            })
                        })
                        .collect();
                }
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = id.clone().into();
                }
                v
            })
            .collect();
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "type": "function",
                        "function": { "name": t.name, "description": t.description, "parameters": t.parameters }
                    })
                })
                .collect();
        }
        body
    }
}

/// A streamed chunk, parsed leniently (servers differ in optional fields).
#[derive(Debug, Default, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
}

#[derive(Debug, Default, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: ChunkDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ChunkToolCall>,
}

#[derive(Debug, Default, Deserialize)]
struct ChunkToolCall {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<ChunkFunction>,
}

#[derive(Debug, Default, Deserialize)]
struct ChunkFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Turns chunks into [`ChatDelta`]s: text as it comes, tool calls when
/// complete, `Finished` when the server ends the stream (ChatModel invariant 1).
#[derive(Default)]
struct Assembler {
    tools: BTreeMap<u32, ToolCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    chunks: usize,
}

impl Assembler {
    fn push(&mut self, chunk: Chunk, out: &mut Vec<ChatDelta>) {
        self.chunks += 1;
        if let Some(u) = chunk.usage {
            self.usage = Some(Usage {
                tokens_in: u.prompt_tokens,
                tokens_out: u.completion_tokens,
            });
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                out.push(ChatDelta::Text(text));
            }
            for call in choice.delta.tool_calls {
                let entry = self.tools.entry(call.index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = call.id {
                    entry.id = id;
                }
                if let Some(f) = call.function {
                    if let Some(n) = f.name {
                        entry.name.push_str(&n);
                    }
                    if let Some(a) = f.arguments {
                        entry.arguments.push_str(&a);
                    }
                }
            }
            if let Some(r) = choice.finish_reason {
                self.finish = Some(finish_reason(&r));
            }
        }
    }

    fn end(&mut self, provider: &str) -> Vec<Result<ChatDelta, LlmError>> {
        let mut out: Vec<Result<ChatDelta, LlmError>> = std::mem::take(&mut self.tools)
            .into_values()
            .map(|c| Ok(ChatDelta::ToolCall(c)))
            .collect();
        match self.finish.take() {
            Some(reason) => out.push(Ok(ChatDelta::Finished {
                reason,
                usage: self.usage,
            })),
            None if self.chunks == 0 => out.push(Err(LlmError::new(
                ErrorClass::Malformed,
                provider,
                "empty stream: the server sent no chunk before ending",
            ))),
            None => out.push(Err(LlmError::new(
                ErrorClass::Network,
                provider,
                "the stream ended without a finish reason (connection closed early?)",
            ))),
        }
        out
    }
}

#[async_trait]
impl ChatModel for OpenAiChat {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        let body = self.body(&request);
        let provider = self.provider.clone();
        let key = self.key.clone();
        let raw = self
            .client
            .chat()
            .create_stream_byot::<serde_json::Value, Chunk>(body)
            .await
            .map_err(|e| classify(e, &provider, key.as_ref()))?;
        // Holds invariant 4: `raw` moves into the returned stream.
        let state = (raw, Assembler::default(), provider, key, false);
        let stream = futures::stream::unfold(
            state,
            |(mut raw, mut asm, provider, key, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match raw.next().await {
                        Some(Ok(chunk)) => {
                            let mut out = Vec::new();
                            asm.push(chunk, &mut out);
                            if !out.is_empty() {
                                let items: Vec<Result<ChatDelta, LlmError>> =
                                    out.into_iter().map(Ok).collect();
                                return Some((
                                    futures::stream::iter(items),
                                    (raw, asm, provider, key, false),
                                ));
                            }
                        }
                        Some(Err(e)) => {
                            let err = classify(e, &provider, key.as_ref());
                            return Some((
                                futures::stream::iter(vec![Err(err)]),
                                (raw, asm, provider, key, true),
                            ));
                        }
                        None => {
                            let items = asm.end(&provider);
                            return Some((
                                futures::stream::iter(items),
                                (raw, asm, provider, key, true),
                            ));
                        }
                    }
                }
            },
        )
        .flatten();
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_assemble_into_text_tool_calls_and_one_finish() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        let chunks = [
            r#"{"choices":[{"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"get","arguments":"{\"a\""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#,
        ];
        for c in chunks {
            asm.push(serde_json::from_str(c).unwrap(), &mut out);
        }
        assert_eq!(out, [ChatDelta::Text("Hi".into())]);
        let end: Vec<_> = asm.end("p").into_iter().map(Result::unwrap).collect();
        assert_eq!(
            end,
            [
                ChatDelta::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "get".into(),
                    arguments: "{\"a\":1}".into()
                }),
                ChatDelta::Finished {
                    reason: FinishReason::ToolCalls,
                    usage: Some(Usage {
                        tokens_in: 5,
                        tokens_out: 3
                    })
                }
            ]
        );
    }

    #[test]
    fn an_empty_stream_is_malformed_and_a_cut_one_is_network() {
        assert_eq!(
            Assembler::default().end("p")[0].as_ref().unwrap_err().class,
            ErrorClass::Malformed
        );
        let mut asm = Assembler::default();
        asm.push(Chunk::default(), &mut Vec::new());
        assert_eq!(
            asm.end("p")[0].as_ref().unwrap_err().class,
            ErrorClass::Network
        );
    }

    #[test]
    fn statuses_classify_and_messages_are_redacted() {
        let key = ApiKey::new("sk-abcdef");
        let mk = |status, msg: &str, code: Option<&str>| {
            OpenAIError::Boxed(Box::new(HttpStatusError {
                status,
                retry_after: Some(Duration::from_secs(2)),
                message: msg.into(),
                code: code.map(str::to_string),
            }))
        };
        let e = classify(mk(429, "slow", None), "p", Some(&key));
        assert_eq!(
            (e.class, e.status, e.retry_after),
            (
                ErrorClass::RateLimited,
                Some(429),
                Some(Duration::from_secs(2))
            )
        );
        assert_eq!(
            classify(mk(503, "x", None), "p", None).class,
            ErrorClass::Server
        );
        assert_eq!(
            classify(mk(403, "x", Some("insufficient_quota")), "p", None).class,
            ErrorClass::RateLimited
        );
        let e = classify(mk(401, "bad key sk-abcdef", None), "p", Some(&key));
        assert_eq!(e.class, ErrorClass::Client);
        assert!(!e.message.contains("sk-abcdef"), "{}", e.message);
    }

    #[test]
    fn retry_after_parses_seconds_and_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }
}
