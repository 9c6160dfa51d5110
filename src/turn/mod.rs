//! The turn coordinator: every turn is a transaction over the conversation
//! context. See `docs/design/turn.md` for worked barge-in scenarios.
//!
//! - **Open**: the user's end of turn opens turn N with a new epoch; a fenced
//!   agent task is dispatched with the epoch and a cancellation token.
//! - **Stage**: a task message is checked against the current epoch and the
//!   in-flight map first; current → staged, anything else → quarantined.
//! - **Commit**: when the reply has been played out, the staged round (user
//!   message, tool call/result pairs, assistant message) joins history.
//! - **Barge-in**: confirmed user speech over the bot advances the epoch,
//!   cancels every in-flight task, silences playout, and suspends the reply.
//!   The interrupting utterance then decides: words → the spoken prefix is
//!   committed (marked interrupted) and the new turn goes on; no words or a
//!   backchannel → a false interruption, and the bot resumes.
//!
//! # Invariants
//! 1. History only grows by whole committed rounds, appended in one step;
//!    what a session keeps in memory is bounded (`history.rs`), the
//!    journal keeps it all.
//! 2. No message from an epoch other than the current one is ever staged.
//! 3. After a barge-in, no sample of the interrupted reply reaches the
//!    transport (playout invariant 1).
//! 4. Every dispatched task ends exactly once: committed, cancelled,
//!    failed, or quarantined (see [`Outcome`]).
//! 5. Tool calls enter the context only as call+result pairs, so a cancelled
//!    tool leaves no orphaned call.
//! 6. The coordinator is pure logic on one thread: its output depends only
//!    on the sequence of calls, so replays are deterministic.
//! 7. `call_ended` is emitted at most once, when the turn whose agent
//!    reported `EndCall` ends: right after its committed round (so what the
//!    caller heard of the goodbye is in the history before the transport
//!    hangs up), or at once if the turn had nothing to commit.
//! 8. A speculative turn (opened at a pause) is *held*: nothing of it plays
//!    and nothing is committed until the endpoint confirms the turn; if the
//!    user goes on instead, it is cancelled like any dropped reply and its
//!    late results are quarantined (new epoch). What the user hears is the
//!    same as without speculation, only sooner.
//! 9. An agent that greets (`Agent::greets`) gets one greeting turn, opened
//!    on the first frame of a session whose history is empty; it is an
//!    ordinary turn (a barge-in cuts it, what was heard is committed) with no
//!    user words.

mod coordinator;
pub mod history;
pub mod playout;

pub use coordinator::{
    CommittedRound, Coordinator, CoordinatorConfig, Outcome, ResumeMode, TurnState, TurnTiming,
};
pub use history::{History, DEFAULT_HISTORY_MESSAGES};
pub use playout::{Playout, SpokenChunk};
