//! The browser protocol's message shapes (documented in `docs/protocol.md`).
//!
//! Binary messages carry audio: PCM16 little-endian mono. Text messages are
//! JSON objects with a `type` tag; the server forwards every session
//! [`crate::frame::TimedEvent`] unchanged (same encoding as the JSONL log) and
//! adds its own `hello`, `history`, `pong` and `error` messages defined here.
//!
//! # Invariants
//! 1. Every server error is one JSON text message `{"type":"error",
//!    "source":"protocol", "code", "message"}`: a superset of
//!    [`crate::frame::Event::Error`], so a client that reads session errors
//!    reads these too.
//! 2. Parsing a client message never panics: anything that is not a known
//!    message becomes a [`ProtocolError`] (invariant 2 of the server).

use serde::{Deserialize, Serialize};

/// Protocol version sent in the server's `hello` and checked in the client's.
pub const PROTOCOL_VERSION: u32 = 1;

/// Input rates a client may announce (Hz).
pub const MIN_INPUT_RATE: u32 = 8_000;
pub const MAX_INPUT_RATE: u32 = 96_000;

/// A text message from the client.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Announces the client's protocol version and the rate of its audio.
    /// Must come before the first binary message (or never: 16 kHz).
    Hello {
        #[serde(default)]
        version: Option<u32>,
        #[serde(default)]
        sample_rate: Option<u32>,
        /// Whether the browser's echo cancellation is on for the microphone
        /// (`getUserMedia` track settings); absent = not reported.
        #[serde(default)]
        echo_cancellation: Option<bool>,
    },
    /// Keeps an idle connection open; answered with `pong`.
    Ping {
        #[serde(default)]
        id: Option<u64>,
    },
    /// The client is done: the server ends the session and closes.
    Bye,
    /// Where the client's playback is: `samples` of the bot audio it was
    /// sent on this connection have been played (samples dropped at a
    /// clear count as passed); `clear` names the `clear_playback` (its
    /// epoch) that stopped playback there. The server commits an
    /// interrupted reply as heard up to that point.
    Played {
        samples: u64,
        #[serde(default)]
        clear: Option<u64>,
    },
}

/// The server's greeting, sent once right after the upgrade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerHello {
    /// Always `"hello"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    /// The conversation's id: its journal session when the server keeps a
    /// journal (a client sends it back as `?session=` to resume), else the
    /// connection's id.
    pub session: String,
    /// Whether `session` can be resumed (the server keeps a journal and this
    /// conversation is written to it).
    pub resumable: bool,
    /// This connection's id (logs, `--dump-dir` files).
    pub connection: String,
    /// Rate of the audio the server sends (Hz).
    pub output_rate: u32,
    /// Rate assumed for client audio until a `hello` says otherwise (Hz).
    pub input_rate: u32,
    pub frame_ms: u64,
    /// Largest message the server accepts (bytes).
    pub max_message_bytes: usize,
    pub agent: String,
}

/// One committed turn of a resumed conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryTurn {
    pub user: String,
    /// What the user heard of the reply.
    pub assistant: String,
    pub interrupted: bool,
}

/// The committed turns of the conversation, sent right after the `hello`
/// when the server keeps a journal (empty for a new conversation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Always `"history"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub session: String,
    pub turns: Vec<HistoryTurn>,
}

/// The server's answer to a client `hello`: who cancels the bot's echo on
/// this connection. The server applies no canceller of its own (it cannot
/// see when the browser plays its audio); the browser's is the one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EchoAnswer {
    /// Always `"echo"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What the client reported (`null`: not reported).
    pub browser: Option<bool>,
    /// The server's own echo control on this connection: always `"none"`.
    pub server: String,
    /// One sentence for the user.
    pub message: String,
}

impl EchoAnswer {
    pub fn for_client(browser: Option<bool>) -> Self {
        let message = match browser {
            Some(true) => "the browser cancels the echo; the server adds no second canceller",
            Some(false) => "the browser's echo cancellation is off and the server applies none: use headphones, or the bot may hear itself",
            None => "the page did not say whether the browser cancels echo; the server applies no canceller",
        };
        Self {
            kind: "echo".into(),
            browser,
            server: "none".into(),
            message: message.into(),
        }
    }
}

/// The server's answer to `ping`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<u64>,
}

/// What went wrong with a client's message or connection (holds invariant 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Missing or wrong `token` (HTTP 401 before the upgrade).
    Unauthorized,
    /// `Origin` not allowed (HTTP 403 before the upgrade).
    BadOrigin,
    /// The server holds its maximum number of sessions (HTTP 503).
    TooManySessions,
    /// The client's address holds its maximum of live connections (HTTP 429).
    TooManyConnections,
    /// A message larger than the limit; it was dropped.
    MessageTooLarge,
    /// A text message that is not JSON or not a known message; dropped.
    BadMessage,
    /// A binary message that is not whole PCM16 samples; dropped.
    BadAudio,
    /// A `hello` with an unsupported version or rate, or sent too late.
    BadHello,
    /// Messages arrive faster than the limit; excess dropped (the
    /// connection closes if it goes on).
    RateLimited,
    /// Nothing received for the idle timeout; the connection closes.
    IdleTimeout,
    /// The `session` query parameter is not a well-formed id; a new
    /// conversation was started.
    BadSession,
    /// The `session` query parameter names no session of this server's
    /// journal (or the server keeps none); a new conversation was started.
    UnknownSession,
    /// The named session is open in another connection; this one closes.
    SessionInUse,
    /// The journal failed: the conversation goes on, not (or no longer)
    /// journaled.
    Journal,
    /// The session could not be built or failed.
    Internal,
}

