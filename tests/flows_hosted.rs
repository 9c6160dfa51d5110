//! A flow on hosted models (every stage an in-process OpenAI-compatible fake
//! on loopback): when no pattern or trigger fires (and the node has no
//! reprompt), the model is asked with
//! the node's prompts and its functions as tools, and a tool call it makes
//! runs the function like a fired one — the call and its result are
//! committed together and the flow moves to the next node, whose line is
//! spoken.

mod common;
use colloquy::agent::stack::{StackOptions, VoiceStack};
use colloquy::flows::{Flow, FlowState};
use colloquy::llm::testkit::{FakeOpenAi, Reply};
use colloquy::llm::Role;
use colloquy::models::ModelStore;
use colloquy::transport::file::{replay, Pace, ReplayOptions};
use std::sync::Arc;

/// Replays `clips` through `flow` with every stage on `fake` (no embedded
/// model is touched: an empty store would fail if it were).
fn replay_hosted(
    runtime: &tokio::runtime::Runtime,
    fake: &FakeOpenAi,
    flow: Arc<Flow>,
    clips: &[(&str, usize)],
) -> colloquy::transport::file::ReplayReport {
    let opts = StackOptions {
        llm: vec![format!("{}::chat-fake", fake.base_url())],
        stt: vec![format!("{}::whisper-1", fake.base_url())],
        tts: vec![format!("{}::tts-1::alloy", fake.base_url())],
        flow: Some(flow),
        ..StackOptions::default()
    };
    let store = ModelStore::new(tempfile::tempdir().expect("tempdir").path());
    let stack = {
        let _g = runtime.enter();
        VoiceStack::build(&opts, &store).expect("hosted stack")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("call.wav");
    common::write_wav16k(&input, &common::caller(clips));
    let mut ropts = ReplayOptions::new(&input);
    ropts.pace = Pace::Fast;
    // The scripted STT answers in order: no speculative turns.
    let config = common::without_speculation();
    replay(&ropts, stack.agent(runtime.handle().clone()), config).expect("replay")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_tool_call_of_a_hosted_model_runs_the_nodes_function_and_moves_the_flow() {
    let runtime = runtime();
    let fake = runtime.block_on(FakeOpenAi::start()).expect("fake server");
    fake.push_transcription([
        Reply::tokens(["Hi, I'd like to book a table."]),
        // No number word: the party node's pattern does not fire.
        Reply::tokens(["My wife, the kids and me."]),
    ]);
    fake.push_chat([Reply::tool_call("set_party_size", r#"{"party_size":4}"#)]);
    // The restaurant flow without its reprompts (which answer unmatched words
    // with a fixed line, for the small embedded model), so the model is asked.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/restaurant.toml");
    let text: String = std::fs::read_to_string(&path)
        .expect("flow file")
        .lines()
        .filter(|l| !l.starts_with("reprompt = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let flow = Arc::new(Flow::parse(&path, &text).expect("flow"));
    let report = replay_hosted(
        &runtime,
        &fake,
        flow.clone(),
        &[("cards-002", 5000), ("cards-004", 5000)],
    );

    // The greeting, the caller's request, the party size.
    assert_eq!(report.committed.len(), 3, "events: {:#?}", report.events);
    assert_eq!(
        report.committed[0]
            .messages
            .last()
            .map(|m| m.content.as_str()),
        Some("Hello, thanks for calling. Would you like to book a table?")
    );
    let round = &report.committed[2].messages;
    assert_eq!(round[0].content, "My wife, the kids and me.");
    let call = &round[1].tool_calls[0];
    assert_eq!(call.name, "set_party_size");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&call.arguments).expect("json"),
        serde_json::json!({"party_size": 4})
    );
    assert_eq!(round[2].role, Role::Tool);
    assert_eq!(round[2].tool_call_id.as_deref(), Some(call.id.as_str()));
    assert_eq!(
        round.last().map(|m| m.content.as_str()),
        Some("And for what time?")
    );
    let history: Vec<_> = report
        .committed
        .iter()
        .flat_map(|r| r.messages.clone())
        .collect();
    let state = FlowState::from_history(&flow, &history);
    assert_eq!(state.node, "time");
    assert_eq!(state.slots["party_size"], "4");

    // One model request (the first turn fired a trigger): the party node's
    // prompts as the system message and its functions as tools.
    let chats: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.route == "chat")
        .collect();
    assert_eq!(chats.len(), 1, "{chats:?}");
    let body = &chats[0].body;
    let tools: Vec<&str> = body["tools"]
        .as_array()
        .expect("tools sent")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(tools, ["set_party_size", "cancel"]);
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    assert!(
        system.contains("Ask how many people are coming."),
        "{system}"
    );
}

#[test]
fn a_function_without_a_line_has_its_result_put_in_words_by_a_second_request() {
    let runtime = runtime();
    let fake = runtime.block_on(FakeOpenAi::start()).expect("fake server");
    fake.push_transcription([Reply::tokens(["Do you know how late it is?"])]);
    fake.push_chat([
        Reply::tool_call("current_time", "{}"),
        Reply::tokens(["It is ", "getting late."]),
    ]);
    let flow = Flow::parse(
        "clockless.toml",
        r#"
initial_node = "ask"
[nodes.ask]
final = true
role_prompt = "You help."
[[nodes.ask.functions]]
name = "current_time"
description = "The current local time."
handler = "time"
"#,
    )
    .expect("flow");
    let report = replay_hosted(&runtime, &fake, Arc::new(flow), &[("cards-004", 5000)]);
    assert_eq!(report.committed.len(), 1, "events: {:#?}", report.events);
    let round = &report.committed[0].messages;
    assert_eq!(round[1].tool_calls[0].name, "current_time");
    let result = &round[2].content;
    assert!(result.contains(" on "), "the time tool's result: {result}");
    assert_eq!(
        round.last().map(|m| m.content.as_str()),
        Some("It is getting late.")
    );
    // The second request carried the result and offered no tools.
    let chats: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.route == "chat")
        .collect();
    assert_eq!(chats.len(), 2);
    assert!(chats[0].body["tools"].is_array());
    assert!(chats[1].body.get("tools").is_none_or(|t| t.is_null()));
    let system = chats[1].body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        system.contains(&format!(
            "The function current_time just returned: {result}"
        )),
        "{system}"
    );
}
