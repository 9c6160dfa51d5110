//! colloquy — a real-time voice agent.
//!
//! # Layout
//! The tree reads like the flow of one conversation:
//! - [`frame`]: audio frames, control-plane events, clocks.
//! - [`audio`]: lock-free rings, edge resampling, frame assembly, WAV files,
//!   test signals (speech over a noise floor) for benches and tests.
//! - [`echo`]: echo control before the VAD (AEC3 canceller, energy gate, off).
//! - [`vad`]: voice activity backends and the turn-taking state machine.
//! - [`session`]: one conversation's data plane feeding the coordinator.
//! - [`turn`]: the turn coordinator (epochs, staging, commit, barge-in) and playout.
//! - [`eot`]: the end-of-turn judge (words + the Smart Turn audio model) that
//!   holds a speculative turn past the endpoint or releases it sooner.
//! - [`agent`]: what answers a turn (parrot, voice = STT → LLM → TTS).
//! - [`stt`], [`llm`], [`tts`]: the three model stages, each a trait with one
//!   backend per file.
//! - [`route`]: the routing core every stage shares (candidates, rolling
//!   telemetry, hedged races, fallback).
//! - [`flows`]: conversation flows (nodes, functions, triggers) and their
//!   load-time validation.
//! - [`journal`]: committed turns in SQLite; sessions and traces.
//! - [`transport`]: file replay (and, later, WebSocket and local devices).
//! - [`models`]: the embedded model store (pinned PyPI packages, fetch,
//!   verify, Whisper conversion).

pub mod agent;
pub mod audio;
pub mod echo;
pub mod eot;
pub mod flows;
pub mod frame;
pub mod journal;
pub mod llm;
pub mod models;
pub mod route;
pub mod session;
pub mod stt;
pub mod tools;
pub mod transport;
pub mod tts;
pub mod turn;
pub mod vad;
