//! The words signal of the end-of-turn judge: does the speculative
//! transcript (what the user said up to a pause) end where a sentence can't,
//! or without the value the flow's node is waiting for?
//!
//! Pure functions of the transcript (and the flow and committed history), so
//! the rules are tested on scripted transcripts without models.
//!
//! # Invariants
//! 1. A transcript whose last word is in [`DANGLING`] (an article, a
//!    preposition, a conjunction, a possessive, a form of "be", a subject
//!    pronoun, a filler), or that ends on a comma, a dash or an ellipsis, is
//!    `Incomplete`; the word rule looks only at the last word, except that a
//!    form of "be" right after a subject pronoun ("than he was", "here we
//!    are", "that's what it is") can end a sentence and gives no sign.
//! 2. An empty transcript (no words) gives no sign: the words never hold a
//!    turn that has nothing to say.
//! 3. The slot rule holds a turn only in a flow node that would otherwise
//!    answer with its reprompt (the node has a `reprompt` and the words fire
//!    none of its functions), and never on the conversation's opening line or
//!    after the call ended: it only replaces a "sorry, I did not catch that".

use crate::flows::{Flow, FlowState};
use crate::llm::ChatMessage;

/// Words after which an English sentence can't end (lower case, apostrophes
/// dropped). Deliberately short: words that often do end sentences ("it",
/// "you", "that", "so", "up", "off", "her", "before", "can", "have", "did",
/// "this", "some", "really") are not here.
pub const DANGLING: &[&str] = &[
    // articles and determiners
    "a", "an", "the", "another", // prepositions
    "of", "to", "in", "on", "at", "for", "with", "from", "by", "into", "onto", "than", "about",
    "between", "through", "during", "without", "within", "toward", "towards", "upon", "across",
    "along", "among", "via", "per", // conjunctions
    "and", "or", "but", "nor", "because", "if", "although", "though", "unless", "whether", "while",
    "whereas", "plus", // possessives
    "my", "your", "his", "its", "our", "their", "whose",
    // forms of "be", contractions that need a verb or an object
    "is", "are", "was", "were", "im", "id", "ive", "youre", "theyre", "theres", "whats",
    // subject pronouns that need a verb after them
    "i", "we", "they", "he", "she", // fillers and hesitations
    "um", "uh", "er", "erm", "uhm", "umm", "uhh", "hmm",
    // an intensifier that needs a word after it
    "very",
];

/// Forms of "be" that end a sentence after a subject pronoun (invariant 1).
const BE_FORMS: &[&str] = &["is", "are", "was", "were"];
/// Subject pronouns after which a form of "be" can end a sentence.
const SUBJECTS: &[&str] = &["i", "you", "he", "she", "it", "we", "they", "that", "this"];

/// What the words say about the end of the turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Words {
    /// The sentence can't end here; the reason names the rule.
    Incomplete(String),
    /// The sentence ends with a question or exclamation mark.
    Complete,
    /// Nothing either way (the words may or may not be finished).
    NoSign,
}

impl Words {
    /// The reason for the event log.
    pub fn describe(&self) -> String {
        match self {
            Words::Incomplete(why) => format!("incomplete: {why}"),
            Words::Complete => "complete: ends a question".into(),
            Words::NoSign => "no sign".into(),
        }
    }
}

/// Judges the last words of `transcript` (invariants 1 and 2).
pub fn judge(transcript: &str) -> Words {
    let trimmed = transcript.trim();
    let words: Vec<String> = trimmed
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let Some(last) = words.last() else {
        // Holds invariant 2.
        return Words::NoSign;
    };
    if trimmed.ends_with("...")
        || trimmed.ends_with('…')
        || trimmed.ends_with(',')
        || trimmed.ends_with('-')
        || trimmed.ends_with('—')
    {
        return Words::Incomplete("trails off".into());
    }
    let after_subject = words.len() >= 2
        && BE_FORMS.contains(&last.as_str())
        && SUBJECTS.contains(&words[words.len() - 2].as_str());
    if DANGLING.contains(&last.as_str()) && !after_subject {
        return Words::Incomplete(format!("ends on \"{last}\""));
    }
    if trimmed.ends_with('?') || trimmed.ends_with('!') {
        return Words::Complete;
    }
    Words::NoSign
}

/// Whether the flow's current node is waiting for a value these words don't
/// give (invariant 3).
pub fn lacks_slot(flow: &Flow, history: &[ChatMessage], transcript: &str) -> bool {
    let state = FlowState::from_history(flow, history);
    if state.ended(flow) || crate::stt::normalize::normalize(transcript).is_empty() {
        return false;
    }
    if !state.started && history.is_empty() && flow.initial().on_enter.say.is_some() {
        // The opening line answers whatever the first words are.
        return false;
    }
    let Some(node) = state.current(flow) else {
        return false;
    };
    node.reprompt.is_some()
        && !node.functions.is_empty()
        && flow.choose(&state.node, transcript).is_none()
}

