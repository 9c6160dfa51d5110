//! Sentence chunking: turns the streamed text deltas of an LLM reply into
//! speakable chunks, each handed to text-to-speech as soon as it is complete.
//!
//! A chunk ends at a sentence end (`.`, `!`, `?`, `…`, runs of them like `?!`
//! or `...`, optionally followed by closing quotes or brackets) that is
//! followed by whitespace, or at a line break. A sentence longer than the
//! maximum is cut at the last clause boundary (`,` `;` `:` or a dash followed
//! by whitespace) or, failing that, the last word boundary inside the limit.
//! Optionally the first chunk of a reply may end at a clause boundary
//! ([`SentenceChunker::with_eager_first_clause`]) or after its first few
//! words ([`SentenceChunker::with_eager_first_words`]) so speech starts
//! sooner.
//!
//! # Invariants
//! 1. Nothing is lost or invented: the chunks, joined with spaces, equal the
//!    input with its whitespace runs collapsed (a chunk is trimmed, never
//!    rewritten).
//! 2. No chunk is longer than `max_chars` characters, and none is empty.
//! 3. A cut is only ever made at whitespace, so a number (`3.14`, `10:30`,
//!    `1,000`) or a word is never split, except a single word longer than
//!    `max_chars`, which is cut at the limit.
//! 4. A period (or a line break) after a known abbreviation (`Mr.`, `e.g.`,
//!    `U.S.`) or an initial (`J.`) does not end a chunk, and a long-sentence cut avoids the
//!    space right after one whenever the window holds another space.
//! 5. A terminator at the very end of the buffer waits for the next delta:
//!    whether `3.` ends a sentence is only known once `14` or ` ` arrives.
//!    [`SentenceChunker::finish`] flushes everything left.

/// Default longest chunk, in characters (about two lines of speech).
pub const DEFAULT_MAX_CHARS: usize = 180;
/// The voice agent's eager first clause: the first chunk of a reply may end
/// at a clause boundary once it holds this many characters
/// ([`SentenceChunker::with_eager_first_clause`]).
pub const EAGER_FIRST_CLAUSE_CHARS: usize = 24;
/// The voice agent's eager first words: the first chunk of a reply may end
/// at the word boundary after this many words (Piper's cost grows with the
/// chunk: `VOICE_LATENCY_PIPER_CHUNKS=1 cargo bench --bench voice_latency`;
/// and the model's tokens for the rest of the sentence are not waited for).
/// 2 (was 4, then 3): a word boundary after a dangling word ("for", "the")
/// is not a cut, so a 2-word chunk is "I'm sorry" or "The capital", never
/// "I'm for". TTS first chunk after the first token, Piper, p50: 180–240 →
/// 100–140 ms against 3 words in alternate runs (README), and the
/// rest of the sentence is ready before two words have played (Piper
/// synthesises a 2-word chunk in ≈ 85 ms for ≈ 850 ms of audio).
pub const EAGER_FIRST_WORDS: usize = 2;
/// The smallest useful `max_chars`; smaller values are raised to it.
pub const MIN_MAX_CHARS: usize = 16;

/// Words that take a period without ending a sentence (lowercase, without
/// the final period). Dotted forms (`u.s`) are matched whole.
pub const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "e.g", "i.e",
    "u.s", "u.k", "u.n", "e.u", "a.m", "p.m", "approx", "dept", "est", "fig", "inc", "ltd", "co",
    "corp", "gen", "gov", "sen", "rep", "lt", "col", "capt", "sgt", "rev", "hon", "jan", "feb",
    "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Whether `token` (the text before a period, up to the previous whitespace)
/// is an abbreviation or an initial (holds invariant 4).
pub fn is_abbreviation(token: &str) -> bool {
    let token = token.trim_start_matches(['"', '\'', '(', '[', '“', '‘', '«']);
    if token.is_empty() {
        return false;
    }
    let lower = token.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    let parts: Vec<&str> = token.split('.').collect();
    let alphabetic = |p: &&str| !p.is_empty() && p.chars().all(char::is_alphabetic);
    if parts.len() == 1 {
        // An initial ("J. R. R. Tolkien"), but not the pronoun "I".
        let mut chars = token.chars();
        return matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase() && c != 'I');
    }
    // Short dotted forms: "U.S.A", "e.g", "Ph.D" (never numbers like "3.14").
    parts
        .iter()
        .all(|p| alphabetic(p) && p.chars().count() <= 2)
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
}

