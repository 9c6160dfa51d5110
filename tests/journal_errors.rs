//! Journal failures (issue 10): a journal that cannot be used is refused at
//! start with an error naming the file, by the library and by `colloquy
//! replay` (non-zero exit, path on stderr); a write that fails mid-session
//! becomes an `error` event from "journal" while the conversation goes on and
//! nothing committed before is lost.
//!
//! Tests run as root in CI, where `chmod 0o555` stops nothing, so "cannot
//! open" is a path under a regular file, and a journal path that is a
//! directory. A mid-session write failure is made deterministic with a SQLite
//! trigger that refuses every turn after the session's first. A full disk is
//! not simulated (it needs a size-limited mount).
//!
//! # Invariants
//! 1. Every failure here is arranged before or at a known point of the run:
//!    no sleeps that hope for an ordering.

mod common;
use colloquy::agent::parrot::{ParrotAgent, PARROT_TEXT};
use colloquy::frame::{Event, TimedEvent};
use colloquy::journal::{Journal, JournalError};
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Three well separated utterances: three parrot rounds, none interrupted.
fn three_turns(dir: &Path) -> PathBuf {
    let input = dir.join("in.wav");
    let (timeline, _) = concat(&[
        silence_ms(500, 1),
        load16k("speech/cards-001.wav"),
        silence_ms(4000, 2),
        load16k("speech/cards-003.wav"),
        silence_ms(4000, 3),
        load16k("speech/cards-004.wav"),
        silence_ms(4000, 4),
    ]);
    write_wav16k(&input, &timeline);
    input
}

/// Runs `colloquy replay` at instant pace; returns (exit code, stderr).
fn cli_replay(input: &Path, journal: &Path, events: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .arg("replay")
        .arg(input)
        .args(["--agent", "parrot", "--pace", "instant"])
        .arg("--journal")
        .arg(journal)
        .arg("--events")
        .arg(events)
        .env_remove("COLLOQUY_JOURNAL")
        .output()
        .expect("run colloquy replay");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Both the library and the CLI refuse `journal` at start, naming it.
fn refused_at_start(dir: &Path, journal: &Path, cause: &str) -> JournalError {
    let err = Journal::open(journal)
        .err()
        .unwrap_or_else(|| panic!("{cause}: journal {} was accepted", journal.display()));
    let msg = err.to_string();
    assert!(
        msg.contains(&journal.display().to_string()),
        "{cause}: {msg}"
    );
    let input = three_turns(dir);
    let (code, stderr) = cli_replay(&input, journal, &dir.join("events.jsonl"));
    assert!(code.is_some_and(|c| c != 0), "{cause}: exit {code:?}");
    assert!(
        stderr.contains(&journal.display().to_string()),
        "{cause}: stderr does not name the journal: {stderr}"
    );
    err
}

#[test]
fn a_journal_under_a_regular_file_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let err = refused_at_start(dir.path(), &file.join("journal.sqlite"), "parent is a file");
    assert!(matches!(err, JournalError::Open { .. }), "{err}");
}

#[test]
fn a_journal_path_that_is_a_directory_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal.sqlite");
    std::fs::create_dir(&journal).expect("mkdir");
    let err = refused_at_start(dir.path(), &journal, "path is a directory");
    assert!(matches!(err, JournalError::Open { .. }), "{err}");
}

#[test]
fn a_corrupt_journal_is_refused_at_start_and_left_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal.sqlite");
    let garbage: Vec<u8> = (0..16_384u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&journal, &garbage).expect("write garbage");
    let err = refused_at_start(dir.path(), &journal, "garbage bytes");
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("not a usable database"), "{err}");
    // Refusing it did not touch it.
    assert_eq!(std::fs::read(&journal).expect("read"), garbage);
}

/// Another connection holds `BEGIN EXCLUSIVE` on a journal in WAL mode.
#[test]
fn a_locked_journal_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal.sqlite");
    drop(Journal::open(&journal).expect("create"));
    let holder = rusqlite::Connection::open(&journal).expect("second connection");
    holder.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let err = refused_at_start(dir.path(), &journal, "locked (WAL)");
    assert!(matches!(err, JournalError::Open { .. }), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    holder.execute_batch("ROLLBACK").expect("unlock");
    Journal::open(&journal).expect("usable once the lock is gone");
}

