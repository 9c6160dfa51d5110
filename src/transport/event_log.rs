//! The JSONL event log of `replay` and `run`: one [`TimedEvent`] a line, in
//! the order the session emitted them.
//!
//! # Invariants
//! 1. Every batch written is flushed before `write` returns, so a reader
//!    (`tail -f`, a test) sees events as they happen and a crash loses at
//!    most the batch being written.
//! 2. An event that cannot be serialised is written as an empty line rather
//!    than stopping the log (it cannot happen for the event types we emit).

use crate::frame::TimedEvent;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// An open event log.
pub struct EventLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventLog {
    /// Creates (truncates) the log at `path`.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(File::create(path)?),
        })
    }

    /// Where the log is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `events` and flushes (invariant 1).
    ///
    /// # Errors
    /// When writing fails (disk full, file removed from a read-only mount).
    pub fn write(&mut self, events: &[TimedEvent]) -> std::io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        for e in events {
            let line = serde_json::to_string(e).unwrap_or_default();
            writeln!(self.out, "{line}")?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Event;

    #[test]
    fn writes_one_event_a_line_and_flushes_each_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.jsonl");
        let mut log = EventLog::create(&path).expect("create");
        let e = |t_ms| TimedEvent {
            t_ms,
            event: Event::TurnOpened {
                epoch: 1,
                greeting: false,
            },
        };
        log.write(&[e(20), e(40)]).expect("write");
        // Readable before the log is dropped.
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.starts_with(r#"{"t_ms":20,"type":"turn_opened","epoch":1}"#),
            "{text}"
        );
        assert!(EventLog::create(&dir.path().join("no/such/dir/e.jsonl")).is_err());
    }
}
