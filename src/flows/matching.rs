//! Which function of a node a final transcript fires, without the model:
//! regular-expression patterns first (their named groups become the call's
//! arguments), then trigger phrases ([`super::Flow::match_trigger`]).
//!
//! # Invariants
//! 1. Patterns are matched on [`match_form`] of the transcript, case
//!    insensitively, in declaration order (functions, then each function's
//!    patterns); the first match wins, before any trigger is looked at.
//! 2. A captured argument whose parameter is declared `integer` or `number`
//!    is a JSON number when it reads as one ("4", "four", "twenty one"); one
//!    declared with `"format": "time"` is "H:MM" (with "am"/"pm" when said)
//!    when it reads as a time ("730", "seven thirty"); otherwise, and for
//!    every other parameter, it is the captured text, trimmed. Unmatched
//!    optional groups give no argument.
//! 3. Matching never fails: a pattern that does not compile (impossible for
//!    a loaded flow, which validated it) matches nothing.

use super::{Flow, Function};
use regex::RegexBuilder;
use serde_json::{Map, Value};

/// A function fired by the transcript, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice<'a> {
    pub function: &'a Function,
    pub arguments: Map<String, Value>,
}

/// The form patterns see: the transcript with every character that is not a
/// letter, digit, `:` or whitespace replaced by a space (apostrophes are
/// dropped: "o'clock" → "oclock"), whitespace folded. Case is kept (patterns
/// are case-insensitive, and a captured name keeps its capital).
pub fn match_form(transcript: &str) -> String {
    let cleaned: String = transcript
        .chars()
        .filter(|c| *c != '\'' && *c != '’')
        .map(|c| {
            if c.is_alphanumeric() || c == ':' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compiles a flow pattern the way matching uses it.
pub(crate) fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
}

impl Flow {
    /// The function of `node` that `transcript` fires, if any (invariant 1).
    pub fn choose(&self, node: &str, transcript: &str) -> Option<Choice<'_>> {
        let n = self.nodes.get(node)?;
        let heard = match_form(transcript);
        for f in &n.functions {
            for p in &f.patterns {
                let Ok(re) = compile(p) else { continue };
                let Some(caps) = re.captures(&heard) else {
                    continue;
                };
                let mut arguments = Map::new();
                for name in re.capture_names().flatten() {
                    if let Some(m) = caps.name(name) {
                        arguments.insert(name.to_string(), coerce(f, name, m.as_str().trim()));
                    }
                }
                return Some(Choice {
                    function: f,
                    arguments,
                });
            }
        }
        self.match_trigger(node, transcript).map(|function| Choice {
            function,
            arguments: Map::new(),
        })
    }
}

/// A captured value typed by its parameter's schema (invariant 2).
pub fn coerce(function: &Function, parameter: &str, text: &str) -> Value {
    let schema = function
        .parameters
        .get("properties")
        .and_then(|p| p.get(parameter));
    let ty = schema.and_then(|p| p.get("type")).and_then(Value::as_str);
    let format = schema.and_then(|p| p.get("format")).and_then(Value::as_str);
    if format == Some("time") {
        if let Some(t) = clock_time(text) {
            return Value::String(t);
        }
    }
    if matches!(ty, Some("integer" | "number")) {
        if let Some(n) = parse_number(text) {
            return Value::from(n);
        }
    }
    Value::String(text.to_string())
}

/// Reads a whole number written in digits or English words ("21", "twenty
/// one", "a hundred and five"); `None` when `text` is anything else.
pub fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(n) = text.replace(',', "").parse::<u64>() {
        return Some(n);
    }
    let mut total: u64 = 0;
    let mut current: u64 = 0;
    let mut any = false;
    for word in text
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter(|w| !w.is_empty())
    {
        let w = word.to_lowercase();
        match w.as_str() {
            "and" | "a" if any || w == "a" => {
                if w == "a" {
                    current = current.max(1);
                    any = true;
                }
            }
            "hundred" => {
                current = current.max(1).checked_mul(100)?;
                any = true;
            }
            "thousand" => {
                total = total.checked_add(current.max(1).checked_mul(1000)?)?;
                current = 0;
                any = true;
            }
            _ => {
                let v = word_value(&w)?;
                current = current.checked_add(v)?;
                any = true;
            }
        }
    }
    any.then_some(total + current)
}

