//! The committed conversation a session keeps in memory, bounded: the
//! prompt only ever uses its last few messages (`VoiceOptions::max_history`),
//! so a long session keeps a window of the most recent plain messages plus
//! every tool call and result (flows replay their state from those,
//! `FlowState::from_history`). The journal keeps the whole conversation; a
//! resumed session starts from the same window of it.
//!
//! # Invariants
//! 1. Rounds are appended whole ([`History::push_round`], coordinator
//!    invariant 1); trimming only ever removes the *oldest* plain messages,
//!    so what is kept is in the committed order.
//! 2. At most `max_messages` plain messages (user, and assistant messages
//!    without tool calls) are kept after any call; messages that carry tool
//!    calls and tool results are never dropped, so the flow state replayed
//!    from the kept history equals the one replayed from the whole history.
//! 3. `max_messages` is never below [`MIN_HISTORY_MESSAGES`], so every
//!    prompt sees as much as it did without the bound (the voice agent sends
//!    its last 12).

use crate::llm::{ChatMessage, Role};

/// Default plain messages kept (32 rounds of user + assistant).
pub const DEFAULT_HISTORY_MESSAGES: usize = 64;
/// Smallest bound accepted (invariant 3): the voice agent's prompt window.
pub const MIN_HISTORY_MESSAGES: usize = 12;

/// The in-memory history of one session.
#[derive(Debug, Clone)]
pub struct History {
    messages: Vec<ChatMessage>,
    max_messages: usize,
    /// Plain messages in `messages`.
    plain: usize,
    /// Plain messages dropped so far (they stay in the journal).
    dropped: u64,
}

/// A message the flow replay needs: a tool call or a tool result.
fn keeps_flow_state(m: &ChatMessage) -> bool {
    m.role == Role::Tool || !m.tool_calls.is_empty()
}

impl History {
    /// An empty history keeping at most `max_messages` plain messages
    /// (raised to [`MIN_HISTORY_MESSAGES`], invariant 3).
    pub fn new(max_messages: usize) -> Self {
        let max_messages = max_messages.max(MIN_HISTORY_MESSAGES);
        Self {
            // The bound plus one round of slack: no reallocation once warm.
            messages: Vec::with_capacity(max_messages.min(1024) + 8),
            max_messages,
            plain: 0,
            dropped: 0,
        }
    }

    /// Replaces the history (a resumed session), trimmed to the bound.
    pub fn replace(&mut self, messages: Vec<ChatMessage>) {
        self.plain = messages.iter().filter(|m| !keeps_flow_state(m)).count();
        self.messages = messages;
        self.trim();
    }

    /// Appends one committed round whole, then trims (invariants 1 and 2).
    pub fn push_round(&mut self, round: &[ChatMessage]) {
        self.plain += round.iter().filter(|m| !keeps_flow_state(m)).count();
        self.messages.extend(round.iter().cloned());
        self.trim();
    }

    fn trim(&mut self) {
        let mut excess = self.plain.saturating_sub(self.max_messages);
        if excess == 0 {
            return;
        }
        self.plain -= excess;
        self.dropped += excess as u64;
        // Holds invariant 2: the oldest plain messages go, tool traffic stays.
        self.messages.retain(|m| {
            if excess > 0 && !keeps_flow_state(m) {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    /// The kept messages, oldest first.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Plain messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The bound on plain messages.
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    fn call(id: &str) -> ChatMessage {
        let mut m = ChatMessage::assistant("");
        m.tool_calls.push(ToolCall {
            id: id.into(),
            name: "book".into(),
            arguments: "{}".into(),
        });
        m
    }

    fn result(id: &str) -> ChatMessage {
        let mut m = ChatMessage::user("ok");
        m.role = Role::Tool;
        m.tool_call_id = Some(id.into());
        m
    }

    #[test]
    fn a_long_conversation_keeps_the_last_rounds_and_every_tool_message() {
        let mut h = History::new(12);
        h.push_round(&[ChatMessage::user("book"), call("c1"), result("c1")]);
        for i in 0..100 {
            h.push_round(&[
                ChatMessage::user(format!("q{i}")),
                ChatMessage::assistant(format!("a{i}")),
            ]);
        }
        let plain: Vec<&str> = h
            .messages()
            .iter()
            .filter(|m| !keeps_flow_state(m))
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(plain.len(), 12);
        assert_eq!(plain.first(), Some(&"q94"));
        assert_eq!(plain.last(), Some(&"a99"));
        assert_eq!(h.dropped(), 201 - 12);
        // The call and its result stay, in order, before the kept window.
        assert_eq!(h.messages()[0].tool_calls[0].id, "c1");
        assert_eq!(h.messages()[1].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(h.messages().len(), 14);
    }

    #[test]
    fn a_resumed_history_is_trimmed_and_a_small_bound_is_raised() {
        let mut h = History::new(3);
        assert_eq!(h.max_messages(), MIN_HISTORY_MESSAGES);
        h.replace(
            (0..40)
                .map(|i| ChatMessage::user(format!("m{i}")))
                .collect(),
        );
        assert_eq!(h.messages().len(), MIN_HISTORY_MESSAGES);
        assert_eq!(h.messages()[0].content, "m28");
    }
}
