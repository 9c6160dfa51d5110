//! The commit gate of one connection: a round's `committed` event reaches
//! the client only once the journal writer reported the round durable
//! (journal invariant 2 of [`super::journal`]).
//!
//! Every round queued for the writer gets a sequence number; the session's
//! `committed` events arrive in the same order as the rounds, so the n-th
//! `committed` event after a round was queued belongs to the n-th queued
//! round. Held events leave in order as their rounds are reported:
//! written → the event is sent; lost → an `error` event from `"journal"`
//! naming the turn is sent instead (a `committed` event always means the
//! turn is kept). A `call_ended` event waits behind held `committed` events.
//! Every other event passes at once (a slow store must not hold back
//! `clear_playback`).
//!
//! # Invariants
//! 1. A `committed` event whose round was queued is sent only after
//!    [`Report::Written`] for that round.
//! 2. Held events leave in the order they arrived.
//! 3. Every held event leaves on its round's report (written or lost):
//!    nothing stays held forever while the writer keeps writer invariant 1.

use crate::frame::{Event, TimedEvent};
use crate::journal::writer::Report;
use std::collections::{BTreeMap, VecDeque};

/// What the gate tells its connection to send.
pub type Out = Vec<String>;

/// One connection's commit gate.
#[derive(Default)]
pub struct CommitGate {
    /// Sequence numbers of queued rounds whose `committed` event has not
    /// been seen yet.
    awaiting_event: VecDeque<u64>,
    /// Events held, with the round they wait for (`None`: wait for the ones
    /// before only).
    held: VecDeque<(Option<u64>, String)>,
    /// Rounds reported: `Ok` written, `Err(message)` lost.
    done: BTreeMap<u64, Result<(), String>>,
}

impl CommitGate {
    /// Rounds just queued for the writer, in order.
    pub fn queued(&mut self, seqs: &[u64]) {
        self.awaiting_event.extend(seqs.iter().copied());
    }

    /// Routes one session event (as JSON) to `out` or holds it.
    pub fn event(&mut self, event: &TimedEvent, json: String, out: &mut Out) {
        match &event.event {
            Event::Committed { .. } => match self.awaiting_event.pop_front() {
                Some(seq) => {
                    self.held.push_back((Some(seq), json));
                    self.release(out);
                }
                None => out.push(json),
            },
            Event::CallEnded { .. } if !self.held.is_empty() => self.held.push_back((None, json)),
            e => {
                if let Event::Error { source, .. } = e {
                    super::metrics::observe_error(source);
                }
                out.push(json);
            }
        }
    }

    /// Applies a writer report; `t_ms` stamps the error events it may add.
    pub fn report(&mut self, report: &Report, t_ms: u64, out: &mut Out) {
        match report {
            Report::Written { seq, .. } => {
                self.done.insert(*seq, Ok(()));
            }
            Report::Lost { seq, idx, error } => {
                self.done.insert(
                    *seq,
                    Err(format!(
                        "{error}; turn {} was not saved and is lost",
                        idx + 1
                    )),
                );
            }
            Report::Retrying { idx, error, .. } => {
                super::metrics::observe_error("journal");
                out.push(error_json(
                    t_ms,
                    format!(
                        "{error}; turn {} not saved yet, retrying (the conversation goes on)",
                        idx + 1
                    ),
                ));
            }
            Report::LeaseLost => {}
        }
        self.release_at(t_ms, out);
    }

    /// Whether nothing is held or awaited.
    pub fn is_clear(&self) -> bool {
        self.held.is_empty() && self.awaiting_event.is_empty()
    }

    fn release(&mut self, out: &mut Out) {
        self.release_at(0, out);
    }

    /// Sends the held events whose rounds are done, in order (invariants
    /// 1, 2).
    fn release_at(&mut self, t_ms: u64, out: &mut Out) {
        while let Some((seq, _)) = self.held.front() {
            let outcome = match seq {
                Some(s) => match self.done.remove(s) {
                    Some(outcome) => outcome,
                    None => break,
                },
                None => Ok(()),
            };
            let Some((_, json)) = self.held.pop_front() else {
                break;
            };
            match outcome {
                Ok(()) => out.push(json),
                Err(message) => {
                    super::metrics::observe_error("journal");
                    out.push(error_json(t_ms, message));
                }
            }
        }
        // Reports for rounds whose event has not come yet stay in `done`.
    }
}

fn error_json(t_ms: u64, message: String) -> String {
    serde_json::to_string(&TimedEvent {
        t_ms,
        event: Event::Error {
            source: "journal".into(),
            message,
        },
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(epoch: u64) -> TimedEvent {
        TimedEvent {
            t_ms: 0,
            event: Event::Committed {
                epoch,
                user: String::new(),
                assistant: "a".into(),
                interrupted: false,
            },
        }
    }

    fn state() -> TimedEvent {
        TimedEvent {
            t_ms: 0,
            event: Event::State {
                state: "listening".into(),
            },
        }
    }

    #[test]
    fn committed_waits_for_its_write_and_others_pass() {
        let mut g = CommitGate::default();
        let mut out = Out::new();
        g.queued(&[0, 1]);
        g.event(&committed(1), "c1".into(), &mut out);
        g.event(&state(), "s".into(), &mut out);
        g.event(&committed(2), "c2".into(), &mut out);
        let ended = TimedEvent {
            t_ms: 0,
            event: Event::CallEnded { epoch: 2 },
        };
        g.event(&ended, "end".into(), &mut out);
        assert_eq!(out, vec!["s"]);
        // The second round's write finishes first: nothing leaves before c1.
        g.report(&Report::Written { seq: 1, idx: 1 }, 5, &mut out);
        assert_eq!(out, vec!["s"]);
        g.report(&Report::Written { seq: 0, idx: 0 }, 5, &mut out);
        assert_eq!(out, vec!["s", "c1", "c2", "end"]);
        assert!(g.is_clear());
    }

    #[test]
    fn a_lost_turn_sends_an_error_instead_of_committed() {
        let mut g = CommitGate::default();
        let mut out = Out::new();
        g.queued(&[0]);
        g.report(
            &Report::Retrying {
                seq: 0,
                idx: 3,
                error: "down".into(),
            },
            1,
            &mut out,
        );
        g.event(&committed(1), "c1".into(), &mut out);
        g.report(
            &Report::Lost {
                seq: 0,
                idx: 3,
                error: "down".into(),
            },
            2,
            &mut out,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].contains("retrying") && out[0].contains("turn 4"));
        assert!(out[1].contains("lost") && !out.iter().any(|m| m == "c1"));
        assert!(g.is_clear());
    }

    #[test]
    fn unjournaled_committed_events_pass_at_once() {
        let mut g = CommitGate::default();
        let mut out = Out::new();
        g.event(&committed(1), "c1".into(), &mut out);
        assert_eq!(out, vec!["c1"]);
    }
}
