//! The hold of a speculative turn past the endpoint (`--turn smart`): the
//! session side of the end-of-turn judge (`crate::eot`).
//!
//! At a pause the coordinator opens a held turn (turn invariant 8); here the
//! judge starts: the audio model runs as a job on the utterance so far, and
//! the words are judged once the held turn's transcript arrives. Then:
//! - at the endpoint, a verdict of *incomplete* (or one still pending)
//!   defers the end of turn: nothing plays or commits, capture goes on;
//!   the user going on drops the held turn as today and the whole utterance
//!   is answered at its end; silence up to `backstop_ms` releases it;
//! - before the endpoint, a strong *complete* ends the turn at once;
//! - *unsure* and *complete* release at the endpoint, as today.
//!
//! # Invariants
//! 1. The hold only delays or advances the end of turn the coordinator sees
//!    (`on_user_stopped`); it never opens, commits or speaks a turn.
//! 2. A deferred end of turn is released no later than `backstop_ms` of
//!    silence after the last voiced frame (and at end of input).
//! 3. Results of the audio job are placed on the timeline like task results
//!    (`dispatched + cost` with `Pacing::Charged`, on arrival otherwise), so
//!    replays are deterministic; a result of a job that is no longer current
//!    is dropped.
//! 4. In `TurnMode::Silence` nothing here acts: the session behaves exactly
//!    as without the judge.

