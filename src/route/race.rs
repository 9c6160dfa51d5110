//! The hedged race of one turn over a [`Plan`]: the first candidate starts
//! (with the plan's probe beside it); when it has no first result by the
//! hedge deadline the next starts in parallel; a failure before the first
//! result starts the next at once (fallback). The first result wins; every
//! other running attempt loses the hedge.
//!
//! # Invariants
//! 1. At most two attempts run at once; a hedge or a probe never starts a
//!    candidate in cooldown; a fallback may, once nothing healthy is left.
//! 2. Every started attempt ends exactly one way: it wins, it fails, or it
//!    is cancelled — with `hedge_lost` when another won, with the parent's
//!    reason (barge-in, shutdown, deadline) when the turn was cancelled.
//!    Its [`CancelSignal`] is cancelled *before* its future is dropped, so
//!    the attempt reads the right reason.
//! 3. A loser on this machine is cancelled at once (its CPU is freed); a
//!    hosted loser may run on as a *shadow* until its own first result (at
//!    most `shadow_cap` after its start), so its latency is measured, and is
//!    then cancelled with `hedge_lost`. A shadow's result is never delivered.
//! 4. A result and the hedge timer due at the same instant: the result wins
//!    (polled first), so a hedge never starts after the race was decided.
//! 5. The end lists every started attempt with why and when it started
//!    (route note invariant 2), so each hedge can be reported.

use super::note::{AttemptNote, End, Why};
use super::plan::Plan;
use crate::frame::CancelReason;
use crate::llm::leg::CancelSignal;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How a race may treat each candidate.
#[derive(Clone, Debug, Default)]
pub struct RaceSpec {
    /// Candidates on this machine (never shadowed, invariant 3).
    pub local: Vec<bool>,
    /// Candidates not to start (already tried in this turn).
    pub exclude: Vec<usize>,
    /// How long a hosted loser may run on to be measured (zero: no shadow).
    pub shadow_cap: Duration,
}

/// The end of one attempt that did not win.
#[derive(Debug)]
pub enum Loss<E> {
    /// It failed after `after`.
    Failed {
        index: usize,
        after: Duration,
        error: E,
    },
    /// It had no result when another won, `after` its start (cancelled
    /// `hedge_lost` at once, or left running as a shadow).
    Lost { index: usize, after: Duration },
}

/// One started attempt: its candidate, why it started, and when (from the
/// race's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub index: usize,
    pub why: Why,
    pub at: Duration,
}

/// How a race ended. `starts` lists every started attempt in start order.
#[derive(Debug)]
pub enum RaceEnd<T, E> {
    Won {
        index: usize,
        value: T,
        /// From the winner's start to its result.
        after: Duration,
        /// More than one attempt ran.
        hedged: bool,
        losses: Vec<Loss<E>>,
        starts: Vec<Started>,
    },
    /// Every candidate failed (or none could start).
    Failed {
        losses: Vec<Loss<E>>,
        starts: Vec<Started>,
    },
    /// The turn was cancelled.
    Cancelled {
        reason: CancelReason,
        losses: Vec<Loss<E>>,
        starts: Vec<Started>,
    },
}

impl<T, E> RaceEnd<T, E> {
    /// Every started attempt as a route note's attempt (`keys`: the
    /// candidates' store keys), in start order.
    pub fn attempts(&self, keys: &[String]) -> Vec<AttemptNote> {
        let (starts, losses, winner, cancelled) = match self {
            RaceEnd::Won {
                starts,
                losses,
                index,
                after,
                ..
            } => (starts, losses, Some((*index, *after)), false),
            RaceEnd::Failed { starts, losses } => (starts, losses, None, false),
            RaceEnd::Cancelled { starts, losses, .. } => (starts, losses, None, true),
        };
        let ms = |d: Duration| d.as_millis() as u64;
        starts
            .iter()
            .map(|s| {
                let (end, after) = match winner {
                    Some((w, after)) if w == s.index => (End::Won, after),
                    _ => losses
                        .iter()
                        .find_map(|l| match l {
                            Loss::Failed { index, after, .. } if *index == s.index => {
                                Some((End::Failed, *after))
                            }
                            Loss::Lost { index, after } if *index == s.index => {
                                Some((if cancelled { End::Cancelled } else { End::Lost }, *after))
                            }
                            _ => None,
                        })
                        .unwrap_or((End::Lost, Duration::ZERO)),
                };
                AttemptNote {
                    model: keys.get(s.index).cloned().unwrap_or_default(),
                    why: s.why,
                    start_ms: ms(s.at),
                    end,
                    ms: ms(after),
                }
            })
            .collect()
    }
}

