//! Load-time validation of a parsed flow: every problem, with its node and
//! a reason that ends in a hint.
//!
//! # Invariants
//! 1. [`validate`] returns every problem it finds (it never stops early),
//!    file-level problems first, then nodes in name order, and within a
//!    node in declaration order — so the output is stable across runs.
//! 2. An empty result means the flow satisfies [`super::Flow`]'s
//!    invariant #1.

use std::collections::{BTreeSet, VecDeque};

use super::state::placeholders;
use super::{Handler, Problem, RawFlow};
use crate::stt::normalize::normalize;

/// JSON-schema types a parameter may have.
pub const SCHEMA_TYPES: [&str; 6] = ["string", "number", "integer", "boolean", "array", "object"];

/// Checks a parsed flow; returns every problem found (invariant #1).
pub(crate) fn validate(flow: &RawFlow) -> Vec<Problem> {
    let mut problems = Vec::new();
    let file_problem = |reason: String| Problem { node: None, reason };
    let node_problem = |node: &str, reason: String| Problem {
        node: Some(node.to_string()),
        reason,
    };
    let known = || {
        flow.nodes
            .keys()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };

    if flow.nodes.is_empty() {
        problems.push(file_problem(
            "no nodes (add at least one [nodes.NAME] table)".to_string(),
        ));
    }
    let initial_ok = flow.nodes.contains_key(&flow.initial_node);
    if !initial_ok && !flow.nodes.is_empty() {
        problems.push(file_problem(format!(
            "initial node \"{}\" is not defined (known nodes: {})",
            flow.initial_node,
            known()
        )));
    } else if !initial_ok {
        problems.push(file_problem(format!(
            "initial node \"{}\" is not defined",
            flow.initial_node
        )));
    }

    // Reachability: BFS from the initial node over transition_to.
    let mut reached: BTreeSet<&str> = BTreeSet::new();
    if initial_ok {
        let mut queue = VecDeque::from([flow.initial_node.as_str()]);
        reached.insert(flow.initial_node.as_str());
        while let Some(name) = queue.pop_front() {
            let Some(node) = flow.nodes.get(name) else {
                continue;
            };
            for f in &node.functions {
                if let Some(to) = f.transition_to.as_deref() {
                    if flow.nodes.contains_key(to) && reached.insert(to) {
                        queue.push_back(to);
                    }
                }
            }
        }
    }

    // Slots a template may use: every parameter and fixed argument of the flow.
    let slots: BTreeSet<&str> = flow
        .nodes
        .values()
        .flat_map(|n| &n.functions)
        .flat_map(|f| {
            let props = f
                .parameters
                .get("properties")
                .and_then(|p| p.as_object())
                .into_iter()
                .flat_map(|p| p.keys().map(String::as_str));
            props.chain(f.arguments.keys().map(String::as_str))
        })
        .collect();

    for (name, node) in &flow.nodes {
        if initial_ok && !reached.contains(name.as_str()) {
            problems.push(node_problem(
                name,
                format!(
                    "unreachable from the initial node \"{}\" (add a function with transition_to = \"{name}\" or remove the node)",
                    flow.initial_node
                ),
            ));
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for f in &node.functions {
            if !seen.insert(f.name.as_str()) {
                problems.push(node_problem(
                    name,
                    format!(
                        "duplicate function \"{}\" (function names must be unique within a node)",
                        f.name
                    ),
                ));
            }
            if !valid_function_name(&f.name) {
                problems.push(node_problem(
                    name,
                    format!(
                        "function name \"{}\" is not valid (use 1 to 64 letters, digits, '_' or '-')",
                        f.name
                    ),
                ));
            }
            if let Some(to) = f.transition_to.as_deref() {
                if !flow.nodes.contains_key(to) {
                    problems.push(node_problem(
                        name,
                        format!(
                            "function \"{}\": transition to unknown node \"{to}\" (known nodes: {})",
                            f.name,
                            known()
                        ),
                    ));
                }
            }
            if let Some(h) = f.handler.as_deref() {
                if Handler::from_name(h).is_none() {
                    problems.push(node_problem(
                        name,
                        format!(
                            "function \"{}\": unknown handler \"{h}\" (built-in handlers: {})",
                            f.name,
                            Handler::NAMES.join(", ")
                        ),
                    ));
                }
            }
            for reason in schema_problems(&f.parameters) {
                problems.push(node_problem(
                    name,
                    format!(
                        "function \"{}\": invalid parameters schema: {reason}",
                        f.name
                    ),
                ));
            }
            let props = f.parameters.get("properties").and_then(|p| p.as_object());
            for p in &f.patterns {
                match super::matching::compile(p) {
                    Err(e) => problems.push(node_problem(
                        name,
                        format!(
                            "function \"{}\": pattern \"{p}\" is not a valid regular expression: {} (see docs/flows.md, Patterns)",
                            f.name,
                            e.to_string().lines().last().unwrap_or("syntax error").trim()
                        ),
                    )),
                    Ok(re) => {
                        for group in re.capture_names().flatten() {
                            if !props.is_some_and(|p| p.contains_key(group)) {
                                problems.push(node_problem(
                                    name,
                                    format!(
                                        "function \"{}\": pattern group \"{group}\" is not a parameter (add it to parameters.properties)",
                                        f.name
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            if let Some(say) = &f.say {
                for slot in placeholders(say) {
                    if slot != "result" && !slots.contains(slot) {
                        problems.push(node_problem(
                            name,
                            format!(
                                "function \"{}\": say uses unknown slot {{{slot}}} ({})",
                                f.name,
                                slot_hint(&slots)
                            ),
                        ));
                    }
                }
            }
            for (key, template) in &f.arguments {
                for slot in placeholders(template) {
                    if !slots.contains(slot) {
                        problems.push(node_problem(
                            name,
                            format!("function \"{}\": argument \"{key}\" uses unknown slot {{{slot}}} ({})", f.name, slot_hint(&slots)),
                        ));
                    }
                }
            }
            for t in &f.triggers {
                if normalize(t).is_empty() {
                    problems.push(node_problem(
                        name,
                        format!(
                            "function \"{}\": trigger \"{t}\" has no words (use letters or digits)",
                            f.name
                        ),
                    ));
                }
            }
        }
        for (field, text) in [
            ("on_enter.say", &node.on_enter.say),
            ("reprompt", &node.reprompt),
        ] {
            for slot in text.as_deref().map(placeholders).unwrap_or_default() {
                if !slots.contains(slot) {
                    problems.push(node_problem(
                        name,
                        format!(
                            "{field} uses unknown slot {{{slot}}} ({})",
                            slot_hint(&slots)
                        ),
                    ));
                }
            }
        }
        let has_exit = node.functions.iter().any(|f| f.transition_to.is_some());
        if !node.is_final && !has_exit {
            problems.push(node_problem(
                name,
                "no way out: not final and no function has transition_to (add one, or set final = true)"
                    .to_string(),
            ));
        }
    }
    problems
}

fn slot_hint(slots: &BTreeSet<&str>) -> String {
    if slots.is_empty() {
        "the flow declares no parameters".to_string()
    } else {
        format!(
            "slots are the flow's parameters and arguments: {}",
            slots.iter().copied().collect::<Vec<_>>().join(", ")
        )
    }
}

fn valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What is wrong with a function's parameters schema (empty if fine).
pub fn schema_problems(schema: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(obj) = schema.as_object() else {
        out.push(
            "must be an object like {\"type\": \"object\", \"properties\": {...}}".to_string(),
        );
        return out;
    };
    match obj.get("type").and_then(|t| t.as_str()) {
        Some("object") => {}
        Some(other) => out.push(format!("\"type\" is \"{other}\" (must be \"object\")")),
        None => out.push("missing \"type\": \"object\"".to_string()),
    }
    let empty = serde_json::Map::new();
    let props = match obj.get("properties") {
        None => &empty,
        Some(serde_json::Value::Object(p)) => p,
        Some(_) => {
            out.push("\"properties\" must be an object of name → schema".to_string());
            &empty
        }
    };
    for (pname, p) in props {
        match p.get("type") {
            _ if !p.is_object() => out.push(format!("property \"{pname}\" must be an object")),
            Some(serde_json::Value::String(t)) if SCHEMA_TYPES.contains(&t.as_str()) => {}
            Some(t) => out.push(format!(
                "property \"{pname}\" has unknown type {t} (use one of {})",
                SCHEMA_TYPES.join(", ")
            )),
            None => out.push(format!(
                "property \"{pname}\" has no \"type\" (use one of {})",
                SCHEMA_TYPES.join(", ")
            )),
        }
    }
    match obj.get("required") {
        None => {}
        Some(serde_json::Value::Array(req)) => {
            for r in req {
                match r.as_str() {
                    Some(r) if props.contains_key(r) => {}
                    Some(r) => out.push(format!(
                        "\"required\" names \"{r}\", which is not in \"properties\""
                    )),
                    None => out.push(format!("\"required\" entry {r} is not a string")),
                }
            }
        }
        Some(_) => out.push("\"required\" must be an array of property names".to_string()),
    }
    out
}
