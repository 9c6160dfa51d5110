//! Transports: where audio comes from and goes to. Each drives a
//! [`crate::session::Session`] through its rings.
//!
//! - [`file`]: WAV in, stereo timeline WAV + JSONL events out (replay).
//! - [`websocket`]: `colloquy serve`, the talk page and one session per
//!   WebSocket connection.
//! - [`local`]: the computer's microphone and speaker (`cpal`), `colloquy run`.
//! - [`event_log`]: the JSONL event log replay and run write.

pub mod event_log;
pub mod file;
pub mod local;
pub mod websocket;