/// Both word rules: the last word first, then the flow's slot.
pub fn judge_in_flow(transcript: &str, flow: Option<&Flow>, history: &[ChatMessage]) -> Words {
    let words = judge(transcript);
    if matches!(words, Words::Incomplete(_)) {
        return words;
    }
    if flow.is_some_and(|f| lacks_slot(f, history, transcript)) {
        return Words::Incomplete("the flow node's value is missing".into());
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incomplete(t: &str) -> bool {
        matches!(judge(t), Words::Incomplete(_))
    }

    #[test]
    fn sentences_cut_on_a_word_that_cannot_end_them_are_incomplete() {
        for t in [
            "I would like to book a table for",
            "I'd like to book a table for.",
            "Can you tell me the weather in",
            "What is the capital of",
            "My name is",
            "I want to order a pizza and",
            "Send it to my",
            "How many days are there in a",
            "Um",
            "So I was thinking, um.",
            "Let me see,",
            "I think the answer is...",
            "Could you tell me about the",
            "It's for their",
            "The weather tomorrow is",
            "The cheapest flights were",
        ] {
            assert!(incomplete(t), "{t:?} should be incomplete: {:?}", judge(t));
        }
    }

    #[test]
    fn finished_sentences_are_not_held_by_the_words() {
        for t in [
            "I would like to book a table for four.",
            "What is the capital of France?",
            "Thank you.",
            "Can you tell me the weather in Paris",
            "He was not an ill disposed young man.",
            "Turn it off.",
            "I like that.",
            "Yes, that's right.",
            "Four people.",
            "At seven thirty.",
            "The name is Smith.",
            "Yes, I can.",
            "He was ill.",
            "He might have been made still more respectable than he was.",
            "Here we are",
            "That's what it is.",
            "I wish I was",
        ] {
            assert!(!incomplete(t), "{t:?} should not be incomplete");
        }
        assert_eq!(judge("What is the capital of France?"), Words::Complete);
        assert_eq!(judge("Thank you."), Words::NoSign);
    }

    #[test]
    fn no_words_give_no_sign() {
        assert_eq!(judge(""), Words::NoSign);
        assert_eq!(judge("  ...  "), Words::NoSign);
        assert_eq!(judge("[BLANK_AUDIO]"), Words::NoSign);
    }

    fn restaurant() -> Flow {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/flows/restaurant.toml");
        Flow::load(path).expect("restaurant flow")
    }

    /// History that moved the restaurant flow to its `party` node.
    fn at_party_node(flow: &Flow) -> Vec<ChatMessage> {
        let mut state = FlowState::start(flow);
        let greet = flow.initial();
        let f = greet
            .functions
            .iter()
            .find(|f| f.name == "start_booking")
            .expect("start_booking");
        let ran = crate::agent::flow::call_function(
            flow,
            &mut state,
            f,
            serde_json::Map::new(),
            1,
            crate::tools::time::now_local(),
        );
        let mut call_msg = ChatMessage::assistant("");
        call_msg.tool_calls = vec![ran.call.clone()];
        vec![
            ChatMessage::user("Hi, I would like to book a table, please."),
            call_msg,
            ChatMessage::tool_result(ran.call.id.clone(), ran.result.clone()),
            ChatMessage::assistant("Sure. How many people will be coming?"),
        ]
    }

    #[test]
    fn a_node_waiting_for_a_value_holds_words_that_do_not_give_it() {
        let flow = restaurant();
        let history = at_party_node(&flow);
        assert_eq!(FlowState::from_history(&flow, &history).node, "party");
        // "We will be" ends on a dangling word anyway; "Let me think" gives no number.
        assert!(lacks_slot(&flow, &history, "Let me think."));
        assert!(matches!(
            judge_in_flow("Let me think.", Some(&flow), &history),
            Words::Incomplete(_)
        ));
        // The number fires the node's function: nothing missing.
        assert!(!lacks_slot(&flow, &history, "Four people."));
        assert_eq!(
            judge_in_flow("Four people.", Some(&flow), &history),
            Words::NoSign
        );
        // Cancelling fires a function too.
        assert!(!lacks_slot(&flow, &history, "Never mind."));
    }

    #[test]
    fn the_slot_rule_stays_out_of_the_opening_and_of_open_chat() {
        let flow = restaurant();
        // First words of a call that was not greeted: the opening line answers.
        assert!(!lacks_slot(&flow, &[], "Hello there."));
        // The built-in open chat has no reprompt: never held by the slot rule.
        let chat = Flow::assistant();
        assert!(!lacks_slot(&chat, &[], "Tell me a joke."));
        assert!(!lacks_slot(
            &chat,
            &[ChatMessage::user("hi"), ChatMessage::assistant("Hello!")],
            "Tell me a joke."
        ));
    }
}
