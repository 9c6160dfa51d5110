//! The reply guard: replies that stop. It sits between the model's text
//! stream and the sentence chunker of a spoken reply and ends the reply
//!
//! - when it **loops**: a word n-gram (n = 1..=8) repeated back to back
//!   (`loop_repeats` times, one more for single words: "very very" is
//!   English), or a sentence said before in the same reply;
//! - at the **spoken-length cap**: `max_sentences` sentences, or the first
//!   sentence end after `max_tokens` tokens.
//!
//! A stopped reply ends cleanly: at the last sentence end before the loop
//! or the cap, so what is spoken (and therefore committed) is whole
//! sentences. Only when not one sentence was completed is the fragment
//! before the loop spoken, with a period, so the user hears something.
//! A reply the model ends itself (`finish(false)`) is spoken whole; one cut
//! by the model's token limit (`finish(true)`) drops its unfinished last
//! sentence when an earlier one was spoken.
//!
//! # Invariants
//! 1. Every chunk it yields is a chunk the plain chunker would yield for
//!    the same text, or a prefix of the reply cut at a sentence end (or,
//!    for a first-sentence loop, the fragment before the loop + "."):
//!    nothing is invented, reordered or said twice.
//! 2. After it reports a stop it yields nothing more; the caller stops the
//!    model (dropping the stream frees the model at once).
//! 3. Work per delta is bounded by the reply's length (a few hundred
//!    characters), never by the conversation's.

use crate::tts::chunker::SentenceChunker;

/// Limits of a spoken reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyCap {
    /// Most sentences spoken (0 = no limit).
    pub max_sentences: usize,
    /// After this many tokens the reply ends at the next sentence end
    /// (0 = no limit).
    pub max_tokens: usize,
    /// Back-to-back repeats of a phrase that make a loop (single words
    /// need one more).
    pub loop_repeats: usize,
}

impl Default for ReplyCap {
    /// Three sentences, about 60 tokens: a spoken answer, not a lecture.
    fn default() -> Self {
        Self {
            max_sentences: 3,
            max_tokens: 60,
            loop_repeats: 3,
        }
    }
}

/// The cap of a reply: `base`, with the flow node's `max_sentences` when
/// it sets one (a node that asks for a longer answer).
pub fn cap_for(base: ReplyCap, node: Option<&crate::flows::Node>) -> ReplyCap {
    match node.and_then(|n| n.max_sentences) {
        Some(n) => ReplyCap {
            max_sentences: n,
            // A node asking for more sentences asks for more tokens too.
            max_tokens: base.max_tokens.max(n * 20),
            ..base
        },
        None => base,
    }
}

/// Why the guard stopped a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The text started repeating itself.
    Loop,
    /// The sentence or token cap was reached.
    Cap,
}

/// What one delta gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Guarded {
    /// Chunks to speak now, in order.
    pub chunks: Vec<String>,
    /// Set once: the reply is over (invariant 2).
    pub stop: Option<StopReason>,
}

/// The guard of one reply (see the module doc).
#[derive(Clone, Debug)]
pub struct ReplyGuard {
    cap: ReplyCap,
    chunker: SentenceChunker,
    /// Everything received (this reply).
    text: String,
    /// Bytes of `text` handed out as chunks (or dropped by a stop).
    consumed: usize,
    /// Normalised sentences spoken so far.
    sentences: Vec<String>,
    tokens: usize,
    stopped: bool,
}

pub(crate) fn is_sentence_end(chunk: &str) -> bool {
    chunk
        .trim_end_matches(['"', '\'', ')', ']', '”', '’', '»'])
        .ends_with(['.', '!', '?', '…'])
}

fn norm_words(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() || c == '\'' {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            out.push((s, text[s..i].to_lowercase()));
        }
    }
    if let Some(s) = start {
        out.push((s, text[s..].to_lowercase()));
    }
    out
}

/// Byte offset in `text` where a back-to-back repetition at its end starts
/// (the second occurrence: the first one is kept), if there is one.
pub fn loop_start(text: &str, repeats: usize) -> Option<usize> {
    let words = norm_words(text);
    for n in 1..=8usize {
        let need = if n == 1 { repeats + 1 } else { repeats }.max(2);
        if words.len() < n * need {
            break;
        }
        let unit = &words[words.len() - n..];
        let mut reps = 1;
        while reps * n + n <= words.len() {
            let at = words.len() - (reps + 1) * n;
            if words[at..at + n]
                .iter()
                .zip(unit)
                .all(|((_, a), (_, b))| a == b)
            {
                reps += 1;
            } else {
                break;
            }
        }
        if reps >= need {
            let first = words.len() - reps * n;
            return Some(words[first + n].0);
        }
    }
    None
}

