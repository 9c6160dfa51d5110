//! Conversation flows: the `flows/*.toml` (or `.json`) file format, loading,
//! and trigger matching.
//!
//! A flow is a small graph. Each node carries the prompts the model sees
//! while the conversation is in it, optional actions run on entry, and the
//! functions (tools) the model may call there. A function may move the
//! conversation to another node (`transition_to`), run a built-in tool
//! (`handler`), and declare trigger phrases so a small embedded model that
//! can't call tools reliably still moves through the flow: the phrases are
//! matched on the normalised final transcript ([`Flow::match_trigger`]).
//!
//! Loading ([`Flow::load`]) parses and then validates everything
//! ([`validate`]); the format is documented in `docs/flows.md`.
//!
//! # Invariants
//! 1. A [`Flow`] that exists has passed validation: its initial node and
//!    every `transition_to` name a node of the flow, every node is reachable
//!    from the initial node, and every non-final node has a way out.
//! 2. Loading never stops at the first problem: [`FlowError::Invalid`]
//!    lists every problem found in the file, in a stable order (file-level
//!    problems first, then nodes by name).
//! 3. Triggers are compared in normalised form
//!    ([`crate::stt::normalize::normalize`]) on whole-word boundaries, so
//!    "no" never matches inside "know"; the stored triggers are kept as
//!    written and normalised at match time.

pub mod matching;
pub mod state;
pub mod validate;

pub use matching::{match_form, Choice};
pub use state::FlowState;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::stt::normalize::normalize;

/// A validated conversation flow (invariant #1).
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// The file it was loaded from (as given).
    pub file: PathBuf,
    /// Where every conversation starts.
    pub initial_node: String,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
}

/// One node of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// System prompt: who the agent is while in this node.
    #[serde(default)]
    pub role_prompt: String,
    /// What the agent should get done in this node.
    #[serde(default)]
    pub task_prompt: String,
    /// A final node ends the flow; it needs no way out.
    #[serde(default, rename = "final")]
    pub is_final: bool,
    /// Actions run when the conversation enters the node.
    #[serde(default)]
    pub on_enter: OnEnter,
    /// Said (a `{slot}` template) when the caller's words fire no function
    /// here, instead of asking the model: for small models that ramble.
    #[serde(default)]
    pub reprompt: Option<String>,
    /// Most sentences a model reply speaks in this node (default 3, the
    /// voice agent's reply cap; `agent::guard`).
    #[serde(default)]
    pub max_sentences: Option<usize>,
    /// The functions (tools) offered in this node, in declaration order.
    #[serde(default)]
    pub functions: Vec<Function>,
}

/// Actions run on entering a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnEnter {
    /// Say this sentence (verbatim, no model call).
    #[serde(default)]
    pub say: Option<String>,
    /// Hang up (after `say`, if any, was played).
    #[serde(default)]
    pub end_call: bool,
}

/// A function (tool) offered to the model in one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// Tool name the model calls (letters, digits, `_`, `-`; at most 64).
    pub name: String,
    /// What the tool does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON schema of the arguments (`{"type": "object", ...}`).
    #[serde(default = "empty_parameters")]
    pub parameters: serde_json::Value,
    /// Phrases that fire the function without a tool call (normalised,
    /// whole-word match on the final transcript; invariant #3).
    #[serde(default)]
    pub triggers: Vec<String>,
    /// Node to move to after the function ran.
    #[serde(default)]
    pub transition_to: Option<String>,
    /// Built-in tool that runs the function (see [`Handler`]).
    #[serde(default)]
    pub handler: Option<String>,
    /// Regular expressions matched on the final transcript (case-insensitive,
    /// see [`match_form`]); the first that matches fires the function, and
    /// its named groups become the call's arguments.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Fixed arguments, merged over the matched or model-given ones;
    /// `{slot}` placeholders are filled from the conversation's slots.
    #[serde(default)]
    pub arguments: BTreeMap<String, String>,
    /// Said after the function ran (a template: `{slot}` and `{result}`).
    #[serde(default)]
    pub say: Option<String>,
}

fn empty_parameters() -> serde_json::Value {
    serde_json::json!({ "type": "object", "properties": {} })
}

/// The built-in tools a function's `handler` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Current local date and time.
    Time,
    /// Evaluate an arithmetic expression.
    Arithmetic,
    /// Store a value under a key for the session.
    KvSet,
    /// Read a value stored with `kv_set`.
    KvGet,
}

