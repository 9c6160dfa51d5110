//! The `arithmetic` tool: evaluates an expression given in symbols
//! ("12 * (3 + 4)") or in words ("twelve times seven"), with `evalexpr`.
//!
//! Only numbers, `+ - * / ( )` and the words for them are accepted; anything
//! else is an error naming what was not understood (so no function or
//! variable of the evaluator is reachable from speech or a model's call).
//! Numbers are evaluated as floating point, so 7 / 2 is 3.5.

use super::ToolError;
use crate::flows::matching::parse_number;
use serde_json::{Map, Value};

/// Longest expression accepted (characters).
pub const MAX_EXPRESSION: usize = 200;

/// Evaluates argument `expression`.
///
/// # Errors
/// A missing, over-long or non-arithmetic expression, or one that does not
/// evaluate to a finite number (division by zero).
pub fn run(arguments: &Map<String, Value>) -> Result<String, ToolError> {
    let expr = arguments
        .get("expression")
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::new("arithmetic", "missing string argument \"expression\""))?;
    evaluate(expr).map(format_number)
}

/// The value of a spoken or written expression.
///
/// # Errors
/// See [`run`].
pub fn evaluate(expr: &str) -> Result<f64, ToolError> {
    if expr.chars().count() > MAX_EXPRESSION {
        return Err(ToolError::new(
            "arithmetic",
            format!("expression longer than {MAX_EXPRESSION} characters"),
        ));
    }
    let symbols = to_symbols(expr)?;
    if symbols.trim().is_empty() {
        return Err(ToolError::new("arithmetic", "empty expression"));
    }
    let value = evalexpr::eval(&symbols)
        .map_err(|e| ToolError::new("arithmetic", format!("cannot evaluate \"{expr}\": {e}")))?;
    let v = match value {
        evalexpr::Value::Float(f) => f,
        evalexpr::Value::Int(i) => i as f64,
        other => {
            return Err(ToolError::new(
                "arithmetic",
                format!("\"{expr}\" is not a number ({other})"),
            ))
        }
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(ToolError::new(
            "arithmetic",
            format!("\"{expr}\" has no finite value (division by zero?)"),
        ))
    }
}

/// Words to symbols, number words to floats, everything checked.
fn to_symbols(expr: &str) -> Result<String, ToolError> {
    let lower = expr.to_lowercase().replace(['?', '!', ','], " ");
    let spaced: String = lower
        .chars()
        .flat_map(|c| {
            if "+-*/()×÷".contains(c) {
                vec![' ', c, ' ']
            } else {
                vec![c]
            }
        })
        .collect();
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let mut out: Vec<String> = Vec::new();
    let mut number_words: Vec<&str> = Vec::new();
    let flush = |number_words: &mut Vec<&str>, out: &mut Vec<String>| -> Result<(), ToolError> {
        if number_words.is_empty() {
            return Ok(());
        }
        let text = number_words.join(" ");
        let n = parse_number(&text)
            .ok_or_else(|| ToolError::new("arithmetic", format!("\"{text}\" is not a number")))?;
        out.push(format!("{n}.0"));
        number_words.clear();
        Ok(())
    };
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let next = words.get(i + 1).copied();
        let op = match (w, next) {
            ("plus" | "+" | "and", _) if w != "and" || number_words.is_empty() => Some("+"),
            ("minus" | "-", _) => Some("-"),
            ("times" | "x" | "*" | "×", _) => Some("*"),
            ("multiplied" | "divided", Some("by")) => {
                i += 1;
                Some(if w == "multiplied" { "*" } else { "/" })
            }
            ("over" | "/" | "÷", _) => Some("/"),
            ("(" | ")", _) => Some(w),
            _ => None,
        };
        if let Some(op) = op {
            flush(&mut number_words, &mut out)?;
            out.push(op.to_string());
        } else if let Ok(n) = w.parse::<f64>() {
            flush(&mut number_words, &mut out)?;
            if !n.is_finite() {
                return Err(ToolError::new(
                    "arithmetic",
                    format!("\"{w}\" is not a number"),
                ));
            }
            out.push(format!("{n:?}"));
        } else if parse_number(w).is_some() || matches!(w, "hundred" | "thousand" | "a" | "and") {
            number_words.push(w);
        } else if matches!(
            w,
            "what" | "is" | "whats" | "what's" | "equals" | "the" | "of"
        ) {
            flush(&mut number_words, &mut out)?;
        } else {
            return Err(ToolError::new(
                "arithmetic",
                format!("\"{w}\" is not part of an arithmetic expression"),
            ));
        }
        i += 1;
    }
    flush(&mut number_words, &mut out)?;
    Ok(out.join(" "))
}

/// "84", "3.5", "0.3333".
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> Result<String, ToolError> {
        run(serde_json::json!({ "expression": s }).as_object().unwrap())
    }

    #[test]
    fn symbols_and_words() {
        assert_eq!(eval("12 * (3 + 4)").unwrap(), "84");
        assert_eq!(eval("twelve times seven").unwrap(), "84");
        assert_eq!(eval("What is 25 plus 17?").unwrap(), "42");
        assert_eq!(eval("a hundred divided by eight").unwrap(), "12.5");
        assert_eq!(eval("7 / 2").unwrap(), "3.5");
        assert_eq!(eval("twenty one minus 4").unwrap(), "17");
        assert_eq!(eval("1 / 3").unwrap(), "0.3333");
    }

    #[test]
    fn bad_expressions_are_errors_naming_the_problem() {
        for (e, needle) in [
            ("1 / 0", "finite"),
            ("two plus banana", "banana"),
            ("", "empty"),
            ("math::sqrt(4)", "math::sqrt"),
            ("(1 +", "cannot evaluate"),
        ] {
            let err = eval(e).unwrap_err().to_string();
            assert!(err.contains(needle), "{e}: {err}");
        }
        assert!(run(&Map::new())
            .unwrap_err()
            .to_string()
            .contains("expression"));
        assert!(eval(&"1+".repeat(200)).is_err());
    }
}
