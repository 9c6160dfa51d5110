//! The journal writer of `colloquy serve`: connections hand committed rounds
//! (and session ends, lease releases) to a few writer tasks over bounded
//! queues, and hear back when each turn is durable. No journal call runs on
//! a connection's task, so a slow or stopped store never delays audio.
//!
//! A session always goes to the same lane (by a hash of its id), so its
//! operations run in the order they were queued: its turns in index order,
//! then its summary, then the release of its lease.
//!
//! # Invariants
//! 1. Every queued turn ends in exactly one [`Report::Written`] or
//!    [`Report::Lost`] to its connection (plus a [`Report::Retrying`] at its
//!    first failure): a turn is never dropped silently. A lost turn is also
//!    logged at error level.
//! 2. A failed write is retried with backoff ([`RetryPolicy`]) until it
//!    succeeds or its budget is spent; a fenced write (`LeaseLost`) is not
//!    retried.
//! 3. Queues are bounded; a full queue refuses at once ([`Writer::submit`]
//!    returns the operation), so callers never block.
//! 4. Operations of one session run in queue order (one lane per session).

use super::{JournalError, Store};
use crate::turn::CommittedRound;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// How failed writes are retried (invariant 2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Wait before the first retry; doubled each time up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up (report the turn lost) after trying this long.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// What the writer tells a connection about one of its turns.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// The turn is durable.
    Written { seq: u64, idx: i64 },
    /// The first attempt failed; the turn is being retried.
    Retrying { seq: u64, idx: i64, error: String },
    /// The turn could not be written and will not be.
    Lost { seq: u64, idx: i64, error: String },
    /// The session's lease was lost (another instance took the session, or
    /// it expired and was taken): the connection must end.
    LeaseLost,
}

/// One queued operation.
pub enum Op {
    /// Write a committed round at `idx` (fenced by the lease token).
    Append {
        session: String,
        idx: i64,
        round: Box<CommittedRound>,
        fence: Option<i64>,
        seq: u64,
        reply: mpsc::UnboundedSender<Report>,
    },
    /// Add a run's quarantined count to the session.
    Finish { session: String, quarantined: u64 },
    /// Give up the session's lease (after its writes, invariant 4).
    Release { session: String, token: i64 },
}

impl Op {
    fn session(&self) -> &str {
        match self {
            Op::Append { session, .. }
            | Op::Finish { session, .. }
            | Op::Release { session, .. } => session,
        }
    }
}

/// The writer lanes of one server.
pub struct Writer {
    /// Emptied by [`Writer::close`].
    lanes: std::sync::Mutex<Vec<mpsc::Sender<Op>>>,
    tracker: TaskTracker,
    capacity: usize,
    location: String,
}

impl Writer {
    /// Starts `lanes` writer tasks on `store`, each with a queue of
    /// `capacity` operations.
    pub fn start(store: Arc<dyn Store>, lanes: usize, capacity: usize, retry: RetryPolicy) -> Self {
        let tracker = TaskTracker::new();
        let senders = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                tracker.spawn(run_lane(store.clone(), rx, retry));
                tx
            })
            .collect();
        tracker.close();
        Self {
            lanes: std::sync::Mutex::new(senders),
            tracker,
            capacity,
            location: store.location().to_string(),
        }
    }

    /// Queues `op` on its session's lane; a full (or closed) queue refuses
    /// it at once with the error to report (invariant 3).
    pub fn submit(&self, op: Op) -> Result<(), JournalError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        op.session().hash(&mut h);
        let full = |_op: Op| JournalError::QueueFull {
            location: self.location.clone(),
            capacity: self.capacity,
        };
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if lanes.is_empty() {
            return Err(full(op));
        }
        let lane = &lanes[(h.finish() % lanes.len() as u64) as usize];
        lane.try_send(op).map_err(|e| {
            let op = match e {
                mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op) => op,
            };
            full(op)
        })
    }

    /// Operations queued and not yet done, all lanes.
    pub fn pending(&self) -> usize {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| l.max_capacity() - l.capacity())
            .sum()
    }

    /// Closes the queues and waits up to `wait` for what is queued to be
    /// written (shutdown); returns whether everything was.
    pub async fn close(&self, wait: Duration) -> bool {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        tokio::time::timeout(wait, self.tracker.wait())
            .await
            .is_ok()
    }
}

async fn run_lane(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Op>, retry: RetryPolicy) {
    while let Some(op) = rx.recv().await {
        match op {
            Op::Append {
                session,
                idx,
                round,
                fence,
                seq,
                reply,
            } => {
                let started = Instant::now();
                let result = with_retry(
                    &retry,
                    || store.append_turn(&session, idx, &round, fence),
                    |e| {
                        let _ = reply.send(Report::Retrying {
                            seq,
                            idx,
                            error: e.to_string(),
                        });
                    },
                )
                .await;
                let backend = store.backend();
                match result {
                    Ok(()) => {
                        metrics::histogram!("colloquy_journal_write_seconds", "backend" => backend)
                            .record(started.elapsed().as_secs_f64());
                        let _ = reply.send(Report::Written { seq, idx });
                    }
                    Err(e) => {
                        metrics::counter!("colloquy_journal_turns_lost_total", "backend" => backend)
                            .increment(1);
                        // Holds invariant 1: never silent, even if the
                        // connection is gone.
                        tracing::error!(session = %session, turn = idx, error = %e, "journal: committed turn lost");
                        let _ = reply.send(Report::Lost {
                            seq,
                            idx,
                            error: e.to_string(),
                        });
                    }
                }
            }
            Op::Finish {
                session,
                quarantined,
            } => {
                let r = with_retry(
                    &retry,
                    || store.finish_session(&session, quarantined),
                    |_| {},
                )
                .await;
                if let Err(e) = r {
                    tracing::warn!(session = %session, error = %e, "journal: could not record the session summary");
                }
            }
            Op::Release { session, token } => {
                // A lease not released expires by itself: a short budget.
                let short = RetryPolicy {
                    give_up_after: retry.give_up_after.min(Duration::from_secs(5)),
                    ..retry
                };
                let r = with_retry(&short, || store.release_lease(&session, token), |_| {}).await;
                if let Err(e) = r {
                    tracing::warn!(session = %session, error = %e, "journal: lease not released (it expires by itself)");
                }
            }
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the budget is spent
/// (invariant 2); `first_failure` sees the first error.
async fn with_retry<F, Fut>(
    retry: &RetryPolicy,
    mut attempt: F,
    first_failure: impl FnOnce(&JournalError),
) -> Result<(), JournalError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), JournalError>>,
{
    let deadline = Instant::now() + retry.give_up_after;
    let mut backoff = retry.first_backoff;
    let mut first_failure = Some(first_failure);
    loop {
        let e = match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        metrics::counter!("colloquy_journal_errors_total").increment(1);
        if !e.retryable() || Instant::now() + backoff > deadline {
            return Err(e);
        }
        if let Some(f) = first_failure.take() {
            f(&e);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(retry.max_backoff);
    }
}
