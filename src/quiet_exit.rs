//! Exiting with the embedded LLM quiet. llama.cpp's generation thread must
//! not be decoding when the process exits: its static state is torn down
//! under it (SIGSEGV). A warm-start prefill of the embedded model can still
//! run when a command ends early — a replay whose turns a hosted model
//! answered fast, a shutdown mid-turn.
//!
//! # Invariants
//! 1. Every local LLM candidate's job queue is drained before exit: a
//!    prefill of the empty history (the system prompt, already cached, so
//!    nothing is decoded) is queued behind whatever runs and awaited; a
//!    running prefill whose caller is gone stops within one chunk.

use colloquy::agent::stack::VoiceStack;

/// Waits until no local LLM candidate of `stack` is decoding (invariant 1).
pub fn quiesce(stack: &VoiceStack) {
    for c in stack.router.candidates().iter().filter(|c| c.local) {
        let _ = futures::executor::block_on(c.model.prefill(&[]));
    }
}
