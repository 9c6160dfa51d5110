//! Built-in tools a flow function may name as its `handler`: the current
//! time, arithmetic, and a small key-value store kept in the session journal.
//! None needs the network.
//!
//! A tool runs inside the turn's fenced task (see `agent/voice.rs`): it is
//! started only while the task's cancellation token is live, and its result
//! reaches the coordinator as one `Payload::Tool` (call and result together),
//! stamped with the turn's epoch, so a barge-in cancels it and a late result
//! is quarantined like any other.
//!
//! # Invariants
//! 1. [`run`] never panics on any arguments: bad arguments are a
//!    [`ToolError`] whose message names the tool and what was wrong.
//! 2. Tools are pure functions of their arguments and [`ToolContext`] (the
//!    clock is passed in), so tests can replay them exactly.

pub mod arithmetic;
pub mod kv;
pub mod time;

use crate::flows::Handler;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// What a tool may read besides its arguments.
#[derive(Debug, Clone)]
pub struct ToolContext<'a> {
    /// The conversation's slots (for `kv_get`).
    pub slots: &'a BTreeMap<String, String>,
    /// "Now", local time.
    pub now: chrono::DateTime<chrono::FixedOffset>,
}

/// A tool that could not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tool {tool}: {reason}")]
pub struct ToolError {
    pub tool: &'static str,
    pub reason: String,
}

impl ToolError {
    pub(crate) fn new(tool: &'static str, reason: impl Into<String>) -> Self {
        Self {
            tool,
            reason: reason.into(),
        }
    }
}

/// Runs a built-in tool (invariant 1).
///
/// # Errors
/// When the arguments are missing or malformed for the tool.
pub fn run(
    handler: Handler,
    arguments: &Map<String, Value>,
    ctx: &ToolContext<'_>,
) -> Result<String, ToolError> {
    match handler {
        Handler::Time => Ok(time::spoken(ctx.now)),
        Handler::Arithmetic => arithmetic::run(arguments),
        Handler::KvSet => kv::set(arguments),
        Handler::KvGet => kv::get(arguments, ctx.slots),
    }
}
