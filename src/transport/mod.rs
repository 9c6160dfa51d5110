//! Transports: where audio comes from and goes to. Each drives a
//! [`crate::session::Session`] through its rings.
//!
//! - [`file`]: WAV in, stereo timeline WAV + JSONL events out (replay).

pub mod file;