/// A shadow's outcome: its candidate, how long it ran, and whether that is
/// a lower bound (it hit the cap without a result). Not called for a shadow
/// that failed.
pub type ShadowReport = Box<dyn FnOnce(usize, Duration, bool) + Send>;

struct Running {
    index: usize,
    signal: CancelSignal,
    started: Instant,
}

/// Runs the race (all invariants). `start(i, signal)` starts candidate `i`;
/// its future resolves at the first result or the failure. `shadow`
/// receives the measured latency of each shadowed loser.
pub async fn race<T, E, F>(
    plan: &Plan,
    spec: &RaceSpec,
    parent: &CancelSignal,
    mut start: F,
    shadow: impl Fn() -> ShadowReport,
) -> RaceEnd<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnMut(usize, CancelSignal) -> BoxFuture<'static, Result<T, E>>,
{
    let mut queue: VecDeque<usize> = plan
        .order
        .iter()
        .copied()
        .filter(|i| !spec.exclude.contains(i))
        .collect();
    let healthy: Vec<usize> = plan.order[..plan.healthy.min(plan.order.len())].to_vec();
    let mut running: Vec<Running> = Vec::new();
    let mut futures: FuturesUnordered<BoxFuture<'static, (usize, Result<T, E>)>> =
        FuturesUnordered::new();
    let mut losses = Vec::new();
    let mut hedged = false;
    let race_start = Instant::now();
    let mut starts: Vec<Started> = Vec::new();

    let mut launch = |index: usize,
                      why: Why,
                      running: &mut Vec<Running>,
                      futures: &mut FuturesUnordered<_>,
                      starts: &mut Vec<Started>| {
        let signal = parent.child();
        let fut = start(index, signal.clone());
        futures.push(Box::pin(async move { (index, fut.await) }) as BoxFuture<'static, _>);
        let now = Instant::now();
        starts.push(Started {
            index,
            why,
            at: now - race_start,
        });
        running.push(Running {
            index,
            signal,
            started: now,
        });
    };

    let Some(first) = queue.pop_front() else {
        return RaceEnd::Failed { losses, starts };
    };
    launch(first, Why::First, &mut running, &mut futures, &mut starts);
    if let Some(p) = plan
        .probe
        .filter(|p| queue.contains(p) && healthy.contains(p))
    {
        queue.retain(|&i| i != p);
        launch(p, Why::Probe, &mut running, &mut futures, &mut starts);
        hedged = true;
    }
    let hedge_at = plan.hedge_after.map(|d| Instant::now() + d);
    let hedge = tokio::time::sleep_until(hedge_at.unwrap_or_else(Instant::now));
    tokio::pin!(hedge);
    let mut hedge_armed = hedge_at.is_some();

    enum Step<T, E> {
        Cancel(CancelReason),
        Done(usize, Result<T, E>),
        Hedge,
    }
    loop {
        let step = tokio::select! {
            biased;
            reason = parent.cancelled() => Step::Cancel(reason),
            // Holds invariant 4: results before the timer.
            Some((i, r)) = futures.next(), if !futures.is_empty() => Step::Done(i, r),
            _ = &mut hedge, if hedge_armed => Step::Hedge,
        };
        match step {
            Step::Cancel(reason) => {
                // Holds invariant 2: children read the parent's reason.
                for r in running.drain(..) {
                    r.signal.cancel(reason);
                    losses.push(Loss::Lost {
                        index: r.index,
                        after: r.started.elapsed(),
                    });
                }
                return RaceEnd::Cancelled {
                    reason,
                    losses,
                    starts,
                };
            }
            Step::Hedge => {
                hedge_armed = false;
                if running.len() < 2 {
                    // Holds invariant 1: only a healthy one hedges.
                    if let Some(pos) = queue.iter().position(|i| healthy.contains(i)) {
                        if let Some(next) = queue.remove(pos) {
                            launch(next, Why::Hedge, &mut running, &mut futures, &mut starts);
                            hedged = true;
                        }
                    }
                }
            }
            Step::Done(index, Ok(value)) => {
                let Some(pos) = running.iter().position(|r| r.index == index) else {
                    continue;
                };
                let won = running.remove(pos);
                let after = won.started.elapsed();
                let mut shadows = Vec::new();
                for r in running.drain(..) {
                    losses.push(Loss::Lost {
                        index: r.index,
                        after: r.started.elapsed(),
                    });
                    if spec.local.get(r.index).copied().unwrap_or(true) || spec.shadow_cap.is_zero()
                    {
                        // Holds invariants 2 and 3: cancelled before dropped.
                        r.signal.cancel(CancelReason::HedgeLost);
                    } else {
                        shadows.push(r);
                    }
                }
                if !shadows.is_empty() {
                    let cap = spec.shadow_cap;
                    let rest = std::mem::take(&mut futures);
                    let report = shadow();
                    tokio::spawn(run_shadows(rest, shadows, cap, report));
                }
                return RaceEnd::Won {
                    index,
                    value,
                    after,
                    hedged,
                    losses,
                    starts,
                };
            }
            Step::Done(index, Err(error)) => {
                let Some(pos) = running.iter().position(|r| r.index == index) else {
                    continue;
                };
                let r = running.remove(pos);
                losses.push(Loss::Failed {
                    index,
                    after: r.started.elapsed(),
                    error,
                });
                // Fallback: the next candidate starts at once (invariant 1).
                if running.len() < 2 {
                    if let Some(next) = queue.pop_front() {
                        launch(next, Why::Fallback, &mut running, &mut futures, &mut starts);
                        if !running.is_empty() && running.len() > 1 {
                            hedged = true;
                        }
                        if hedge_at.is_some() && running.len() == 1 {
                            // The new first gets its own hedge deadline.
                            let d = plan.hedge_after.unwrap_or_default();
                            hedge.as_mut().reset(Instant::now() + d);
                            hedge_armed = true;
                        }
                    }
                }
                if running.is_empty() {
                    return RaceEnd::Failed { losses, starts };
                }
            }
        }
    }
}

/// Drives shadowed losers to their first result or the cap, then cancels
/// them `hedge_lost` (invariant 3).
async fn run_shadows<T, E>(
    mut futures: FuturesUnordered<BoxFuture<'static, (usize, Result<T, E>)>>,
    mut shadows: Vec<Running>,
    cap: Duration,
    report: ShadowReport,
) {
    // The cap counts from the shadow's own start.
    let first_start = shadows
        .iter()
        .map(|s| s.started)
        .min()
        .unwrap_or_else(Instant::now);
    let until = tokio::time::sleep_until(first_start + cap);
    tokio::pin!(until);
    let mut report = Some(report);
    while !shadows.is_empty() {
        tokio::select! {
            biased;
            Some((i, r)) = futures.next(), if !futures.is_empty() => {
                if let Some(pos) = shadows.iter().position(|s| s.index == i) {
                    let s = shadows.remove(pos);
                    s.signal.cancel(CancelReason::HedgeLost);
                    if r.is_ok() {
                        if let Some(f) = report.take() {
                            f(i, s.started.elapsed(), false);
                        }
                    }
                }
            }
            _ = &mut until => break,
            else => break,
        }
    }
    for s in shadows {
        s.signal.cancel(CancelReason::HedgeLost);
        if let Some(f) = report.take() {
            f(s.index, s.started.elapsed(), true);
        }
    }
}
