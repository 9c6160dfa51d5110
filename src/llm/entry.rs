//! One entry of a stage's candidate list: `embedded` or a hosted
//! `BASE_URL::MODEL[::VOICE]`, from a flag, a variable or the config file
//! (a string, or a table with provider, key variable and price).
//!
//! # Invariants
//! 1. An entry is `embedded` or a URL with an http(s) scheme and a model;
//!    anything else (another scheme, a bare word, an empty entry) is an
//!    error naming the entry and its source, ending in a hint.
//! 2. A list never holds the same candidate twice.

use super::config::{invalid, parse_endpoint, ConfigError, Endpoint, ModelSpec, ServiceSpec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One entry of a stage's candidate list (invariant 4).
#[derive(Clone, Debug, PartialEq)]
pub enum Entry<S> {
    /// This machine's model of the stage.
    Embedded,
    Hosted(S),
}

/// Specs that a `BASE_URL::MODEL[::VOICE]` string can name.
pub trait FromEndpoint: Sized {
    fn from_endpoint(e: Endpoint, s: &str, origin: &str) -> Result<Self, ConfigError>;
}

impl FromEndpoint for ModelSpec {
    fn from_endpoint(e: Endpoint, s: &str, origin: &str) -> Result<Self, ConfigError> {
        if e.voice.is_some() {
            return Err(invalid(
                origin,
                format!("`{s}`: a chat model takes no voice"),
                "write BASE_URL::MODEL",
            ));
        }
        Ok(ModelSpec {
            provider: None,
            base_url: e.base_url,
            model: e.model,
            api_key_env: None,
            price: None,
            default_key: true,
        })
    }
}

impl FromEndpoint for ServiceSpec {
    fn from_endpoint(e: Endpoint, _: &str, _: &str) -> Result<Self, ConfigError> {
        Ok(ServiceSpec {
            base_url: e.base_url,
            model: e.model,
            voice: e.voice,
            api_key_env: None,
            default_key: true,
        })
    }
}

/// Parses one list entry: `embedded` or `BASE_URL::MODEL[::VOICE]`
/// (invariant 4).
pub fn parse_entry<S: FromEndpoint>(s: &str, origin: &str) -> Result<Entry<S>, ConfigError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(
            origin,
            "an empty candidate in the list",
            "separate candidates with single commas, e.g. embedded,http://127.0.0.1:8080/v1::m",
        ));
    }
    if t == "embedded" {
        return Ok(Entry::Embedded);
    }
    if !t.contains("://") {
        return Err(invalid(
            origin,
            format!("unknown candidate `{t}`: neither `embedded` nor BASE_URL::MODEL"),
            "write `embedded` or a URL such as http://127.0.0.1:8080/v1::my-model",
        ));
    }
    let e = parse_endpoint(t, origin)?;
    Ok(Entry::Hosted(S::from_endpoint(e, t, origin)?))
}

fn entry_id<S: Serialize>(e: &Entry<S>) -> String {
    match e {
        Entry::Embedded => "embedded".into(),
        Entry::Hosted(s) => serde_json::to_string(s).unwrap_or_default(),
    }
}

/// Parses a whole list, rejecting a candidate listed twice (invariant 4).
pub fn parse_list<S: FromEndpoint + Serialize>(
    items: &[String],
    origin: &str,
) -> Result<Vec<Entry<S>>, ConfigError> {
    let list: Vec<Entry<S>> = items
        .iter()
        .map(|s| parse_entry(s, origin))
        .collect::<Result<_, _>>()?;
    check_unique(&list, origin)?;
    Ok(list)
}

pub(crate) fn check_unique<S: Serialize>(
    list: &[Entry<S>],
    origin: &str,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for e in list {
        if !seen.insert(entry_id(e)) {
            return Err(invalid(
                origin,
                format!("a candidate is listed twice ({})", entry_id(e)),
                "list each candidate once; the order is the preference",
            ));
        }
    }
    Ok(())
}

impl<S: Serialize> Serialize for Entry<S> {
    fn serialize<Ser: Serializer>(&self, ser: Ser) -> Result<Ser::Ok, Ser::Error> {
        match self {
            Entry::Embedded => ser.serialize_str("embedded"),
            Entry::Hosted(s) => s.serialize(ser),
        }
    }
}

impl<'de, S: Deserialize<'de> + FromEndpoint> Deserialize<'de> for Entry<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<S> {
            Text(String),
            Table(S),
        }
        match Raw::<S>::deserialize(d)? {
            Raw::Text(t) => parse_entry(&t, "config file").map_err(serde::de::Error::custom),
            Raw::Table(s) => Ok(Entry::Hosted(s)),
        }
    }
}

/// One entry or a list of them (the config file's `stt`/`tts` may be a
/// single table, as before lists).
pub(crate) fn one_or_many<'de, D, S>(d: D) -> Result<Vec<Entry<S>>, D::Error>
where
    D: Deserializer<'de>,
    S: Deserialize<'de> + FromEndpoint,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<S: FromEndpoint> {
        Many(Vec<Entry<S>>),
        One(Entry<S>),
    }
    Ok(match Option::<OneOrMany<S>>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::Many(v)) => v,
        Some(OneOrMany::One(e)) => vec![e],
    })
}
