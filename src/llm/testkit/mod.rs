//! Test doubles for the LLM layer, shipped in the library so every test
//! (and the coordinator's) can use them:
//! - [`FakeOpenAi`]: an in-process OpenAI-compatible HTTP server (axum, SSE)
//!   with scripted behaviour per request;
//! - [`ScriptedModel`]: a [`crate::llm::ChatModel`] with scripted latency,
//!   tokens and errors on the tokio clock (no network), for
//!   `tokio::time::pause()` tests.
//!
//! # Invariants
//! 1. Both run only on the tokio clock: under a paused clock their timings
//!    are exact and tests are deterministic.
//! 2. Both record what happened to each request (the server: route, model,
//!    whether the client disconnected before the end; the model: its requests and
//!    the streams dropped before their end), so tests assert on behaviour.
//! 3. The server binds 127.0.0.1 only, on a free port.

mod openai_server;
mod scripted;

pub use openai_server::{FakeOpenAi, Recorded, Reply};
pub use scripted::{Script, ScriptedModel};
