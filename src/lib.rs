//! colloquy — a real-time voice agent.
//!
//! # Layout
//! The tree reads like the flow of one conversation:
//! - [`frame`]: audio frames, control-plane events, clocks.
//! - [`stt`], [`llm`], [`tts`]: the three model stages, each a trait with one
//!   backend per file.
//! - [`models`]: the embedded model store (pinned PyPI packages, fetch,
//!   verify, Whisper conversion).

pub mod frame;
pub mod llm;
pub mod models;
pub mod stt;
pub mod tts;
