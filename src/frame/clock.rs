//! Time sources. The pipeline never reads the wall clock directly: it asks a
//! [`Clock`], so replay can run on a [`VirtualClock`] faster than real time.
//!
//! # Invariants
//! 1. `now()` never goes backwards on either clock.
//! 2. A [`VirtualClock`] only moves when its driver calls `advance_to`/`advance`;
//!    clones share one time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic time source measured from the session's start.
pub trait Clock: Send + Sync {
    /// Time since the session started.
    fn now(&self) -> Duration;

    /// Time since the session started, in whole milliseconds.
    fn now_ms(&self) -> u64 {
        self.now().as_millis() as u64
    }
}

/// The wall clock, anchored at construction.
#[derive(Clone, Debug)]
pub struct RealClock {
    origin: Instant,
}

impl RealClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for RealClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock moved by hand (microsecond resolution); clones share the time.
#[derive(Clone, Debug, Default)]
pub struct VirtualClock {
    micros: Arc<AtomicU64>,
}

impl VirtualClock {
    /// A virtual clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward to `t`; a `t` in the past is ignored (invariant 1).
    pub fn advance_to(&self, t: Duration) {
        self.micros
            .fetch_max(t.as_micros() as u64, Ordering::AcqRel);
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.micros
            .fetch_add(d.as_micros() as u64, Ordering::AcqRel);
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_only_moves_forward_and_is_shared() {
        let a = VirtualClock::new();
        let b = a.clone();
        a.advance(Duration::from_millis(20));
        assert_eq!(b.now_ms(), 20);
        b.advance_to(Duration::from_millis(10));
        assert_eq!(a.now_ms(), 20, "advance_to into the past is ignored");
        b.advance_to(Duration::from_millis(45));
        assert_eq!(a.now_ms(), 45);
    }

    #[test]
    fn real_clock_is_monotonic() {
        let c = RealClock::new();
        let t1 = c.now();
        let t2 = c.now();
        assert!(t2 >= t1);
    }
}
