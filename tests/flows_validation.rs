//! Flow validation: one test per problem the loader reports. Each writes a
//! small broken flow to a temporary directory and checks the error names the
//! file, the node and the reason (flows invariant #2: every problem, not
//! just the first). Also: every shipped flow in `flows/` validates, and JSON
//! files load like TOML ones.

use colloquy::flows::{flow_files, Flow, FlowError, Problem};
use std::path::PathBuf;

/// Writes `text` as `name` in a fresh temp dir; returns (dir guard, path).
fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Loads a broken flow; returns its problems and the Display text.
fn problems(name: &str, text: &str) -> (PathBuf, Vec<Problem>, String) {
    let (_dir, path) = write(name, text);
    match Flow::load(&path) {
        Ok(_) => panic!("{name} should be invalid"),
        Err(e @ FlowError::Invalid { .. }) => {
            let shown = e.to_string();
            assert!(
                shown.contains(&path.display().to_string()),
                "error must name the file: {shown}"
            );
            (path, e.problems().to_vec(), shown)
        }
        Err(e) => panic!("expected Invalid, got {e}"),
    }
}

/// Asserts exactly one problem, at `node`, whose reason contains `needle`,
/// and that the printed line reads `FILE: node "NODE": REASON`.
fn assert_one(name: &str, text: &str, node: Option<&str>, needle: &str) {
    let (path, problems, shown) = problems(name, text);
    assert_eq!(problems.len(), 1, "one problem expected: {shown}");
    let p = &problems[0];
    assert_eq!(p.node.as_deref(), node, "{shown}");
    assert!(
        p.reason.contains(needle),
        "reason {:?} lacks {needle:?}",
        p.reason
    );
    let prefix = match node {
        Some(n) => format!("{}: node \"{n}\": ", path.display()),
        None => format!("{}: ", path.display()),
    };
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} should start {prefix:?}"
    );
}

#[test]
fn missing_initial_node_is_reported_with_known_nodes() {
    assert_one(
        "x.toml",
        "initial_node = \"start\"\n[nodes.hello]\nfinal = true\n",
        None,
        "initial node \"start\" is not defined (known nodes: \"hello\")",
    );
}

#[test]
fn unknown_transition_target_names_node_function_and_target() {
    let text = r#"
initial_node = "confirm"
[nodes.confirm]
[[nodes.confirm.functions]]
name = "pay_now"
transition_to = "pay"
"#;
    let (path, problems, shown) = problems("x.toml", text);
    // transition_to is set, so the node still counts as having a way out:
    // one problem, not two.
    assert_eq!(problems.len(), 1, "{shown}");
    assert!(shown.starts_with(&format!(
        "{}: node \"confirm\": function \"pay_now\": transition to unknown node \"pay\"",
        path.display()
    )));
}

#[test]
fn unreachable_node_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[nodes.island]
final = true
"#;
    assert_one(
        "x.toml",
        text,
        Some("island"),
        "unreachable from the initial node \"a\"",
    );
}

#[test]
fn duplicate_function_name_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
[[nodes.a.functions]]
name = "f"
"#;
    assert_one("x.toml", text, Some("a"), "duplicate function \"f\"");
}

#[test]
fn schema_that_is_not_an_object_type_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
parameters = { type = "array" }
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "function \"f\": invalid parameters schema: \"type\" is \"array\" (must be \"object\")",
    );
}

#[test]
fn schema_property_with_unknown_type_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
[nodes.a.functions.parameters]
type = "object"
[nodes.a.functions.parameters.properties]
when = { type = "datetime" }
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "property \"when\" has unknown type \"datetime\"",
    );
}

#[test]
fn schema_required_naming_a_missing_property_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
parameters = { type = "object", properties = { size = { type = "integer" } }, required = ["size", "name"] }
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "\"required\" names \"name\", which is not in \"properties\"",
    );
}

#[test]
fn schema_properties_not_an_object_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
parameters = { type = "object", properties = ["size"] }
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "\"properties\" must be an object",
    );
}

#[test]
fn non_final_node_without_a_way_out_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
task_prompt = "Talk forever."
[[nodes.a.functions]]
name = "time"
handler = "time"
"#;
    assert_one("x.toml", text, Some("a"), "no way out");
}