impl ReplyGuard {
    /// A guard with `cap`, chunking like the voice agent does (chunks of at
    /// most `max_chars`, the first may end at a clause of `eager_first`+ chars).
    pub fn new(cap: ReplyCap, max_chars: usize, eager_first: Option<usize>) -> Self {
        let mut chunker = SentenceChunker::new(max_chars);
        if let Some(min) = eager_first {
            chunker = chunker.with_eager_first_clause(min);
        }
        Self {
            cap,
            chunker,
            text: String::new(),
            consumed: 0,
            sentences: Vec::new(),
            tokens: 0,
            stopped: false,
        }
    }

    /// Lets the first chunk end after its first `words` words
    /// ([`SentenceChunker::with_eager_first_words`]).
    #[must_use]
    pub fn with_eager_first_words(mut self, words: usize) -> Self {
        self.chunker = self.chunker.with_eager_first_words(words);
        self
    }

    /// Whether the reply was stopped.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes one delta (one token's text) of the model.
    pub fn push(&mut self, delta: &str) -> Guarded {
        let mut out = Guarded::default();
        if self.stopped {
            return out;
        }
        self.tokens += 1;
        self.text.push_str(delta);
        if let Some(at) = loop_start(&self.text, self.cap.loop_repeats) {
            self.stop_at(at, StopReason::Loop, &mut out);
            return out;
        }
        let chunks = self.chunker.push(delta);
        self.take(chunks, &mut out);
        out
    }

    /// The model finished; `cut` when its token limit cut it.
    pub fn finish(&mut self, cut: bool) -> Vec<String> {
        let mut out = Guarded::default();
        if self.stopped {
            return out.chunks;
        }
        let spoke = !self.sentences.is_empty();
        let chunks = self.chunker.finish();
        for chunk in chunks {
            if out.stop.is_some() {
                break;
            }
            let whole = is_sentence_end(&chunk);
            if cut && spoke && !whole {
                // Holds the cap's promise: end at a sentence boundary.
                break;
            }
            self.take(vec![chunk], &mut out);
        }
        self.stopped = true;
        out.chunks
    }

    /// Passes chunks on, applying the sentence cap and the repeated-sentence
    /// check (holds invariant 1).
    fn take(&mut self, chunks: Vec<String>, out: &mut Guarded) {
        for chunk in chunks {
            if out.stop.is_some() {
                return;
            }
            let whole = is_sentence_end(&chunk);
            let key: String = norm_words(&chunk)
                .into_iter()
                .map(|(_, w)| w)
                .collect::<Vec<_>>()
                .join(" ");
            if whole && !key.is_empty() && self.sentences.contains(&key) {
                self.stop(StopReason::Loop, out);
                return;
            }
            self.consumed = self.text.len() - self.chunker.pending().len();
            out.chunks.push(chunk);
            if whole {
                self.sentences.push(key);
                let sentences_full =
                    self.cap.max_sentences > 0 && self.sentences.len() >= self.cap.max_sentences;
                let tokens_full = self.cap.max_tokens > 0 && self.tokens >= self.cap.max_tokens;
                if sentences_full || tokens_full {
                    self.stop(StopReason::Cap, out);
                    return;
                }
            }
        }
    }

    fn stop(&mut self, reason: StopReason, out: &mut Guarded) {
        self.chunker.clear();
        self.consumed = self.text.len();
        self.stopped = true;
        out.stop = Some(reason);
    }

