//! A turn of the voice agent inside a conversation flow: where the flow is
//! (from the committed history), which function the transcript fires
//! (patterns, triggers), the function's built-in tool, and what to answer:
//! a fixed line (`say`, `on_enter.say`), the model with the node's prompts
//! and tools, or nothing once the call has ended.
//!
//! Planning is synchronous and pure given the clock ([`plan_turn`]), so the
//! flow's behaviour is tested without models; `voice.rs` runs the plan.
//!
//! # Invariants
//! 1. At most one function fires per transcript; its call and result are
//!    reported together (`Payload::Tool`), so the committed context never
//!    holds a call without its result.
//! 2. The flow state a turn starts from is `FlowState::from_history` of the
//!    committed history only: nothing a rolled-back turn did is seen.
//! 3. A function whose tool failed reports `error: …` as its result and
//!    does not move the flow (`FlowState::apply` skips error results).

use super::voice::VoiceOptions;
use crate::flows::{Flow, FlowState, Function};
use crate::llm::{ChatMessage, ChatRequest, ToolCall};
use crate::tools::{self, ToolContext};
use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

/// What a flow turn does.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowTurn {
    /// The function fired by the transcript, with its result.
    pub tool: Option<(ToolCall, String)>,
    pub reply: FlowReply,
    /// The flow is in a final node that hangs up: end the call after the reply.
    pub end_call: bool,
}

/// How a flow turn answers.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowReply {
    /// A fixed line (rendered template), no model call.
    Say(String),
    /// Ask the model (node prompts; the node's functions as tools unless a
    /// function already ran this turn).
    Model(ChatRequest),
    /// The call has ended: no answer.
    Silent,
}

/// Plans one turn (invariants 1 and 2).
pub fn plan_turn(
    flow: &Flow,
    options: &VoiceOptions,
    history: &[ChatMessage],
    transcript: &str,
    epoch: u64,
    now: DateTime<FixedOffset>,
) -> FlowTurn {
    let mut state = FlowState::from_history(flow, history);
    if state.ended(flow) {
        return FlowTurn {
            tool: None,
            reply: FlowReply::Silent,
            end_call: true,
        };
    }
    if let Some(choice) = flow.choose(&state.node, transcript) {
        let ran = call_function(
            flow,
            &mut state,
            choice.function,
            choice.arguments,
            epoch,
            now,
        );
        let reply = match ran.say {
            Some(line) => FlowReply::Say(line),
            None => FlowReply::Model(model_request(
                flow,
                &state,
                options,
                history,
                transcript,
                Some((&ran.call, &ran.result)),
            )),
        };
        return FlowTurn {
            tool: Some((ran.call, ran.result)),
            reply,
            end_call: state.ended(flow),
        };
    }
    // The opening line of the initial node answers the caller's first words
    // when it was not said yet (no greeting turn, or the caller cut in
    // before any of it played).
    let opening = flow.initial().on_enter.say.as_deref();
    if let (false, true, Some(say)) = (state.started, history.is_empty(), opening) {
        return FlowTurn {
            tool: None,
            reply: FlowReply::Say(state.render(say, None)),
            end_call: false,
        };
    }
    // Nothing fired: the node's reprompt, or the model.
    let reply = match state.current(flow).and_then(|n| n.reprompt.as_deref()) {
        Some(line) => FlowReply::Say(state.render(line, None)),
        None => FlowReply::Model(model_request(
            flow, &state, options, history, transcript, None,
        )),
    };
    FlowTurn {
        tool: None,
        reply,
        end_call: false,
    }
}

/// A function that ran: its call, result, and what to say after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ran {
    pub call: ToolCall,
    pub result: String,
    /// The function's `say` and the entered node's `on_enter.say`, rendered.
    pub say: Option<String>,
}

/// Runs `function` of the current node with `arguments` (fixed arguments
/// merged over them), moves the flow, and renders what to say.
pub fn call_function(
    flow: &Flow,
    state: &mut FlowState,
    function: &Function,
    mut arguments: Map<String, Value>,
    epoch: u64,
    now: DateTime<FixedOffset>,
) -> Ran {
    // Fixed arguments see the slots with this call's own arguments in.
    let mut view = state.clone();
    for (k, v) in &arguments {
        view.slots
            .insert(k.clone(), crate::flows::state::value_text(v));
    }
    for (key, template) in &function.arguments {
        arguments.insert(key.clone(), Value::String(view.render(template, None)));
    }
    let result = match function.handler() {
        Some(handler) => {
            let ctx = ToolContext {
                slots: &view.slots,
                now,
            };
            match tools::run(handler, &arguments, &ctx) {
                Ok(r) => r,
                Err(e) => format!("error: {e}"),
            }
        }
        None => "done".to_string(),
    };
    let call = ToolCall {
        id: format!("call-{epoch}-{}", function.name),
        name: function.name.clone(),
        arguments: Value::Object(arguments.clone()).to_string(),
    };
    let entered = state.apply(flow, &function.name, &arguments, &result);
    let mut lines = Vec::new();
    if result.starts_with("error: ") {
        lines.push("Sorry, I could not do that.".to_string());
    } else if let Some(say) = &function.say {
        lines.push(state.render(say, Some(&result)));
    }
    if let Some(say) = entered
        .as_deref()
        .and_then(|n| flow.node(n))
        .and_then(|n| n.on_enter.say.as_deref())
    {
        lines.push(state.render(say, None));
    }
    Ran {
        call,
        result,
        say: (!lines.is_empty()).then(|| lines.join(" ")),
    }
}