#[test]
fn unknown_handler_is_reported_with_the_known_ones() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
handler = "weather"
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "unknown handler \"weather\" (built-in handlers: time, arithmetic, kv_set, kv_get)",
    );
}

#[test]
fn invalid_function_name_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "book a table"
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "function name \"book a table\" is not valid",
    );
}

#[test]
fn trigger_without_words_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
triggers = ["?!"]
"#;
    assert_one("x.toml", text, Some("a"), "trigger \"?!\" has no words");
}

#[test]
fn pattern_that_is_not_a_regular_expression_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
patterns = ['(?P<n>\d+']
parameters = { type = "object", properties = { n = { type = "integer" } } }
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "function \"f\": pattern \"(?P<n>\\d+\" is not a valid regular expression",
    );
}

#[test]
fn pattern_group_that_is_not_a_parameter_is_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
final = true
[[nodes.a.functions]]
name = "f"
patterns = ['for (?P<guests>\d+)']
parameters = { type = "object", properties = { party_size = { type = "integer" } } }
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "function \"f\": pattern group \"guests\" is not a parameter",
    );
}

#[test]
fn say_with_an_unknown_slot_is_reported_with_the_known_slots() {
    let text = r#"
initial_node = "a"
[nodes.a]
[[nodes.a.functions]]
name = "f"
say = "Got {party_sise}, result {result}."
transition_to = "b"
parameters = { type = "object", properties = { party_size = { type = "integer" } } }
[nodes.b]
final = true
"#;
    assert_one(
        "x.toml",
        text,
        Some("a"),
        "function \"f\": say uses unknown slot {party_sise} (slots are the flow's parameters and arguments: party_size)",
    );
}

#[test]
fn on_enter_say_reprompt_and_arguments_with_unknown_slots_are_reported() {
    let text = r#"
initial_node = "a"
[nodes.a]
reprompt = "Sorry {nam}?"
[[nodes.a.functions]]
name = "store"
handler = "kv_set"
arguments = { booking = "{name} at {when}" }
transition_to = "b"
parameters = { type = "object", properties = { name = { type = "string" } } }
[nodes.b]
final = true
on_enter = { say = "Thanks {nme}." }
"#;
    let (_path, problems, shown) = problems("x.toml", text);
    assert_eq!(problems.len(), 3, "{shown}");
    assert!(
        problems
            .iter()
            .any(|p| p.reason.starts_with("reprompt uses unknown slot {nam}")),
        "{shown}"
    );
    assert_eq!(problems[0].node.as_deref(), Some("a"));
    assert!(
        problems[0]
            .reason
            .contains("argument \"booking\" uses unknown slot {when}"),
        "{shown}"
    );
    // Node "a": its function's argument, then its reprompt; then node "b".
    assert_eq!(problems[1].node.as_deref(), Some("a"));
    assert_eq!(problems[2].node.as_deref(), Some("b"));
    assert!(
        problems[2]
            .reason
            .starts_with("on_enter.say uses unknown slot {nme}"),
        "{shown}"
    );
}

#[test]
fn toml_syntax_error_gives_line_and_column() {
    let text = "initial_node = \"a\"\n[nodes.a\nfinal = true\n";
    assert_one("x.toml", text, None, "TOML error at line 2, column");
}

#[test]
fn json_syntax_error_gives_line_and_column() {
    let text = "{\n  \"initial_node\": \"a\",\n  \"nodes\": {\n}";
    assert_one("x.json", text, None, "JSON error at line 4, column");
}

#[test]
fn unknown_field_is_a_parse_error_naming_the_field() {
    let text = "initial_node = \"a\"\n[nodes.a]\nfinal = true\nrole_promt = \"x\"\n";
    assert_one("x.toml", text, None, "role_promt");
}

