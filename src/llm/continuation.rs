//! Continuing a reply on another model: when the model streaming a reply
//! stalls (or fails) after it sent text, the router asks the next model to
//! *continue* that text instead of starting over, so what the user already
//! heard stays and the reply goes on from where it stopped.
//!
//! A continuation request is the turn's request plus the partial reply as a
//! final assistant message ([`continuation_request`]). The embedded model
//! (llama.cpp) renders it as the open assistant turn of its prompt, so it
//! truly continues. An OpenAI-compatible server continues a final assistant
//! message when it supports prefill (llama.cpp's server, vLLM with
//! `continue_final_message`); one that does not answers afresh and usually
//! repeats the start of the sentence. [`RepeatGuard`] strips such a
//! repeated prefix, so the words already spoken are not spoken twice.
//!
//! # Invariants
//! 1. The continuation request keeps every message of the turn's request,
//!    tools included, and adds exactly one message: the assistant's
//!    partial text, as the consumer received it.
//! 2. [`RepeatGuard`] passes text through unchanged once it differs from
//!    the partial reply; while it could still be a repetition of the
//!    partial reply it holds it back, and what repeats the partial reply
//!    (leading whitespace ignored) is dropped, never spoken.
//! 3. The guard adds nothing: the text it passes is a suffix of what the
//!    model sent (its concatenation is the model's text minus a repeated
//!    prefix).

use super::{ChatMessage, ChatRequest};

/// The request that asks a model to continue `said` (invariant 1).
pub fn continuation_request(request: &ChatRequest, said: &str) -> ChatRequest {
    let mut r = request.clone();
    r.messages.push(ChatMessage::assistant(said));
    r
}

/// Drops a continuation's repetition of the partial reply (invariant 2).
#[derive(Clone, Debug)]
pub struct RepeatGuard {
    said: String,
    held: String,
    decided: bool,
}

impl RepeatGuard {
    /// A guard for a continuation of `said`.
    pub fn new(said: &str) -> Self {
        let said = said.trim_start().to_string();
        Self {
            decided: said.is_empty(),
            said,
            held: String::new(),
        }
    }

    /// The part of `text` to pass on now (possibly empty).
    pub fn push(&mut self, text: &str) -> String {
        if self.decided {
            return text.to_string();
        }
        self.held.push_str(text);
        let held = self.held.trim_start();
        if self.said.starts_with(held) {
            // Still a possible repetition: hold it.
            return String::new();
        }
        self.decided = true;
        let held = std::mem::take(&mut self.held);
        match held.trim_start().strip_prefix(self.said.as_str()) {
            // The model restarted the sentence: drop the repeated words.
            Some(rest) => rest.to_string(),
            // A real continuation.
            None => held,
        }
    }

    /// At the end of the stream: what is still held is a repetition of
    /// (a prefix of) the partial reply, and is dropped.
    pub fn finish(&mut self) -> String {
        if !self.decided {
            self.held.clear();
        }
        self.decided = true;
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(said: &str, pieces: &[&str]) -> String {
        let mut g = RepeatGuard::new(said);
        let mut out: String = pieces.iter().map(|p| g.push(p)).collect();
        out.push_str(&g.finish());
        out
    }

    #[test]
    fn a_true_continuation_passes_unchanged() {
        assert_eq!(run("Half of", &[" it", " is", " here."]), " it is here.");
        assert_eq!(run("Half", &["time", "."]), "time.");
    }

    #[test]
    fn a_restarted_sentence_loses_its_repeated_prefix() {
        assert_eq!(run("Half of", &["Half", " of", " it."]), " it.");
        assert_eq!(run(" Half of", &[" Half of it."]), " it.");
        assert_eq!(run("Half of", &["Ha", "lf of", " it."]), " it.");
    }

    #[test]
    fn a_partial_repeat_that_diverges_is_kept_whole() {
        assert_eq!(
            run("Half of", &["Half", " the", " time."]),
            "Half the time."
        );
    }

    #[test]
    fn a_stream_that_only_repeats_adds_nothing() {
        assert_eq!(run("Half of it", &["Half", " of"]), "");
        assert_eq!(run("Half of", &["Half of"]), "");
    }

    #[test]
    fn nothing_said_means_nothing_to_strip() {
        assert_eq!(run("", &["Hello"]), "Hello");
        assert_eq!(run("  ", &["Hello"]), "Hello");
    }

    #[test]
    fn the_request_gains_exactly_the_partial_reply() {
        let r = ChatRequest::new(vec![ChatMessage::user("hi")]);
        let c = continuation_request(&r, "Half of");
        assert_eq!(c.messages.len(), 2);
        assert_eq!(c.messages[0], r.messages[0]);
        assert_eq!(c.messages[1], ChatMessage::assistant("Half of"));
        assert_eq!(c.tools, r.tools);
    }
}
