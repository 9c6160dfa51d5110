//! No echo control (`--echo off`): for headphones, where the microphone
//! cannot hear the bot, and for transports that play nothing into a room.
//!
//! # Invariants
//! 1. Frames and speech probabilities pass unchanged.

use super::{EchoControl, EchoStats};

/// The pass-through backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoOff;

impl EchoControl for EchoOff {
    fn name(&self) -> &'static str {
        "off"
    }

    fn stats(&self) -> EchoStats {
        EchoStats::default()
    }
}
