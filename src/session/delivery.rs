//! Delivery of task results on the session's timeline (session invariant 1):
//! results wait until `dispatched + cost` (`Pacing::Charged`) or are taken
//! on arrival, and replay drivers wait (`settle`) while a running task, or
//! the end-of-turn judge's job, could still report something due.

use super::{Pacing, Session};
use crate::agent::{CostMode, TaskMessage};
use crate::frame::samples_to_ms;
use crossbeam_channel::RecvTimeoutError;
use std::time::{Duration, Instant};

impl Session {
    /// With `Pacing::Charged`: whether a running task could still report a
    /// result due at or before `now_ms`, so the driver must wait for it
    /// before advancing time (holds invariant 1).
    pub fn must_wait(&self, now_ms: u64) -> bool {
        if self.pacing != Pacing::Charged {
            return false;
        }
        if self.warm.must_wait(now_ms, self.cost_mode) {
            return true;
        }
        self.coordinator
            .running()
            .any(|(task, dispatched, started)| {
                if self.finished.contains(&task) {
                    return false;
                }
                let reported = self.last_cost.get(&task).copied().unwrap_or_default();
                let bound = match self.cost_mode {
                    CostMode::Wall => reported.max(started.elapsed()),
                    CostMode::Zero => reported,
                };
                dispatched + bound.as_millis() as u64 <= now_ms
            })
    }

    /// Blocks up to `timeout` for one task result (used by replay drivers
    /// while [`Session::must_wait`]). Returns false on timeout.
    pub fn wait_for_result(&mut self, timeout: Duration) -> bool {
        match self.results.recv_timeout(timeout) {
            Ok(msg) => {
                self.accept(msg);
                true
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Drives `must_wait`/`wait_for_result` until nothing due is missing
    /// (the end-of-turn judge's job included).
    pub fn settle(&mut self, now_ms: u64) {
        self.receive();
        let started = Instant::now();
        loop {
            if self.must_wait(now_ms) {
                self.wait_for_result(Duration::from_millis(5));
            } else if self.hold.must_wait(now_ms) {
                if let Ok(r) = self.hold.results().recv_timeout(Duration::from_millis(5)) {
                    self.hold.accept_waited(r, now_ms);
                }
            } else {
                break;
            }
            // A task that never reports is a bug in its agent; don't hang forever.
            if started.elapsed() > Duration::from_secs(600) {
                break;
            }
        }
    }

    pub(super) fn receive(&mut self) {
        while let Ok(msg) = self.results.try_recv() {
            self.accept(msg);
        }
    }

    pub(super) fn accept(&mut self, msg: TaskMessage) {
        if matches!(
            msg.payload,
            crate::agent::Payload::Done | crate::agent::Payload::Failed(_)
        ) {
            self.finished.insert(msg.task);
        }
        let due = match self.pacing {
            Pacing::Charged => {
                self.last_cost.insert(msg.task, msg.cost);
                (msg.dispatched_ms + msg.cost.as_millis() as u64).max(msg.dispatched_ms)
            }
            Pacing::Arrival => samples_to_ms(self.now),
        };
        self.arrival_seq += 1;
        self.waiting.push((due, self.arrival_seq, msg));
    }

    pub(super) fn deliver_due(&mut self) {
        let now_ms = samples_to_ms(self.now);
        if let Some(event) = self.warm.poll(now_ms, self.cost_mode, self.pacing) {
            self.push_event(now_ms, event);
        }
        if self.waiting.is_empty() {
            return;
        }
        let now_ms = samples_to_ms(self.now);
        self.waiting.sort_by_key(|(due, seq, _)| (*due, *seq));
        while self
            .waiting
            .first()
            .is_some_and(|(due, _, _)| *due <= now_ms)
        {
            let (_, _, msg) = self.waiting.remove(0);
            if matches!(
                msg.payload,
                crate::agent::Payload::Done | crate::agent::Payload::Failed(_)
            ) {
                self.last_cost.remove(&msg.task);
                self.finished.remove(&msg.task);
            }
            self.coordinator.on_message(msg, now_ms);
        }
        self.collect_events();
    }
}
