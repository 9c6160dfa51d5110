//! The lifecycle of one leg: pending → running (attempt 1, 2, …) →
//! completed | failed | cancelled, as a closed enum whose only way forward is
//! [`LegState::apply`].
//!
//! # Invariants
//! 1. The terminal states (`Completed`, `Failed`, `Cancelled`) accept no
//!    transition: a finished leg cannot be restarted, retried or re-ended.
//! 2. A retry only moves `Running{n}` to `Running{n+1}`; a leg that never ran
//!    cannot retry, and a cancelled one never runs again.
//! 3. The cancel reason is kept as given (barge-in, shutdown and deadline stay
//!    distinct).

use crate::frame::CancelReason;
use crate::llm::ErrorClass;
use serde::{Deserialize, Serialize};

/// Where a leg is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LegState {
    Pending,
    Running { attempt: u32 },
    Completed { attempt: u32 },
    Failed { attempt: u32, class: ErrorClass },
    Cancelled { reason: CancelReason },
}

/// What can happen to a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The first attempt starts.
    Start,
    /// A failed attempt is retried.
    Retry,
    Complete,
    Fail(ErrorClass),
    Cancel(CancelReason),
}

/// A transition the lifecycle does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid leg transition {transition:?} from {from:?} (a bug in the leg runner)")]
pub struct InvalidTransition {
    pub from: LegState,
    pub transition: Transition,
}

impl LegState {
    /// Whether the leg has ended (invariant 1).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            LegState::Completed { .. } | LegState::Failed { .. } | LegState::Cancelled { .. }
        )
    }

    /// The next state, or why the transition is invalid.
    pub fn apply(self, t: Transition) -> Result<LegState, InvalidTransition> {
        use LegState::*;
        let next = match (self, t) {
            (Pending, Transition::Start) => Running { attempt: 1 },
            // Holds invariant 2.
            (Running { attempt }, Transition::Retry) => Running {
                attempt: attempt + 1,
            },
            (Running { attempt }, Transition::Complete) => Completed { attempt },
            (Running { attempt }, Transition::Fail(class)) => Failed { attempt, class },
            // Holds invariant 3: the reason is kept as given.
            (Pending | Running { .. }, Transition::Cancel(reason)) => Cancelled { reason },
            (from, transition) => return Err(InvalidTransition { from, transition }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Transition; 7] = [
        Transition::Start,
        Transition::Retry,
        Transition::Complete,
        Transition::Fail(ErrorClass::Server),
        Transition::Cancel(CancelReason::BargeIn),
        Transition::Cancel(CancelReason::Shutdown),
        Transition::Cancel(CancelReason::Deadline),
    ];

    #[test]
    fn the_happy_path_and_a_retry_are_valid() {
        let s = LegState::Pending.apply(Transition::Start).unwrap();
        assert_eq!(s, LegState::Running { attempt: 1 });
        let s = s.apply(Transition::Retry).unwrap();
        assert_eq!(s, LegState::Running { attempt: 2 });
        assert_eq!(
            s.apply(Transition::Complete).unwrap(),
            LegState::Completed { attempt: 2 }
        );
    }

    #[test]
    fn terminal_states_accept_no_transition() {
        let terminals = [
            LegState::Completed { attempt: 1 },
            LegState::Failed {
                attempt: 1,
                class: ErrorClass::Client,
            },
            LegState::Cancelled {
                reason: CancelReason::Shutdown,
            },
        ];
        for s in terminals {
            assert!(s.is_terminal());
            for t in ALL {
                assert!(s.apply(t).is_err(), "{s:?} accepted {t:?}");
            }
        }
    }

    #[test]
    fn pending_can_only_start_or_be_cancelled() {
        for t in ALL {
            let ok = LegState::Pending.apply(t).is_ok();
            let expected = matches!(t, Transition::Start | Transition::Cancel(_));
            assert_eq!(ok, expected, "{t:?}");
        }
        assert!(LegState::Running { attempt: 1 }
            .apply(Transition::Start)
            .is_err());
    }

    #[test]
    fn cancel_reasons_stay_distinct() {
        for reason in [
            CancelReason::BargeIn,
            CancelReason::Shutdown,
            CancelReason::Deadline,
        ] {
            let s = LegState::Running { attempt: 3 }
                .apply(Transition::Cancel(reason))
                .unwrap();
            assert_eq!(s, LegState::Cancelled { reason });
        }
    }
}
