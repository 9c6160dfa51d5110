//! A fault-injection point for crash tests (issue 18): with
//! `COLLOQUY_JOURNAL_FAULT=abort-in-write:N` in the environment, the process
//! aborts (SIGABRT, no unwinding, no cleanup) inside the N-th turn write's
//! transaction, after the turn row was inserted and before the commit. A
//! test then checks that the journal holds no trace of that turn and every
//! turn committed before it.
//!
//! # Invariants
//! 1. Without the variable this is one relaxed atomic load per write; the
//!    variable is read once per process.
//! 2. The variable names only a write count: nothing else about the
//!    journal's behaviour changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable read.
pub const FAULT_ENV: &str = "COLLOQUY_JOURNAL_FAULT";

static ABORT_AT: OnceLock<Option<u64>> = OnceLock::new();
static WRITES: AtomicU64 = AtomicU64::new(0);

fn abort_at() -> Option<u64> {
    *ABORT_AT.get_or_init(|| {
        let v = std::env::var(FAULT_ENV).ok()?;
        let n = v.strip_prefix("abort-in-write:")?.parse().ok()?;
        (n > 0).then_some(n)
    })
}

/// Called inside each turn write's transaction (before its commit).
pub fn inside_write() {
    let Some(at) = abort_at() else {
        return;
    };
    let n = WRITES.fetch_add(1, Ordering::Relaxed) + 1;
    if n == at {
        eprintln!("{FAULT_ENV}: aborting inside turn write {n}");
        std::process::abort();
    }
}