    /// Stops at byte `at` of the text: speaks the whole sentences before it
    /// that were not spoken yet, or, when none was ever completed, the
    /// fragment before it.
    fn stop_at(&mut self, at: usize, reason: StopReason, out: &mut Guarded) {
        let from = self.consumed.min(at);
        let tail = self.text[from..at].to_string();
        let mut plain = SentenceChunker::new(self.chunker.max_chars());
        let mut chunks = plain.push(&tail);
        let rest = plain.pending().trim().to_string();
        // Sentences complete inside the tail (those ending in whitespace
        // are yielded by `push`; one ending the tail exactly is in `rest`).
        if is_sentence_end(&rest) {
            chunks.push(rest.clone());
        }
        let mut spoken = Guarded::default();
        self.chunker.clear();
        self.take(chunks, &mut spoken);
        out.chunks.extend(spoken.chunks);
        let nothing_said = self.sentences.is_empty() && out.chunks.is_empty();
        if nothing_said && !is_sentence_end(&rest) {
            let fragment = rest.trim_end_matches(|c: char| !c.is_alphanumeric());
            if !fragment.is_empty() {
                out.chunks.push(format!("{fragment}."));
            }
        }
        self.stop(spoken.stop.unwrap_or(reason), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(guard: &mut ReplyGuard, tokens: &[&str]) -> (Vec<String>, Option<StopReason>, usize) {
        let mut said = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let g = guard.push(t);
            said.extend(g.chunks);
            if g.stop.is_some() {
                return (said, g.stop, i + 1);
            }
        }
        said.extend(guard.finish(false));
        (said, None, tokens.len())
    }

    fn words(text: &str) -> Vec<&str> {
        text.split_inclusive(' ').collect()
    }

    #[test]
    fn a_phrase_loop_without_punctuation_is_cut_after_its_first_occurrence() {
        let mut g = ReplyGuard::new(ReplyCap::default(), 180, Some(24));
        let text = "The front of the front of the front of the front of the front of";
        let (said, stop, used) = run(&mut g, &words(text));
        assert_eq!(stop, Some(StopReason::Loop));
        assert_eq!(said, vec!["The front of."]);
        assert!(used <= 10, "stopped after {used} tokens");
    }

    #[test]
    fn a_repeated_sentence_is_not_said_twice() {
        let mut g = ReplyGuard::new(ReplyCap::default(), 180, Some(24));
        let text = "Paris is lovely. I like it a lot. Paris is lovely. I like it a lot. ";
        let (said, stop, _) = run(&mut g, &words(text));
        assert_eq!(stop, Some(StopReason::Loop));
        assert_eq!(said, vec!["Paris is lovely.", "I like it a lot."]);
    }

    #[test]
    fn the_sentence_cap_ends_at_a_sentence_boundary() {
        let cap = ReplyCap {
            max_sentences: 2,
            ..ReplyCap::default()
        };
        let mut g = ReplyGuard::new(cap, 180, None);
        let text = "One is first. Two comes next. Three is too many. Four. ";
        let (said, stop, _) = run(&mut g, &words(text));
        assert_eq!(stop, Some(StopReason::Cap));
        assert_eq!(said, vec!["One is first.", "Two comes next."]);
    }

    #[test]
    fn the_token_cap_waits_for_the_sentence_end() {
        let cap = ReplyCap {
            max_sentences: 0,
            max_tokens: 3,
            loop_repeats: 3,
        };
        let mut g = ReplyGuard::new(cap, 180, None);
        let text = "A long first sentence goes on here. A second one. ";
        let (said, stop, _) = run(&mut g, &words(text));
        assert_eq!(stop, Some(StopReason::Cap));
        assert_eq!(said, vec!["A long first sentence goes on here."]);
    }

    #[test]
    fn ordinary_replies_pass_unchanged() {
        let mut g = ReplyGuard::new(ReplyCap::default(), 180, Some(24));
        let text = "The capital of France is Paris, a very very old city. It is big.";
        let (said, stop, _) = run(&mut g, &words(text));
        assert_eq!(stop, None);
        let mut plain = SentenceChunker::new(180).with_eager_first_clause(24);
        let mut expected = plain.push(text);
        expected.extend(plain.finish());
        assert_eq!(said, expected);
    }

    #[test]
    fn a_reply_cut_by_the_token_limit_drops_its_unfinished_sentence() {
        let mut g = ReplyGuard::new(ReplyCap::default(), 180, None);
        for t in words("It is sunny. Tomorrow it will be") {
            assert!(g.push(t).stop.is_none());
        }
        assert!(g.finish(true).is_empty());
        let mut g = ReplyGuard::new(ReplyCap::default(), 180, None);
        let mut said = Vec::new();
        for t in words("Tomorrow it will be") {
            said.extend(g.push(t).chunks);
        }
        said.extend(g.finish(true));
        assert_eq!(said, vec!["Tomorrow it will be"]);
    }

    #[test]
    fn loops_are_found_at_the_end_of_the_text() {
        assert_eq!(loop_start("a b a b a b", 3), Some(4));
        assert_eq!(loop_start("no no no no", 3), Some(3));
        assert_eq!(loop_start("no no no", 3), None);
        assert_eq!(loop_start("I think, I think", 3), None);
    }
}
