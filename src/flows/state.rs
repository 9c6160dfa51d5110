//! Where a conversation is in its flow: the current node and the slots
//! (values the caller gave so far), derived from the committed history.
//!
//! The state is never stored beside the context: [`FlowState::from_history`]
//! replays the committed tool calls of the conversation from the initial
//! node. A turn that is rolled back (barge-in before its tool result was
//! staged, a failed or cancelled turn) therefore leaves the flow where it
//! was, and a resumed session (`--session`) continues in the right node.
//!
//! # Invariants
//! 1. `from_history(flow, h)` is a pure function of the committed tool calls
//!    and results in `h`: the same history gives the same node and slots.
//! 2. A call to a function the current node does not offer moves nothing
//!    and sets no slot (it is kept in the context, but the flow ignores it).
//! 3. Slots are the string forms of every argument of every applied call,
//!    later values replacing earlier ones, plus what `kv_set` stored.

use super::{Flow, Function, Node};
use crate::llm::{ChatMessage, Role, ToolSpec};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The current node and slots of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowState {
    pub node: String,
    pub slots: BTreeMap<String, String>,
    /// True once any function moved or fed the flow (the caller is past
    /// the opening).
    pub started: bool,
}

impl FlowState {
    /// The state at the start of a conversation.
    pub fn start(flow: &Flow) -> Self {
        Self {
            node: flow.initial_node.clone(),
            slots: BTreeMap::new(),
            started: false,
        }
    }

    /// Replays the committed tool calls of `history` (invariant 1).
    pub fn from_history(flow: &Flow, history: &[ChatMessage]) -> Self {
        let mut state = Self::start(flow);
        for (i, m) in history.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            for call in &m.tool_calls {
                let result = history[i + 1..]
                    .iter()
                    .take_while(|r| r.role == Role::Tool)
                    .find(|r| r.tool_call_id.as_deref() == Some(call.id.as_str()))
                    .map(|r| r.content.as_str());
                let Some(result) = result else { continue };
                let arguments =
                    serde_json::from_str::<Map<String, Value>>(&call.arguments).unwrap_or_default();
                state.apply(flow, &call.name, &arguments, result);
            }
        }
        state
    }

    /// The current node.
    pub fn current<'f>(&self, flow: &'f Flow) -> Option<&'f Node> {
        flow.node(&self.node)
    }

    /// Applies one call of `function` (by name) with its result: slots, then
    /// the transition. Returns the node entered, if the call moved the flow
    /// (invariant 2: an unknown function changes nothing).
    pub fn apply(
        &mut self,
        flow: &Flow,
        function: &str,
        arguments: &Map<String, Value>,
        result: &str,
    ) -> Option<String> {
        if result.starts_with("error: ") {
            // A failed tool moves nothing (agent/flow.rs invariant 3).
            return None;
        }
        let f = self
            .current(flow)?
            .functions
            .iter()
            .find(|f| f.name == function)?;
        self.started = true;
        for (k, v) in arguments {
            self.slots.insert(k.clone(), value_text(v));
        }
        if let Some(stored) = crate::tools::kv::stored(result) {
            self.slots.extend(stored);
        }
        let to = f.transition_to.clone()?;
        self.node = to.clone();
        Some(to)
    }

    /// True when the current node is final and hangs up on entry.
    pub fn ended(&self, flow: &Flow) -> bool {
        self.current(flow)
            .is_some_and(|n| n.is_final && n.on_enter.end_call)
    }

    /// The system prompt of the current node: role, task and what is known.
    pub fn system_prompt(&self, flow: &Flow) -> String {
        let Some(node) = self.current(flow) else {
            return String::new();
        };
        let mut parts: Vec<String> = [node.role_prompt.trim(), node.task_prompt.trim()]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        if !self.slots.is_empty() {
            let known: Vec<String> = self
                .slots
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            parts.push(format!("Known so far: {}.", known.join(", ")));
        }
        parts.join("\n\n")
    }

    /// The current node's functions as tools for the model.
    pub fn tools(&self, flow: &Flow) -> Vec<ToolSpec> {
        self.current(flow)
            .map(|n| n.functions.iter().map(tool_spec).collect())
            .unwrap_or_default()
    }

    /// Fills `{slot}` placeholders (and `{result}` from `result`); an unknown
    /// placeholder is left as written.
    pub fn render(&self, template: &str, result: Option<&str>) -> String {
        render(template, &self.slots, result)
    }
}

/// A function as the model sees it.
pub fn tool_spec(f: &Function) -> ToolSpec {
    ToolSpec {
        name: f.name.clone(),
        description: f.description.clone(),
        parameters: f.parameters.clone(),
    }
}

/// An argument as slot text: strings as they are, anything else as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fills `{name}` placeholders from `slots` (and `{result}`); unknown ones stay.
pub fn render(template: &str, slots: &BTreeMap<String, String>, result: Option<&str>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                let value = match name {
                    "result" => result.map(str::to_string),
                    _ => slots.get(name).cloned(),
                };
                match value {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&rest[open..open + close + 2]),
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The placeholders a template uses, in order.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        out.push(&after[..close]);
        rest = &after[close + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    const FLOW: &str = r#"
initial_node = "a"
[nodes.a]
role_prompt = "Role."
task_prompt = "Task."
[[nodes.a.functions]]
name = "go"
transition_to = "b"
parameters = { type = "object", properties = { name = { type = "string" } } }
[nodes.b]
final = true
on_enter = { say = "Bye {name}.", end_call = true }
"#;

    fn round(id: &str, name: &str, args: &str, result: &str) -> Vec<ChatMessage> {
        let mut call = ChatMessage::assistant("");
        call.tool_calls = vec![ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }];
        vec![
            ChatMessage::user("u"),
            call,
            ChatMessage::tool_result(id, result),
            ChatMessage::assistant("ok"),
        ]
    }

    #[test]
    fn history_replay_moves_and_fills_slots() {
        let flow = Flow::parse("t.toml", FLOW).unwrap();
        let empty = FlowState::from_history(&flow, &[]);
        assert_eq!(empty.node, "a");
        assert!(!empty.started && !empty.ended(&flow));
        assert_eq!(empty.system_prompt(&flow), "Role.\n\nTask.");

        let h = round("c1", "go", r#"{"name":"Ada","party_size":4}"#, "{}");
        let s = FlowState::from_history(&flow, &h);
        assert_eq!(s.node, "b");
        assert!(s.ended(&flow));
        assert_eq!(s.slots["name"], "Ada");
        assert_eq!(s.slots["party_size"], "4");
        assert_eq!(
            s.render("Bye {name}, {result}, {x}.", Some("r")),
            "Bye Ada, r, {x}."
        );
    }

    #[test]
    fn unknown_function_or_call_without_result_changes_nothing() {
        let flow = Flow::parse("t.toml", FLOW).unwrap();
        let h = round("c1", "nope", "{}", "{}");
        assert_eq!(FlowState::from_history(&flow, &h).node, "a");
        let mut h = round("c1", "go", "{}", "{}");
        h.remove(2); // the result
        assert_eq!(FlowState::from_history(&flow, &h).node, "a");
    }

    #[test]
    fn placeholders_are_listed_in_order() {
        assert_eq!(placeholders("{a} and {b}{c"), vec!["a", "b"]);
        assert_eq!(render("no {open", &BTreeMap::new(), None), "no {open");
    }
}