/// Streams text in, chunks out. See the module doc for the rules.
#[derive(Clone, Debug)]
pub struct SentenceChunker {
    buf: String,
    max_chars: usize,
    /// See [`SentenceChunker::with_eager_first_clause`].
    eager_first: Option<usize>,
    /// See [`SentenceChunker::with_eager_first_words`].
    eager_words: Option<usize>,
    /// Whether a chunk of the current reply was yielded already.
    yielded: bool,
}

impl Default for SentenceChunker {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CHARS)
    }
}

impl SentenceChunker {
    /// A chunker whose chunks are at most `max_chars` characters
    /// (at least [`MIN_MAX_CHARS`]).
    pub fn new(max_chars: usize) -> Self {
        Self {
            buf: String::new(),
            max_chars: max_chars.max(MIN_MAX_CHARS),
            eager_first: None,
            eager_words: None,
            yielded: false,
        }
    }

    /// Lets the first chunk of each reply end at a clause boundary (`,` `;`
    /// `:` followed by whitespace) once it holds at least `min_chars`
    /// characters, so speech starts before a long first sentence is
    /// complete. Later chunks are whole sentences again.
    #[must_use]
    pub fn with_eager_first_clause(mut self, min_chars: usize) -> Self {
        self.eager_first = Some(min_chars);
        self
    }

    /// Lets the first chunk of each reply end at the word boundary after
    /// its first `words` words (never right after an abbreviation or an
    /// initial), when no sentence or clause ended before: the model's tokens
    /// for the rest of a long first sentence are not waited for, and the
    /// voice synthesises a short chunk. Later chunks are whole sentences.
    #[must_use]
    pub fn with_eager_first_words(mut self, words: usize) -> Self {
        self.eager_words = Some(words.max(1));
        self
    }

    /// The longest chunk this chunker yields.
    pub fn max_chars(&self) -> usize {
        self.max_chars
    }

    /// Text received but not yet yielded.
    pub fn pending(&self) -> &str {
        &self.buf
    }