/// A database not yet in WAL mode, exclusively locked: even reading fails.
/// It is locked, not corrupt, and must not be reported as unusable.
#[test]
fn a_locked_rollback_journal_is_not_called_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal.sqlite");
    let holder = rusqlite::Connection::open(&journal).expect("create");
    holder
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1); BEGIN EXCLUSIVE; INSERT INTO t VALUES (2);")
        .expect("lock");
    let err = refused_at_start(dir.path(), &journal, "locked (rollback)");
    assert!(matches!(err, JournalError::Open { .. }), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    holder.execute_batch("ROLLBACK").expect("unlock");
}

/// Makes every turn after a session's first fail to write (invariant 1).
fn refuse_second_turn(journal: &Path) {
    drop(Journal::open(journal).expect("create"));
    let conn = rusqlite::Connection::open(journal).expect("raw open");
    conn.execute_batch(
        "CREATE TRIGGER refuse_second_turn BEFORE INSERT ON turns
         WHEN (SELECT COUNT(*) FROM turns WHERE session_id = NEW.session_id) >= 1
         BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
    )
    .expect("trigger");
}

fn journal_errors(events: &[TimedEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Error { source, message } if source == "journal" => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_write_failing_mid_session_is_an_error_event_and_the_conversation_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = three_turns(dir.path());
    let journal = dir.path().join("journal.sqlite");
    refuse_second_turn(&journal);
    // An earlier session: its first turn is written, the rest refused.
    let earlier = {
        let mut opts = ReplayOptions::new(&input);
        opts.pace = Pace::Instant;
        opts.journal = Some(journal.clone());
        let report =
            replay(&opts, Arc::new(ParrotAgent), SessionConfig::default()).expect("earlier replay");
        assert_eq!(report.committed.len(), 3);
        report.session_id.expect("earlier session id")
    };

    let mut opts = ReplayOptions::new(&input);
    opts.pace = Pace::Instant;
    opts.journal = Some(journal.clone());
    opts.events = Some(dir.path().join("events.jsonl"));
    opts.out_wav = Some(dir.path().join("out.wav"));
    let report =
        replay(&opts, Arc::new(ParrotAgent), SessionConfig::default()).expect("replay goes on");
    // The conversation went on: all three rounds committed and spoken.
    assert_eq!(report.committed.len(), 3, "events: {:?}", report.events);
    assert!(report
        .committed
        .iter()
        .all(|r| !r.interrupted && r.messages.iter().any(|m| m.content == PARROT_TEXT)));
    // Turns 2 and 3 failed to write: two error events naming the journal.
    let errors = journal_errors(&report.events);
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in &errors {
        assert!(e.contains(&journal.display().to_string()), "{e}");
        assert!(e.contains("simulated write failure"), "{e}");
    }
    // ...and they are in the event log, with the timeline written.
    let log = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events");
    let logged: Vec<TimedEvent> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("event line"))
        .collect();
    assert_eq!(journal_errors(&logged), errors);
    assert_eq!(
        logged
            .iter()
            .filter(|e| e.event.kind() == "committed")
            .count(),
        3
    );
    assert!(dir.path().join("out.wav").exists());
    // Nothing committed before is lost: this session's first turn and the
    // earlier session's turn are still there.
    let j = Journal::open(&journal).expect("reopen");
    assert_eq!(j.integrity_check().expect("check"), "ok");
    let id = report.session_id.expect("session id");
    let turns = j.turns(&id).expect("turns");
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].assistant, PARROT_TEXT);
    assert_eq!(j.turns(&earlier).expect("earlier turns").len(), 1);
}

#[test]
fn the_cli_reports_a_mid_session_write_failure_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = three_turns(dir.path());
    let journal = dir.path().join("journal.sqlite");
    refuse_second_turn(&journal);
    let events = dir.path().join("events.jsonl");
    let (code, stderr) = cli_replay(&input, &journal, &events);
    assert_eq!(code, Some(0), "{stderr}");
    let logged: Vec<TimedEvent> = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event line"))
        .collect();
    assert_eq!(journal_errors(&logged).len(), 2);
    let j = Journal::open(&journal).expect("reopen");
    let s = j.sessions().expect("sessions");
    assert_eq!((s.len(), s[0].turns), (1, 1));
}