/// A protocol error message (holds invariant 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolError {
    /// Always `"error"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `"protocol"`.
    pub source: String,
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind: "error".into(),
            source: "protocol".into(),
            code,
            message: message.into(),
        }
    }

    /// The JSON text of this error.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","source":"protocol","code":"internal","message":"unencodable error"}"#
                .to_string()
        })
    }
}

/// Parses a client text message (holds invariant 2).
pub fn parse_client_text(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            ErrorCode::BadMessage,
            format!("text message is not JSON ({e}); send a JSON object with a \"type\""),
        )
    })?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_string);
    let Some(kind) = kind else {
        return Err(ProtocolError::new(
            ErrorCode::BadMessage,
            "text message has no string \"type\" field; known types: hello, ping, played, bye",
        ));
    };
    serde_json::from_value(value).map_err(|e| {
        let known = matches!(kind.as_str(), "hello" | "ping" | "played" | "bye");
        let hint = if known {
            format!("bad \"{}\" message: {e}", truncate(&kind, 40))
        } else {
            format!(
                "unknown message type \"{}\"; known types: hello, ping, played, bye",
                truncate(&kind, 40)
            )
        };
        ProtocolError::new(ErrorCode::BadMessage, hint)
    })
}

/// Validates a client `hello`; returns the input rate to use.
pub fn check_hello(version: Option<u32>, sample_rate: Option<u32>) -> Result<u32, ProtocolError> {
    if let Some(v) = version {
        if v != PROTOCOL_VERSION {
            return Err(ProtocolError::new(
                ErrorCode::BadHello,
                format!("protocol version {v} is not supported; this server speaks version {PROTOCOL_VERSION}"),
            ));
        }
    }
    let rate = sample_rate.unwrap_or(crate::frame::SAMPLE_RATE);
    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&rate) {
        return Err(ProtocolError::new(
            ErrorCode::BadHello,
            format!(
                "sample_rate {rate} is out of range; use {MIN_INPUT_RATE}..={MAX_INPUT_RATE} Hz"
            ),
        ));
    }
    Ok(rate)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_messages_parse_and_garbage_becomes_a_bad_message_error() {
        assert_eq!(
            parse_client_text(r#"{"type":"hello","version":1,"sample_rate":48000}"#),
            Ok(ClientMessage::Hello {
                version: Some(1),
                sample_rate: Some(48000),
                echo_cancellation: None,
            })
        );
        assert_eq!(
            parse_client_text(
                r#"{"type":"hello","version":1,"sample_rate":48000,"echo_cancellation":true}"#
            ),
            Ok(ClientMessage::Hello {
                version: Some(1),
                sample_rate: Some(48000),
                echo_cancellation: Some(true),
            })
        );
        let answer = serde_json::to_value(EchoAnswer::for_client(Some(true))).unwrap();
        assert_eq!(answer["type"], "echo");
        assert_eq!(answer["browser"], true);
        assert_eq!(answer["server"], "none");
        assert_eq!(
            parse_client_text(r#"{"type":"bye"}"#),
            Ok(ClientMessage::Bye)
        );
        assert_eq!(
            parse_client_text(r#"{"type":"played","samples":3200,"clear":4}"#),
            Ok(ClientMessage::Played {
                samples: 3200,
                clear: Some(4)
            })
        );
        for bad in [
            "not json",
            "[]",
            "{}",
            r#"{"type":7}"#,
            r#"{"type":"launch_missiles"}"#,
            r#"{"type":"hello","sample_rate":"fast"}"#,
            r#"{"type":"played"}"#,
            r#"{"type":"played","samples":-1}"#,
        ] {
            let err = parse_client_text(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::BadMessage, "{bad}");
            let json = err.to_json();
            assert!(json.contains(r#""type":"error""#), "{json}");
            assert!(json.contains(r#""code":"bad_message""#), "{json}");
        }
    }

    #[test]
    fn hello_checks_version_and_rate() {
        assert_eq!(check_hello(None, None), Ok(16_000));
        assert_eq!(check_hello(Some(1), Some(48_000)), Ok(48_000));
        assert_eq!(
            check_hello(Some(2), None).map_err(|e| e.code),
            Err(ErrorCode::BadHello)
        );
        assert_eq!(
            check_hello(None, Some(1)).map_err(|e| e.code),
            Err(ErrorCode::BadHello)
        );
    }
}