impl Handler {
    /// Every handler name, as written in flow files.
    pub const NAMES: [&'static str; 4] = ["time", "arithmetic", "kv_set", "kv_get"];

    /// Parses a handler name as written in a flow file.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "time" => Some(Self::Time),
            "arithmetic" => Some(Self::Arithmetic),
            "kv_set" => Some(Self::KvSet),
            "kv_get" => Some(Self::KvGet),
            _ => None,
        }
    }

    /// The name as written in flow files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Time => "time",
            Self::Arithmetic => "arithmetic",
            Self::KvSet => "kv_set",
            Self::KvGet => "kv_get",
        }
    }
}

impl Function {
    /// The built-in tool this function runs, if any (validated at load).
    pub fn handler(&self) -> Option<Handler> {
        self.handler.as_deref().and_then(Handler::from_name)
    }
}

/// One problem found in a flow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The node it concerns (`None` for file-level problems).
    pub node: Option<String>,
    /// What is wrong, ending with a hint where one helps.
    pub reason: String,
}

/// Why a flow file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The file could not be read.
    #[error("{}: cannot read: {source} (check the path)", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid flow (every problem, invariant #2).
    #[error("{}", display_problems(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

fn display_problems(file: &Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}: ", file.display()));
        if let Some(node) = &p.node {
            out.push_str(&format!("node \"{node}\": "));
        }
        out.push_str(&p.reason);
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "node \"{node}\": {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl FlowError {
    /// The problems of an invalid file (empty for an I/O error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            FlowError::Invalid { problems, .. } => problems,
            FlowError::Io { .. } => &[],
        }
    }
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFlow {
    pub(crate) initial_node: String,
    #[serde(default)]
    pub(crate) nodes: BTreeMap<String, Node>,
}

impl Flow {
    /// Reads, parses (TOML, or JSON for a `.json` file) and validates a flow.
    ///
    /// # Errors
    /// [`FlowError::Io`] when the file can't be read; [`FlowError::Invalid`]
    /// with every problem found otherwise.
    pub fn load(path: impl AsRef<Path>) -> Result<Flow, FlowError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| FlowError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Flow::parse(path, &text)
    }

    /// Parses and validates flow text; `file` names it in errors and picks
    /// the format by extension (`.json` → JSON, anything else → TOML).
    ///
    /// # Errors
    /// [`FlowError::Invalid`] with every problem found.
    pub fn parse(file: impl AsRef<Path>, text: &str) -> Result<Flow, FlowError> {
        let file = file.as_ref();
        let is_json = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let raw = if is_json {
            serde_json::from_str::<RawFlow>(text).map_err(|e| {
                syntax_error(
                    file,
                    format!(
                        "JSON error at line {}, column {}: {} (see docs/flows.md for the format)",
                        e.line(),
                        e.column(),
                        strip_position(&e.to_string())
                    ),
                )
            })?
        } else {
            toml::from_str::<RawFlow>(text).map_err(|e| {
                let at = e
                    .span()
                    .map(|s| {
                        let (line, col) = line_col(text, s.start);
                        format!(" at line {line}, column {col}")
                    })
                    .unwrap_or_default();
                syntax_error(
                    file,
                    format!(
                        "TOML error{at}: {} (see docs/flows.md for the format)",
                        e.message().trim().replace('\n', " ")
                    ),
                )
            })?
        };
        let problems = validate::validate(&raw);
        if !problems.is_empty() {
            return Err(FlowError::Invalid {
                file: file.to_path_buf(),
                problems,
            });
        }
        Ok(Flow {
            file: file.to_path_buf(),
            initial_node: raw.initial_node,
            nodes: raw.nodes,
        })
    }

    /// The built-in open chat (`flows/assistant.toml`, compiled in): the
    /// default flow when none is given.
    pub fn assistant() -> Flow {
        const TEXT: &str = include_str!("../../flows/assistant.toml");
        // Validated by the test `the_built_in_assistant_flow_loads`.
        Flow::parse("flows/assistant.toml (built in)", TEXT).unwrap_or_else(|e| {
            unreachable!("the built-in flows/assistant.toml does not load: {e}")
        })
    }

    /// The initial node (exists by invariant #1; a `Flow` built by hand
    /// with a missing initial node makes this panic — use [`Flow::parse`]).
    pub fn initial(&self) -> &Node {
        &self.nodes[&self.initial_node]
    }

    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The function of `node` whose trigger phrase occurs in `transcript`,
    /// both normalised, on whole-word boundaries (invariant #3). When several
    /// match, the longest trigger wins; on a tie, the function declared
    /// first. `None` for an unknown node or no match.
    pub fn match_trigger(&self, node: &str, transcript: &str) -> Option<&Function> {
        let node = self.nodes.get(node)?;
        let heard = format!(" {} ", normalize(transcript));
        let mut best: Option<(&Function, usize)> = None;
        for f in &node.functions {
            for t in &f.triggers {
                let t = normalize(t);
                if t.is_empty() || !heard.contains(&format!(" {t} ")) {
                    continue;
                }
                if best.is_none_or(|(_, len)| t.len() > len) {
                    best = Some((f, t.len()));
                }
            }
        }
        best.map(|(f, _)| f)
    }
}