    /// Adds a delta and returns the chunks it completed, in order.
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        self.drain(&mut out);
        out
    }

    /// Flushes everything left (holds invariant 5); the chunker is empty and
    /// reusable afterwards.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.drain(&mut out);
        while !self.buf.trim().is_empty() {
            if self.buf.trim().chars().count() <= self.max_chars {
                let rest = std::mem::take(&mut self.buf);
                out.push(rest.trim().to_string());
            } else {
                let cut = self.long_cut();
                self.emit(cut, &mut out);
            }
        }
        self.buf.clear();
        self.yielded = false;
        out
    }

    /// Drops everything pending (barge-in).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.yielded = false;
    }

    fn drain(&mut self, out: &mut Vec<String>) {
        loop {
            let start = self.buf.len() - self.buf.trim_start().len();
            if start == self.buf.len() {
                return;
            }
            let mut sentence = self.sentence_end();
            if let (Some(min), false) = (self.eager_first, self.yielded) {
                if let Some(clause) = self.first_clause_end(min) {
                    sentence = Some(sentence.map_or(clause, |s| s.min(clause)));
                }
            }
            if let (Some(n), false) = (self.eager_words, self.yielded) {
                if let Some(words) = self.first_words_end(n) {
                    sentence = Some(sentence.map_or(words, |s| s.min(words)));
                }
            }
            match sentence {
                Some(end) if self.buf[start..end].trim().chars().count() <= self.max_chars => {
                    self.emit(end, out);
                }
                _ if self.buf.trim().chars().count() > self.max_chars => {
                    let cut = self.long_cut();
                    self.emit(cut, out);
                }
                _ => return,
            }
        }
    }

    /// Yields `buf[..end]` trimmed (holds invariant 1) and keeps the rest.
    fn emit(&mut self, end: usize, out: &mut Vec<String>) {
        let chunk = self.buf[..end].trim();
        if !chunk.is_empty() {
            out.push(chunk.to_string());
            self.yielded = true;
        }
        self.buf.drain(..end);
    }

    /// Byte offset just past the first complete sentence, if any.
    fn sentence_end(&self) -> Option<usize> {
        let buf = self.buf.as_str();
        let chars: Vec<(usize, char)> = buf.char_indices().collect();
        let mut i = 0;
        let mut seen_text = false;
        while i < chars.len() {
            let (at, c) = chars[i];
            if c == '\n' && seen_text {
                // A line break ends a chunk, except right after an
                // abbreviation (holds invariant 4).
                let token = word_before(buf, buf[..at].trim_end().len());
                if !(token.ends_with('.') && is_abbreviation(token.trim_end_matches('.'))) {
                    return Some(at);
                }
            }
            if !c.is_whitespace() {
                seen_text = true;
            }
            if !is_terminator(c) {
                i += 1;
                continue;
            }
            // A run of terminators, then closers, then whitespace.
            let run_start = i;
            let mut j = i;
            while j < chars.len() && is_terminator(chars[j].1) {
                j += 1;
            }
            while j < chars.len() && is_closer(chars[j].1) {
                j += 1;
            }
            if j >= chars.len() {
                // Holds invariant 5: undecided until more text arrives.
                return None;
            }
            if !chars[j].1.is_whitespace() {
                i = j;
                continue;
            }
            if c == '.' && run_end(&chars, run_start) == run_start + 1 {
                let token = word_before(buf, at);
                if is_abbreviation(token) {
                    i = j;
                    continue;
                }
            }
            return Some(chars[j].0);
        }
        None
    }

    /// Byte offset of the first clause boundary after at least `min` chars.
    fn first_clause_end(&self, min: usize) -> Option<usize> {
        let buf = self.buf.as_str();
        let start = buf.len() - buf.trim_start().len();
        let mut chars = buf[start..].char_indices().peekable();
        let mut count = 0usize;
        while let Some((_, c)) = chars.next() {
            count += 1;
            if !matches!(c, ',' | ';' | ':') || count < min {
                continue;
            }
            match chars.peek() {
                Some(&(at, next)) if next.is_whitespace() => return Some(start + at),
                _ => {}
            }
        }
        None
    }

    /// Byte offset of the end of the `n`-th word or a later one, once
    /// whitespace follows it, never right after an abbreviation or an
    /// initial (holds invariants 3–4), nor after a word a sentence can't end
    /// on ("of", "the", "my": [`crate::eot::words::DANGLING`], so the cut
    /// sounds like a phrase), nor once a word pair repeats (a looping reply
    /// is left whole to the reply guard).
    fn first_words_end(&self, n: usize) -> Option<usize> {
        let buf = self.buf.as_str();
        let mut words: Vec<String> = Vec::new();
        let mut word_start: Option<usize> = None;
        for (i, c) in buf.char_indices() {
            match (c.is_whitespace(), word_start) {
                (false, None) => word_start = Some(i),
                (true, Some(from)) => {
                    word_start = None;
                    let word = &buf[from..i];
                    let key: String = word
                        .chars()
                        .filter(|c| c.is_alphanumeric())
                        .flat_map(char::to_lowercase)
                        .collect();
                    words.push(key);
                    let pair = |k: usize| (&words[k], &words[k + 1]);
                    let last = words.len() - 1;
                    if last >= 1 && (0..last - 1).any(|k| pair(k) == pair(last - 1)) {
                        return None;
                    }
                    let after_abbreviation =
                        word.ends_with('.') && is_abbreviation(word.trim_end_matches('.'));
                    let dangling = crate::eot::words::DANGLING.contains(&words[last].as_str());
                    if words.len() >= n && !after_abbreviation && !dangling {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Where to cut a sentence longer than `max_chars` (invariants 2–4).
    fn long_cut(&self) -> usize {
        let buf = self.buf.as_str();
        let start = buf.len() - buf.trim_start().len();
        // Byte offset of the end of the allowed window.
        let limit = buf[start..]
            .char_indices()
            .nth(self.max_chars)
            .map_or(buf.len(), |(i, _)| start + i);
        let window = &buf[..limit];
        let mut clause = None;
        let mut word = None;
        let mut word_after_abbreviation = None;
        let chars: Vec<(usize, char)> = window.char_indices().collect();
        for k in 1..chars.len() {
            let (at, c) = chars[k];
            // The cut may sit at `limit` itself if that char is whitespace.
            if !c.is_whitespace() || at <= start {
                continue;
            }
            let (_, prev) = chars[k - 1];
            if prev.is_whitespace() {
                continue;
            }
            if matches!(prev, ',' | ';' | ':' | '—' | '–') {
                clause = Some(at);
            }
            let token = word_before(buf, at);
            if token.ends_with('.') && is_abbreviation(token.trim_end_matches('.')) {
                word_after_abbreviation = Some(at);
            } else {
                word = Some(at);
            }
        }
        if limit < buf.len() && buf[limit..].starts_with(char::is_whitespace) {
            let token = word_before(buf, limit);
            if !(token.ends_with('.') && is_abbreviation(token.trim_end_matches('.'))) {
                word = Some(limit);
            }
        }
        let third = start + (limit - start) / 3;
        match (clause, word) {
            (Some(c), _) if c >= third => c,
            (_, Some(w)) => w,
            (Some(c), None) => c,
            (None, None) => word_after_abbreviation.unwrap_or(limit),
        }
    }
}

/// End index (exclusive) of the run of terminators starting at `from`.
fn run_end(chars: &[(usize, char)], from: usize) -> usize {
    let mut j = from;
    while j < chars.len() && is_terminator(chars[j].1) {
        j += 1;
    }
    j
}

/// The non-whitespace run that ends at byte `end` (exclusive).
fn word_before(buf: &str, end: usize) -> &str {
    let head = &buf[..end];
    let start = head
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    &head[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk_all(deltas: &[&str], max: usize) -> Vec<String> {
        chunk_all_with(deltas, SentenceChunker::new(max))
    }

    fn chunk_all_with(deltas: &[&str], mut c: SentenceChunker) -> Vec<String> {
        let mut out = Vec::new();
        for d in deltas {
            out.extend(c.push(d));
        }
        out.extend(c.finish());
        out
    }

    #[test]
    fn a_sentence_is_yielded_as_soon_as_the_next_word_starts() {
        let mut c = SentenceChunker::default();
        assert!(c.push("The capital").is_empty());
        assert!(c.push(" of France is Paris.").is_empty());
        assert_eq!(c.push(" It"), vec!["The capital of France is Paris."]);
        assert_eq!(c.finish(), vec!["It"]);
    }

    #[test]
    fn abbreviations_do_not_end_a_sentence() {
        let out = chunk_all(
            &["Mr. Smith met Dr. Jones in the U.S. last week, e.g. on Monday. Then he left."],
            180,
        );
        assert_eq!(
            out,
            vec![
                "Mr. Smith met Dr. Jones in the U.S. last week, e.g. on Monday.",
                "Then he left."
            ]
        );
    }

    #[test]
    fn numbers_and_times_stay_whole_even_when_streamed_in_pieces() {
        let out = chunk_all(&["Pi is 3", ".", "14 and it is 10", ":", "30 now. Ok"], 180);
        assert_eq!(out, vec!["Pi is 3.14 and it is 10:30 now.", "Ok"]);
    }

    #[test]
    fn ellipses_quotes_and_mixed_terminators() {
        let out = chunk_all(
            &["Well... I think so. He said \"Stop!\" and left. Really?! Yes…  fine"],
            180,
        );
        assert_eq!(
            out,
            vec![
                "Well...",
                "I think so.",
                "He said \"Stop!\"",
                "and left.",
                "Really?!",
                "Yes…",
                "fine"
            ]
        );
    }

    #[test]
    fn a_line_break_ends_a_chunk() {
        let out = chunk_all(&["Here you go\nsecond line"], 180);
        assert_eq!(out, vec!["Here you go", "second line"]);
    }

    #[test]
    fn a_long_sentence_is_cut_at_a_clause_boundary() {
        let text = "When the weather is fine and the wind is calm, we walk along the river \
                    for a long time, and then we sit down and rest";
        let out = chunk_all(&[text], 60);
        assert!(out.iter().all(|c| c.chars().count() <= 60), "{out:?}");
        assert_eq!(
            out[0], "When the weather is fine and the wind is calm,",
            "{out:?}"
        );
    }

    #[test]
    fn a_long_sentence_without_clauses_is_cut_at_a_word() {
        let text = "one two three four five six seven eight nine ten eleven twelve";
        let out = chunk_all(&[text], 20);
        assert_eq!(
            out,
            vec![
                "one two three four",
                "five six seven eight",
                "nine ten eleven",
                "twelve"
            ]
        );
    }

    #[test]
    fn a_long_cut_avoids_the_space_after_an_abbreviation() {
        let text = "aaaa bbbb cccc Dr. Smith is here";
        let out = chunk_all(&[text], 18);
        assert_eq!(out[0], "aaaa bbbb cccc", "{out:?}");
    }

    #[test]
    fn a_giant_word_is_cut_at_the_limit() {
        let word = "x".repeat(40);
        let out = chunk_all(&[&word], 16);
        assert_eq!(out.concat(), word);
        assert!(out.iter().all(|c| c.chars().count() <= 16));
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let text = "héllo wörld ünïcödé ñandú café naïve 東京 は 大きい です";
        let out = chunk_all(&[text], 16);
        assert!(out.iter().all(|c| c.chars().count() <= 16), "{out:?}");
        assert_eq!(out.join(" "), text);
    }

    #[test]
    fn the_first_chunk_can_end_after_its_first_words() {
        let mut c = SentenceChunker::default().with_eager_first_words(4);
        assert!(c.push("The capital of").is_empty());
        // The fourth word is complete once whitespace follows it.
        assert!(c.push(" France").is_empty());
        assert_eq!(c.push(" is"), vec!["The capital of France"]);
        assert_eq!(
            c.push(" Paris. It is old. "),
            vec!["is Paris.", "It is old."]
        );
        assert!(c.finish().is_empty());
        // A short first sentence ends first; never right after "Mr.", nor
        // on a word a sentence can't end on.
        assert_eq!(c.push("Yes. Hello there "), vec!["Yes."]);
        assert!(c.finish().len() == 1);
        let mut c = SentenceChunker::default().with_eager_first_words(2);
        assert_eq!(c.push("Ask Mr. Smith now "), vec!["Ask Mr. Smith"]);
        c.clear();
        let mut c = SentenceChunker::default().with_eager_first_words(4);
        assert_eq!(
            c.push("I would like to book a table "),
            vec!["I would like to book"]
        );
        // A repeating phrase is never cut eagerly.
        let mut c = SentenceChunker::default().with_eager_first_words(4);
        assert!(c.push("The front of the front of the front ").is_empty());
    }

    #[test]
    fn the_first_chunk_can_end_at_a_clause() {
        let mut c = SentenceChunker::default().with_eager_first_clause(12);
        assert!(c.push("Well, the capital of France").is_empty());
        assert_eq!(
            c.push(", as you know, is Paris"),
            vec!["Well, the capital of France,"]
        );
        // Later chunks are whole sentences.
        assert_eq!(
            c.push(". It is big, and old. "),
            vec!["as you know, is Paris.", "It is big, and old."]
        );
        assert!(c.finish().is_empty());
        // A new reply is eager again.
        assert_eq!(
            c.push("Yes, of course, I can. "),
            vec!["Yes, of course,", "I can."]
        );
    }

    #[test]
    fn finish_resets_and_clear_drops() {
        let mut c = SentenceChunker::default();
        c.push("Half a sent");
        c.clear();
        assert!(c.finish().is_empty());
        c.push("Again.");
        assert_eq!(c.finish(), vec!["Again."]);
        assert_eq!(c.pending(), "");
    }

    #[test]
    fn known_abbreviations_and_initials() {
        for a in ["Mr", "dr", "e.g", "U.S", "J", "(Dr", "U.S.A", "i.e"] {
            assert!(is_abbreviation(a), "{a}");
        }
        for w in ["Paris", "done", "3", "", "it"] {
            assert!(!is_abbreviation(w), "{w}");
        }
    }

    /// Tokens the generator builds text from: words, numbers of several
    /// shapes, abbreviations, terminators and clause punctuation.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-zA-Z]{1,10}",
            1 => "[0-9]{1,3}\\.[0-9]{1,3}",
            1 => "[0-9]{1,2}:[0-9]{2}",
            1 => "[0-9]{1,2},[0-9]{3}",
            1 => prop::sample::select(vec!["Mr.", "Dr.", "e.g.", "U.S.", "Mrs.", "i.e."])
                .prop_map(|s| format!("{s} word")),
            2 => "[a-z]{1,8}[.!?,;:]",
            1 => "[a-z]{1,6}(\\.\\.\\.|\\?!|…)",
            1 => "\"[a-z]{1,6}[.!?]\"",
        ]
    }

    fn text() -> impl Strategy<Value = (Vec<String>, String)> {
        (
            prop::collection::vec(token(), 0..80),
            prop::collection::vec(" |  |\n| \n ", 80),
        )
            .prop_map(|(tokens, seps)| {
                let mut s = String::new();
                for (i, t) in tokens.iter().enumerate() {
                    if i > 0 {
                        s.push_str(&seps[i % seps.len()]);
                    }
                    s.push_str(t);
                }
                (tokens, s)
            })
    }

    /// Splits `s` into deltas at the given cut points (like LLM tokens).
    fn split_at(s: &str, cuts: &[usize]) -> Vec<String> {
        let mut idx: Vec<usize> = cuts
            .iter()
            .map(|c| c % (s.len() + 1))
            .filter(|&c| s.is_char_boundary(c))
            .collect();
        idx.sort_unstable();
        idx.dedup();
        let mut out = Vec::new();
        let mut prev = 0;
        for i in idx {
            out.push(s[prev..i].to_string());
            prev = i;
        }
        out.push(s[prev..].to_string());
        out
    }

    proptest! {
        #[test]
        fn chunks_rebuild_the_input_and_respect_the_limits(
            (tokens, text) in text(),
            cuts in prop::collection::vec(0usize..2000, 0..40),
            max in 40usize..200,
            eager in prop::option::of(1usize..60),
            words in prop::option::of(1usize..8),
        ) {
            let deltas = split_at(&text, &cuts);
            let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
            let mut chunker = SentenceChunker::new(max);
            if let Some(min) = eager {
                chunker = chunker.with_eager_first_clause(min);
            }
            if let Some(n) = words {
                chunker = chunker.with_eager_first_words(n);
            }
            let chunks = chunk_all_with(&refs, chunker);

            // Invariant 1: nothing lost, nothing invented.
            let expected: Vec<&str> = text.split_whitespace().collect();
            let joined = chunks.join(" ");
            let got: Vec<&str> = joined.split_whitespace().collect();
            prop_assert_eq!(got, expected);

            // Invariant 2: bounded, non-empty.
            for c in &chunks {
                prop_assert!(!c.is_empty());
                prop_assert!(c.chars().count() <= max, "{} > {}: {:?}", c.chars().count(), max, c);
            }

            // Invariant 3: every number is whole inside one chunk (words
            // are at most 10 chars here, so no forced mid-word cut).
            for t in &tokens {
                if t.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    prop_assert!(chunks.iter().any(|c| c.split_whitespace().any(|w| w == t)), "{:?} split", t);
                }
            }

            // Invariant 4: no chunk but the last ends right after an
            // abbreviation.
            for c in chunks.iter().rev().skip(1) {
                let last = c.split_whitespace().last().unwrap_or("");
                prop_assert!(
                    !(last.ends_with('.') && !last.ends_with("..") && ABBREVIATIONS.contains(&last.trim_end_matches('.').to_lowercase().as_str())),
                    "chunk ends after an abbreviation: {:?}", c
                );
            }
        }

        #[test]
        fn streaming_gives_the_same_chunks_as_one_push(
            (_tokens, text) in text(),
            cuts in prop::collection::vec(0usize..2000, 0..40),
            eager in prop::option::of(1usize..60),
            words in prop::option::of(1usize..8),
        ) {
            let deltas = split_at(&text, &cuts);
            let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
            let chunker = || {
                let c = SentenceChunker::new(120);
                let c = match eager {
                    Some(min) => c.with_eager_first_clause(min),
                    None => c,
                };
                match words {
                    Some(n) => c.with_eager_first_words(n),
                    None => c,
                }
            };
            prop_assert_eq!(chunk_all_with(&refs, chunker()), chunk_all_with(&[&text], chunker()));
        }
    }
}
