//! The key-value tools: `kv_set` stores every argument under its name for the
//! session, `kv_get` reads one back.
//!
//! The store is the committed context: a `kv_set` result is the JSON object
//! `{"stored": {KEY: VALUE, ...}}`, and the journal copies it into its `kv`
//! table in the same transaction as the turn that committed it (journal
//! invariant). A `kv_set` of a turn rolled back by a barge-in stores nothing.

use super::ToolError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Longest key and value kept (characters).
pub const MAX_KEY: usize = 64;
pub const MAX_VALUE: usize = 1024;

/// Stores every argument; the result says what was stored.
///
/// # Errors
/// No arguments, or a key or value over its limit.
pub fn set(arguments: &Map<String, Value>) -> Result<String, ToolError> {
    if arguments.is_empty() {
        return Err(ToolError::new("kv_set", "no arguments to store"));
    }
    let mut stored = Map::new();
    for (k, v) in arguments {
        let text = crate::flows::state::value_text(v);
        if k.chars().count() > MAX_KEY || text.chars().count() > MAX_VALUE {
            return Err(ToolError::new(
                "kv_set",
                format!("key \"{k}\" or its value is too long (limits {MAX_KEY} and {MAX_VALUE} characters)"),
            ));
        }
        stored.insert(k.clone(), Value::String(text));
    }
    Ok(serde_json::json!({ "stored": stored }).to_string())
}

/// Reads the value of argument `key` from the slots.
///
/// # Errors
/// No `key` argument.
pub fn get(
    arguments: &Map<String, Value>,
    slots: &BTreeMap<String, String>,
) -> Result<String, ToolError> {
    let key = arguments
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::new("kv_get", "missing string argument \"key\""))?;
    Ok(slots
        .get(key)
        .cloned()
        .unwrap_or_else(|| format!("nothing stored under \"{key}\"")))
}

/// What a `kv_set` result stored (`None` for any other result).
pub fn stored(result: &str) -> Option<BTreeMap<String, String>> {
    if !result.starts_with('{') {
        return None;
    }
    let v: Value = serde_json::from_str(result).ok()?;
    let map = v.get("stored")?.as_object()?;
    Some(
        map.iter()
            .map(|(k, v)| (k.clone(), crate::flows::state::value_text(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_then_stored_round_trips() {
        let args = serde_json::json!({"party_size": 4, "name": "Ada"});
        let r = set(args.as_object().unwrap()).unwrap();
        let s = stored(&r).unwrap();
        assert_eq!(s["party_size"], "4");
        assert_eq!(s["name"], "Ada");
        assert!(stored("12:00 PM").is_none());
        assert!(stored("{\"other\": 1}").is_none());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(set(&Map::new()).is_err());
        let long = serde_json::json!({"k": "x".repeat(MAX_VALUE + 1)});
        assert!(set(long.as_object().unwrap()).is_err());
        let e = get(&Map::new(), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("kv_get"), "{e}");
        let slots = BTreeMap::from([("name".to_string(), "Ada".to_string())]);
        let args = serde_json::json!({"key": "name"});
        assert_eq!(get(args.as_object().unwrap(), &slots).unwrap(), "Ada");
    }
}