fn syntax_error(file: &Path, reason: String) -> FlowError {
    FlowError::Invalid {
        file: file.to_path_buf(),
        problems: vec![Problem { node: None, reason }],
    }
}

/// serde_json appends " at line L column C"; we print the position first.
fn strip_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The flow files (`*.toml`, `*.json`) directly in `dir`, sorted by name.
///
/// # Errors
/// When `dir` can't be listed.
pub fn flow_files(dir: impl AsRef<Path>) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("toml" | "json")) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: &str = r#"
initial_node = "ask"

[nodes.ask]
role_prompt = "You book tables."
task_prompt = "Ask yes or no."

[[nodes.ask.functions]]
name = "yes"
description = "The caller agreed."
triggers = ["yes", "sure"]
transition_to = "done"

[[nodes.ask.functions]]
name = "no"
description = "The caller declined."
triggers = ["no", "no thanks"]
transition_to = "done"

[[nodes.ask.functions]]
name = "no_problem"
description = "Polite yes."
triggers = ["no problem"]
transition_to = "done"

[nodes.done]
final = true
on_enter = { say = "Bye.", end_call = true }
"#;

    fn flow() -> Flow {
        Flow::parse("t.toml", FLOW).unwrap()
    }

    #[test]
    fn trigger_matches_normalised_whole_words() {
        let f = flow();
        assert_eq!(f.match_trigger("ask", "Yes!").unwrap().name, "yes");
        assert_eq!(
            f.match_trigger("ask", "Sure, why not.").unwrap().name,
            "yes"
        );
        assert_eq!(f.match_trigger("ask", "NO.").unwrap().name, "no");
        // "no" must not match inside "know" or "nothing".
        assert!(f.match_trigger("ask", "I know nothing").is_none());
    }

    #[test]
    fn longest_trigger_wins_then_declaration_order() {
        let f = flow();
        assert_eq!(
            f.match_trigger("ask", "oh no problem at all").unwrap().name,
            "no_problem"
        );
        assert_eq!(f.match_trigger("ask", "no thanks").unwrap().name, "no");
        // Both match; "yes" is the longer trigger.
        assert_eq!(f.match_trigger("ask", "yes no").unwrap().name, "yes");
        // "no problem" (10 characters) beats "no thanks" (9).
        assert_eq!(
            f.match_trigger("ask", "no thanks no problem").unwrap().name,
            "no_problem"
        );
    }

    #[test]
    fn trigger_with_digits_matches_spelled_transcript() {
        let text = FLOW.replace("[\"yes\", \"sure\"]", "[\"table for 2\"]");
        let f = Flow::parse("t.toml", &text).unwrap();
        assert_eq!(
            f.match_trigger("ask", "A table for two, please")
                .unwrap()
                .name,
            "yes"
        );
    }

    #[test]
    fn no_match_for_unknown_node_or_final_node() {
        let f = flow();
        assert!(f.match_trigger("nowhere", "yes").is_none());
        assert!(f.match_trigger("done", "yes").is_none());
    }

    #[test]
    fn parsed_fields_round_trip() {
        let f = flow();
        assert_eq!(f.initial().task_prompt, "Ask yes or no.");
        let done = f.node("done").unwrap();
        assert!(done.is_final);
        assert_eq!(done.on_enter.say.as_deref(), Some("Bye."));
        assert!(done.on_enter.end_call);
        assert_eq!(
            f.initial().functions[0].parameters,
            serde_json::json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn the_built_in_assistant_flow_loads() {
        let f = Flow::assistant();
        assert!(f.initial().is_final);
        // Open chat with the embedded model's tuned prompt.
        assert_eq!(
            f.initial().role_prompt.trim(),
            crate::agent::voice::DEFAULT_SYSTEM_PROMPT
        );
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