#[test]
fn every_problem_of_a_file_is_reported_not_just_the_first() {
    let text = r#"
initial_node = "greet"
[nodes.greet]
[[nodes.greet.functions]]
name = "go"
transition_to = "pay"
handler = "teleport"
[[nodes.greet.functions]]
name = "go"
transition_to = "done"
[nodes.done]
final = true
[nodes.lost]
"#;
    let (_path, problems, shown) = problems("x.toml", text);
    let reasons: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(reasons.len(), 5, "{shown}");
    assert_eq!(shown.lines().count(), 5, "{shown}");
    for needle in [
        "node \"greet\": duplicate function \"go\"",
        "node \"greet\": function \"go\": transition to unknown node \"pay\"",
        "node \"greet\": function \"go\": unknown handler \"teleport\"",
        "node \"lost\": unreachable",
        "node \"lost\": no way out",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "missing {needle}: {shown}"
        );
    }
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = Flow::load("no/such/flow.toml").unwrap_err();
    assert!(matches!(err, FlowError::Io { .. }));
    assert!(err.to_string().contains("no/such/flow.toml"));
}

#[test]
fn every_shipped_flow_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("flows");
    let files = flow_files(&dir).unwrap();
    assert!(files.len() >= 3, "expected the example flows in {dir:?}");
    for file in files {
        if let Err(e) = Flow::load(&file) {
            panic!("{e}");
        }
    }
}

#[test]
fn restaurant_flow_moves_on_small_model_triggers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("flows/restaurant.toml");
    let flow = Flow::load(path).unwrap();
    assert_eq!(flow.initial_node, "greet");
    let f = flow
        .match_trigger("greet", "Hi, I'd like to book a table please.")
        .unwrap();
    assert_eq!(f.transition_to.as_deref(), Some("party"));
    let c = flow.choose("party", "Four people, please.").unwrap();
    assert_eq!(c.function.name, "set_party_size");
    assert_eq!(c.arguments["party_size"], serde_json::json!(4));
    let c = flow.choose("time", "At 7.30pm").unwrap();
    assert_eq!(c.arguments["time"], serde_json::json!("7:30 pm"));
    let c = flow.choose("name", "My name is Smith.").unwrap();
    assert_eq!(c.arguments["name"], serde_json::json!("Smith"));
    let f = flow.match_trigger("confirm", "Yes, that's right.").unwrap();
    assert_eq!(f.name, "confirm_booking");
    assert_eq!(f.handler(), Some(colloquy::flows::Handler::KvSet));
    assert!(flow.node("booked").unwrap().on_enter.end_call);
}

#[test]
fn json_flow_loads_like_toml() {
    let json = r#"{
  "initial_node": "ask",
  "nodes": {
    "ask": {
      "role_prompt": "You help.",
      "task_prompt": "Ask the party size.",
      "functions": [{
        "name": "set_size",
        "description": "Party size.",
        "parameters": {"type": "object", "properties": {"size": {"type": "integer"}}, "required": ["size"]},
        "triggers": ["table for 4"],
        "transition_to": "done"
      }]
    },
    "done": {"final": true, "on_enter": {"say": "Bye.", "end_call": true}}
  }
}"#;
    let (_dir, path) = write("booking.json", json);
    let flow = Flow::load(&path).unwrap();
    assert_eq!(flow.nodes.len(), 2);
    let f = flow.match_trigger("ask", "A table for four.").unwrap();
    assert_eq!(f.name, "set_size");
    assert_eq!(f.parameters["required"][0], "size");
    assert_eq!(
        flow.node("done").unwrap().on_enter.say.as_deref(),
        Some("Bye.")
    );
}

#[test]
fn the_example_in_docs_flows_md_validates() {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/flows.md"))
            .unwrap();
    let start = doc
        .find("```toml\n")
        .expect("docs/flows.md has a toml example")
        + 8;
    let len = doc[start..].find("```").unwrap();
    let flow = Flow::parse("docs-example.toml", &doc[start..start + len]).unwrap();
    assert_eq!(flow.nodes.len(), 4);
    // Its pattern fires with a typed argument, as the doc says.
    let c = flow.choose("party", "We are five.").unwrap();
    assert_eq!(c.arguments["party_size"], serde_json::json!(5));
}

#[test]
fn a_broken_flow_given_to_the_cli_is_refused_with_exit_status_2() {
    let (_dir, path) = write(
        "broken.toml",
        "initial_node = \"x\"\n[nodes.a]\nfinal = true\n",
    );
    let wav = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/conversation.wav");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .arg("replay")
        .arg(&wav)
        .arg("--no-journal")
        .arg("--flow")
        .arg(&path)
        .output()
        .expect("run colloquy");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: initial node \"x\" is not defined",
            path.display()
        )),
        "{stderr}"
    );
}