use super::Pacing;
use crate::agent::CostMode;
use crate::eot::job::{self, JudgeResult, TurnModel};
use crate::eot::words::{self, Words};
use crate::eot::{combine, strong, EotConfig, TurnMode, Verdict};
use crate::flows::Flow;
use crate::frame::{Event, TimedEvent};
use crate::turn::Coordinator;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the session must do after [`Hold::tick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    None,
    /// Forward the deferred end of turn (speech from `start` to `end`).
    Release {
        start: u64,
        end: u64,
    },
    /// End the turn now, before the endpoint (strong complete).
    EndNow,
}

struct Job {
    id: u64,
    cancel: CancellationToken,
    dispatched_ms: u64,
    started: Instant,
    /// Due time (ms) and result, once received.
    result: Option<(u64, Result<f32, String>)>,
}

/// The judging of the current pause.
struct Judging {
    job: Option<Job>,
    audio: Option<f32>,
    words: Option<Words>,
    /// The verdict last reported (an event is emitted when it changes).
    reported: Option<Verdict>,
}

struct Deferred {
    start: u64,
    end: u64,
    end_ms: u64,
}

/// The judge's state in one session.
pub(crate) struct Hold {
    config: EotConfig,
    model: Option<Arc<dyn TurnModel>>,
    flow: Option<Arc<Flow>>,
    transcribes: bool,
    cost_mode: CostMode,
    pacing: Pacing,
    tx: Sender<JudgeResult>,
    rx: Receiver<JudgeResult>,
    next_id: u64,
    judging: Option<Judging>,
    deferred: Option<Deferred>,
    /// Start of the utterance whose end was deferred, kept while the user
    /// goes on (the whole utterance is answered).
    origin: Option<u64>,
    events: Vec<TimedEvent>,
}

impl Hold {
    pub(crate) fn new(
        config: EotConfig,
        model: Option<Arc<dyn TurnModel>>,
        flow: Option<Arc<Flow>>,
        transcribes: bool,
        cost_mode: CostMode,
        pacing: Pacing,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            config,
            model,
            flow,
            transcribes,
            cost_mode,
            pacing,
            tx,
            rx,
            next_id: 1,
            judging: None,
            deferred: None,
            origin: None,
            events: Vec::new(),
        }
    }

    fn smart(&self) -> bool {
        self.config.mode == TurnMode::Smart
    }

    /// The start of the utterance being answered (`start` unless the user
    /// went on after a deferred end of turn).
    pub(crate) fn origin(&self, start: u64) -> u64 {
        self.origin.unwrap_or(start)
    }

    /// A held turn was opened at a pause: start judging it. `audio` is the
    /// utterance up to now (the pause's silence included, as Smart Turn was
    /// trained); it is only built when the model will run.
    pub(crate) fn on_pause(&mut self, audio: impl FnOnce() -> Vec<i16>, now_ms: u64) {
        if !self.smart() {
            return;
        }
        self.drop_judging();
        let job = self.model.clone().map(|model| {
            let id = self.next_id;
            self.next_id += 1;
            let cancel = CancellationToken::new();
            job::spawn(
                model,
                id,
                audio(),
                cancel.clone(),
                self.tx.clone(),
                self.cost_mode,
            );
            Job {
                id,
                cancel,
                dispatched_ms: now_ms,
                started: Instant::now(),
                result: None,
            }
        });
        self.judging = Some(Judging {
            job,
            audio: None,
            words: None,
            reported: None,
        });
    }

    /// The user went on (after a pause, or after a deferred end of turn):
    /// the judging of that pause is over. Returns whether an end of turn was
    /// deferred (the caller then drops the held turn).
    pub(crate) fn on_user_went_on(&mut self) -> bool {
        self.drop_judging();
        self.deferred.take().is_some()
    }

    fn drop_judging(&mut self) {
        if let Some(j) = self.judging.take() {
            if let Some(job) = j.job {
                job.cancel.cancel();
            }
        }
    }

    /// The endpoint passed: whether to defer it (invariant 1: only with a
    /// held turn being judged).
    pub(crate) fn defer_stop(
        &mut self,
        coordinator: &Coordinator,
        start: u64,
        end: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> bool {
        if !self.smart() || !coordinator.is_held() || self.judging.is_none() {
            self.finish_turn();
            return false;
        }
        self.update(coordinator, now_ms);
        let (verdict, pending) = self.verdict();
        if verdict == Verdict::Incomplete || pending {
            self.report(now_ms, verdict, "hold");
            self.deferred = Some(Deferred { start, end, end_ms });
            self.origin = Some(start);
            return true;
        }
        self.report(now_ms, verdict, "release");
        self.finish_turn();
        false
    }

    /// The turn ended (released, or never held): forget its judging.
    pub(crate) fn finish_turn(&mut self) {
        self.drop_judging();
        self.deferred = None;
        self.origin = None;
    }

    /// End of input: a deferred end of turn is released at once
    /// (invariant 2); returns its speech span.
    pub(crate) fn release_now(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        let d = self.deferred.take()?;
        let (verdict, _) = self.verdict();
        self.report_always(now_ms, verdict, "release");
        self.finish_turn();
        Some((d.start, d.end))
    }

    /// Once per frame: takes due results and decides (invariants 2 and 3).
    pub(crate) fn tick(
        &mut self,
        coordinator: &Coordinator,
        in_pause: bool,
        now_ms: u64,
    ) -> Action {
        if self.judging.is_none() {
            return Action::None;
        }
        self.update(coordinator, now_ms);
        let (verdict, pending) = self.verdict();
        if let Some(d) = &self.deferred {
            let (start, end) = (d.start, d.end);
            let backstop = now_ms.saturating_sub(d.end_ms) >= self.config.backstop_ms;
            let gone = !coordinator.is_held();
            let decided = !pending && verdict != Verdict::Incomplete;
            if backstop || gone || decided {
                let action = if decided || gone {
                    "release"
                } else {
                    "backstop"
                };
                self.report_always(now_ms, verdict, action);
                self.finish_turn();
                return Action::Release { start, end };
            }
            return Action::None;
        }
        let words_known =
            !self.transcribes || self.judging.as_ref().is_some_and(|j| j.words.is_some());
        if in_pause && words_known && coordinator.is_held() {
            let j = self.judging.as_ref().expect("checked above");
            if strong(&self.config, j.words.as_ref(), j.audio) {
                self.report_always(now_ms, verdict, "early");
                return Action::EndNow;
            }
        }
        Action::None
    }

    /// Takes job results and the held turn's transcript.
    fn update(&mut self, coordinator: &Coordinator, now_ms: u64) {
        while let Ok(r) = self.rx.try_recv() {
            self.accept(r, now_ms);
        }
        let Some(j) = self.judging.as_mut() else {
            return;
        };
        if let Some(job) = &mut j.job {
            if let Some((due, result)) = &job.result {
                if *due <= now_ms {
                    match result {
                        Ok(p) => j.audio = Some(*p),
                        Err(e) => {
                            tracing::warn!(error = %e, "the end-of-turn model failed at this pause; judging by the words");
                        }
                    }
                    j.job = None;
                }
            }
        }
        if j.words.is_none() {
            if let Some(text) = coordinator.held_transcript() {
                j.words = Some(words::judge_in_flow(
                    text,
                    self.flow.as_deref(),
                    coordinator.history(),
                ));
            }
        }
    }

    fn accept(&mut self, r: JudgeResult, now_ms: u64) {
        let pacing = self.pacing;
        let Some(job) = self
            .judging
            .as_mut()
            .and_then(|j| j.job.as_mut())
            .filter(|job| job.id == r.id)
        else {
            return; // a job no longer current (invariant 3)
        };
        let due = match pacing {
            Pacing::Charged => job.dispatched_ms + r.cost.as_millis() as u64,
            Pacing::Arrival => now_ms,
        };
        job.result = Some((due, r.probability));
    }

    /// The verdict so far and whether a signal is still to come.
    fn verdict(&self) -> (Verdict, bool) {
        let Some(j) = &self.judging else {
            return (Verdict::Unsure, false);
        };
        let pending = j.job.is_some() || (self.transcribes && j.words.is_none());
        (combine(&self.config, j.words.as_ref(), j.audio), pending)
    }

    fn report(&mut self, now_ms: u64, verdict: Verdict, action: &str) {
        if self.judging.as_ref().and_then(|j| j.reported) == Some(verdict) && action == "hold" {
            return;
        }
        self.report_always(now_ms, verdict, action);
    }

    fn report_always(&mut self, now_ms: u64, verdict: Verdict, action: &str) {
        let (words, audio) = match self.judging.as_mut() {
            Some(j) => {
                j.reported = Some(verdict);
                (j.words.as_ref().map(Words::describe), j.audio)
            }
            None => (None, None),
        };
        self.events.push(TimedEvent {
            t_ms: now_ms,
            event: Event::TurnJudged {
                verdict: verdict.name().to_string(),
                action: action.to_string(),
                words,
                audio,
            },
        });
    }

    /// With `Pacing::Charged`: whether the running audio job could report a
    /// result due at or before `now_ms` (the driver waits for it).
    pub(crate) fn must_wait(&mut self, now_ms: u64) -> bool {
        if self.pacing != Pacing::Charged {
            return false;
        }
        while let Ok(r) = self.rx.try_recv() {
            self.accept(r, now_ms);
        }
        let Some(job) = self.judging.as_ref().and_then(|j| j.job.as_ref()) else {
            return false;
        };
        if job.result.is_some() {
            return false;
        }
        let bound = match self.cost_mode {
            CostMode::Wall => job.started.elapsed(),
            CostMode::Zero => std::time::Duration::ZERO,
        };
        job.dispatched_ms + bound.as_millis() as u64 <= now_ms
    }

    /// The channel the driver waits on while [`Hold::must_wait`].
    pub(crate) fn results(&self) -> &Receiver<JudgeResult> {
        &self.rx
    }

    /// Takes a result the driver received while waiting.
    pub(crate) fn accept_waited(&mut self, r: JudgeResult, now_ms: u64) {
        self.accept(r, now_ms);
    }

    pub(crate) fn drain_events(&mut self) -> std::vec::Drain<'_, TimedEvent> {
        self.events.drain(..)
    }
}