/// A time of day as heard ("730", "7 30", "7:30 p m", "seven thirty",
/// "eight oclock") in the form "7:30" / "7:30 pm"; `None` when it is not one.
pub fn clock_time(text: &str) -> Option<String> {
    let mut t = format!(" {} ", text.to_lowercase().replace('.', " "));
    let mut suffix = "";
    for (pat, s) in [
        (" p m ", " pm"),
        (" pm ", " pm"),
        (" a m ", " am"),
        (" am ", " am"),
    ] {
        if let Some(i) = t.find(pat) {
            suffix = s;
            t.replace_range(i..i + pat.len(), " ");
        }
    }
    for glued in ["pm", "am"] {
        let end = format!("{glued} ");
        if let Some(stripped) = t.trim_end().strip_suffix(glued) {
            if t.ends_with(&end) && stripped.ends_with(|c: char| c.is_ascii_digit()) {
                suffix = if glued == "pm" { " pm" } else { " am" };
                t = format!("{stripped} ");
            }
        }
    }
    let t = t.replace("oclock", " ").replace("o clock", " ");
    let words: Vec<&str> = t.split_whitespace().collect();
    let (hour, minute) = match words.as_slice() {
        [one] if one.contains(':') => {
            let (h, m) = one.split_once(':')?;
            (h.parse().ok()?, m.parse().ok()?)
        }
        [one] if one.len() >= 3 && one.chars().all(|c| c.is_ascii_digit()) => {
            let n: u64 = one.parse().ok()?;
            (n / 100, n % 100)
        }
        [one] => (parse_number(one)?, 0),
        [h, rest @ ..] => (parse_number(h)?, parse_number(&rest.join(" "))?),
        [] => return None,
    };
    (hour <= 24 && minute < 60).then(|| format!("{hour}:{minute:02}{suffix}"))
}

fn word_value(w: &str) -> Option<u64> {
    use crate::stt::normalize::{ONES, TENS};
    if let Some(i) = ONES.iter().position(|&o| o == w) {
        return Some(i as u64);
    }
    // TENS[0] and TENS[1] are empty (no "ten-ty").
    TENS.iter()
        .position(|&t| !t.is_empty() && t == w)
        .map(|i| i as u64 * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: &str = r#"
initial_node = "party"

[nodes.party]
[[nodes.party.functions]]
name = "set_party_size"
patterns = ['\b(?P<party_size>\d+|one|two|three|four|five|six)\b']
transition_to = "name"
[nodes.party.functions.parameters]
type = "object"
properties = { party_size = { type = "integer" } }

[[nodes.party.functions]]
name = "cancel"
triggers = ["cancel"]
transition_to = "name"

[nodes.name]
final = true
[[nodes.name.functions]]
name = "set_name"
patterns = ['(?:name is|under) (?P<name>[a-z]+)', '^(?P<name>[a-z]+)$']
[nodes.name.functions.parameters]
type = "object"
properties = { name = { type = "string" } }
"#;

    fn flow() -> Flow {
        Flow::parse("t.toml", FLOW).unwrap()
    }

    #[test]
    fn match_form_keeps_digits_colons_and_case() {
        assert_eq!(match_form("At 7:30 p.m., please!"), "At 7:30 p m please");
        assert_eq!(match_form("Eight o'clock."), "Eight oclock");
        assert_eq!(match_form("  "), "");
    }

    #[test]
    fn pattern_captures_become_typed_arguments() {
        let f = flow();
        for (heard, n) in [("We are four people.", 4), ("A table for 6, please", 6)] {
            let c = f.choose("party", heard).unwrap();
            assert_eq!(c.function.name, "set_party_size");
            assert_eq!(c.arguments["party_size"], Value::from(n), "{heard}");
        }
        let c = f.choose("name", "The name is Smith.").unwrap();
        assert_eq!(c.arguments["name"], Value::from("Smith"));
        let c = f.choose("name", "Jones").unwrap();
        assert_eq!(c.arguments["name"], Value::from("Jones"));
    }

    #[test]
    fn patterns_win_over_triggers_and_triggers_still_fire() {
        let f = flow();
        // "cancel" alone: no number, so the trigger fires.
        let c = f.choose("party", "Cancel that.").unwrap();
        assert_eq!(c.function.name, "cancel");
        assert!(c.arguments.is_empty());
        // A number and the trigger: the pattern comes first.
        assert_eq!(
            f.choose("party", "cancel, make it two")
                .unwrap()
                .function
                .name,
            "set_party_size"
        );
        assert!(f.choose("party", "I'm not sure yet").is_none());
        assert!(f.choose("nowhere", "two").is_none());
    }

    #[test]
    fn clock_times_as_heard() {
        for (heard, want) in [
            ("730", Some("7:30")),
            ("7 30", Some("7:30")),
            ("7:30 p m", Some("7:30 pm")),
            ("7.30pm", Some("7:30 pm")),
            ("seven thirty", Some("7:30")),
            ("eight oclock", Some("8:00")),
            ("8 pm", Some("8:00 pm")),
            ("twelve forty five", Some("12:45")),
            ("1961", None),
            ("banana", None),
        ] {
            assert_eq!(clock_time(heard).as_deref(), want, "{heard}");
        }
    }

    #[test]
    fn numbers_in_words_and_digits() {
        assert_eq!(parse_number("4"), Some(4));
        assert_eq!(parse_number("twenty one"), Some(21));
        assert_eq!(parse_number("twenty-one"), Some(21));
        assert_eq!(parse_number("a hundred and five"), Some(105));
        assert_eq!(parse_number("two thousand"), Some(2000));
        assert_eq!(parse_number("seven people"), None);
        assert_eq!(parse_number(""), None);
    }
}