/// The model request of a flow turn: the node's prompts, recent history,
/// the user's words; the node's functions as tools, or, after a function
/// ran, its result for the model to put in words.
pub fn model_request(
    flow: &Flow,
    state: &FlowState,
    options: &VoiceOptions,
    history: &[ChatMessage],
    transcript: &str,
    ran: Option<(&ToolCall, &str)>,
) -> ChatRequest {
    let mut node_options = options.clone();
    node_options.system_prompt = state.system_prompt(flow);
    if let Some((call, result)) = ran {
        node_options.system_prompt.push_str(&format!(
            "\n\nThe function {} just returned: {result}. Tell the caller in one short sentence.",
            call.name
        ));
    }
    let mut request = super::voice::build_request(&node_options, history, transcript);
    if ran.is_none() {
        request.tools = state.tools(flow);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-25T19:05:00+00:00").unwrap()
    }

    const FLOW: &str = r#"
initial_node = "ask"
[nodes.ask]
role_prompt = "You help."
on_enter = { say = "Hi, what can I do?" }
[[nodes.ask.functions]]
name = "clock"
handler = "time"
triggers = ["what time"]
say = "It is {result}."
[[nodes.ask.functions]]
name = "calc"
handler = "arithmetic"
patterns = ['what is (?P<expression>.+)']
say = "That makes {result}."
parameters = { type = "object", properties = { expression = { type = "string" } } }
[[nodes.ask.functions]]
name = "bye"
triggers = ["bye"]
transition_to = "end"
[nodes.end]
final = true
on_enter = { say = "Goodbye.", end_call = true }
"#;

    fn flow() -> Flow {
        Flow::parse("t.toml", FLOW).unwrap()
    }

    fn plan(history: &[ChatMessage], heard: &str) -> FlowTurn {
        plan_turn(&flow(), &VoiceOptions::default(), history, heard, 3, now())
    }

    #[test]
    fn first_words_get_the_opening_line_then_the_model() {
        assert_eq!(
            plan(&[], "Hello?").reply,
            FlowReply::Say("Hi, what can I do?".into())
        );
        let history = [ChatMessage::user("Hello?"), ChatMessage::assistant("Hi")];
        match plan(&history, "Tell me a joke").reply {
            FlowReply::Model(r) => {
                assert_eq!(r.tools.len(), 3);
                assert!(r.messages[0].content.starts_with("You help."));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_node_with_a_reprompt_says_it_instead_of_asking_the_model() {
        let text = FLOW.replace(
            "role_prompt = \"You help.\"",
            "role_prompt = \"You help.\"\nreprompt = \"Sorry? Ask me the time.\"",
        );
        let flow = Flow::parse("t.toml", &text).unwrap();
        let history = [ChatMessage::user("Hello?"), ChatMessage::assistant("Hi")];
        let t = plan_turn(
            &flow,
            &VoiceOptions::default(),
            &history,
            "Tell me a joke",
            3,
            now(),
        );
        assert_eq!(t.reply, FlowReply::Say("Sorry? Ask me the time.".into()));
        assert!(t.tool.is_none());
    }

    #[test]
    fn tools_run_and_their_result_is_said() {
        let t = plan(&[], "What time is it?");
        let (call, result) = t.tool.unwrap();
        assert_eq!(call.name, "clock");
        assert_eq!(result, "7:05 PM on Wednesday, November 25, 2026");
        assert_eq!(
            t.reply,
            FlowReply::Say("It is 7:05 PM on Wednesday, November 25, 2026.".into())
        );
        let t = plan(&[], "What is twelve times seven?");
        assert_eq!(t.tool.unwrap().1, "84");
        assert_eq!(t.reply, FlowReply::Say("That makes 84.".into()));
    }

    #[test]
    fn a_failed_tool_is_reported_and_apologised_for() {
        let t = plan(&[], "What is two plus banana");
        let (_, result) = t.tool.unwrap();
        assert!(result.starts_with("error: tool arithmetic"), "{result}");
        assert_eq!(
            t.reply,
            FlowReply::Say("Sorry, I could not do that.".into())
        );
    }

    #[test]
    fn a_transition_says_the_entered_node_and_an_ended_call_is_silent() {
        let t = plan(&[], "OK bye");
        let (call, result) = t.tool.clone().unwrap();
        assert_eq!(t.reply, FlowReply::Say("Goodbye.".into()));
        assert!(t.end_call);
        assert!(!plan(&[], "What time is it?").end_call);
        let mut call_msg = ChatMessage::assistant("");
        call_msg.tool_calls = vec![call.clone()];
        let history = [
            ChatMessage::user("OK bye"),
            call_msg,
            ChatMessage::tool_result(call.id, result),
            ChatMessage::assistant("Goodbye."),
        ];
        let after = plan(&history, "Hello?");
        assert_eq!(after.reply, FlowReply::Silent);
        assert!(after.end_call);
    }
}
