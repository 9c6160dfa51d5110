//! [`CancelSignal`]: a cancellation token that carries *why* it was
//! cancelled. The coordinator hands one to every job (the job token); the
//! agent's stages, the routers' races and each model leg take children of
//! it, so a leg's terminal span event and the coordinator's
//! `task_cancelled` event name the same reason (barge-in, shutdown,
//! deadline, hedge lost, reply ended).
//!
//! # Invariants
//! 1. The reason is recorded *before* the token is cancelled, so whoever
//!    observes the cancel reads the reason it was cancelled for — never a
//!    default that a later write would contradict.
//! 2. The first cause wins: once the token is cancelled (by a reason of its
//!    own, or by its parent), a later `cancel(reason)` changes nothing.
//! 3. A child with no reason of its own reads its parent's once the parent
//!    is cancelled; a signal over a bare token (cancelled without a reason,
//!    e.g. the session's root token at shutdown) reads its default.

use super::CancelReason;
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// A cancellation token with the reason it was cancelled for. Cheap to clone
/// (clones share the token and the reason).
#[derive(Clone, Debug)]
pub struct CancelSignal {
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
    default_reason: CancelReason,
    parent: Option<Arc<CancelSignal>>,
}

impl CancelSignal {
    /// A signal over `token`; a cancel of the token (or a parent of it)
    /// without a recorded reason reads as `default_reason` (invariant 3).
    pub fn new(token: CancellationToken, default_reason: CancelReason) -> Self {
        Self {
            token,
            reason: Arc::new(OnceLock::new()),
            default_reason,
            parent: None,
        }
    }

    /// A child: cancelled with this signal (reading its reason), and
    /// cancellable on its own without touching this one.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            reason: Arc::new(OnceLock::new()),
            default_reason: self.default_reason,
            parent: Some(Arc::new(self.clone())),
        }
    }

    /// Cancels with `reason` (invariants 1 and 2).
    pub fn cancel(&self, reason: CancelReason) {
        if !self.token.is_cancelled() {
            // Holds invariant 1: the reason before the cancel.
            let _ = self.reason.set(reason);
        }
        self.token.cancel();
    }

    /// The token (for `select!` elsewhere, and for stages that take a bare
    /// token; cancelling it directly reads as the default reason).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The reason, once cancelled (invariant 3).
    pub fn reason(&self) -> CancelReason {
        match (self.reason.get(), &self.parent) {
            (Some(r), _) => *r,
            (None, Some(p)) if p.is_cancelled() => p.reason(),
            (None, _) => self.default_reason,
        }
    }

    /// Waits for the cancel and returns its reason.
    pub async fn cancelled(&self) -> CancelReason {
        self.token.cancelled().await;
        self.reason()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_reads_its_parents_reason_and_its_own_first() {
        let root = CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown);
        let job = root.child();
        let leg = job.child();
        job.cancel(CancelReason::BargeIn);
        assert!(leg.is_cancelled());
        assert_eq!(leg.reason(), CancelReason::BargeIn);
        assert!(!root.is_cancelled());

        let own = root.child();
        own.cancel(CancelReason::HedgeLost);
        root.cancel(CancelReason::Shutdown);
        assert_eq!(own.reason(), CancelReason::HedgeLost);
    }

    #[test]
    fn the_first_cause_wins_and_a_bare_parent_token_reads_the_default() {
        let session = CancellationToken::new();
        let job = CancelSignal::new(session.child_token(), CancelReason::Shutdown);
        let leg = job.child();
        session.cancel();
        // Holds invariant 2: a later reason changes nothing.
        job.cancel(CancelReason::BargeIn);
        assert_eq!(job.reason(), CancelReason::Shutdown);
        assert_eq!(leg.reason(), CancelReason::Shutdown);
    }
}
