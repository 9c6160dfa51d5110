//! Crash safety of the journal (issue 10): the real binary replays a ~12 s
//! conversation at wall-clock pace into one journal and is killed with
//! SIGKILL at seeded pseudo-random points. After each kill the journal must
//! open, pass `integrity_check`, hold every turn whose `committed` event
//! reached the event log, hold no half turn, and still hold every turn of the
//! earlier (killed) sessions.
//!
//! # Invariants
//! 1. The kill schedule is deterministic (seeded xorshift) and bounded: 8 runs,
//!    each killed after 1.5–9 s, so the test takes under ~75 s.
//! 2. Only the child processes this test starts are killed, by their handle.

mod common;
use colloquy::agent::parrot::PARROT_TEXT;
use colloquy::frame::{Event, TimedEvent};
use colloquy::journal::Journal;
use colloquy::llm::{ChatMessage, Role};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const KILLS: usize = 8;
const SEED: u64 = 0x10c0_11e9_u64;

/// Deterministic kill delays in 1.5–9 s (invariant 1).
fn schedule() -> Vec<Duration> {
    let mut x = SEED;
    (0..KILLS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(1500 + x % 7501)
        })
        .collect()
}

/// The `committed` events of a (possibly cut) JSONL log: every complete line
/// must parse; only the last line may be cut by the kill.
fn committed_in_log(path: &Path) -> Vec<(u64, String, bool)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let complete = if text.ends_with('\n') {
        lines.len()
    } else {
        lines.len().saturating_sub(1)
    };
    lines
        .iter()
        .take(complete)
        .map(|l| {
            serde_json::from_str::<TimedEvent>(l)
                .unwrap_or_else(|e| panic!("event log line does not parse ({e}): {l}"))
        })
        .filter_map(|e| match e.event {
            Event::Committed {
                epoch,
                assistant,
                interrupted,
                ..
            } => Some((epoch, assistant, interrupted)),
            _ => None,
        })
        .collect()
}

/// A raw turn row: session, index, user, assistant, messages JSON.
type Row = (String, i64, Option<String>, Option<String>, String);

/// No half turn: every row has its user and assistant fields and a messages
/// JSON with the user's message and the bot's reply.
fn check_rows(path: &Path) -> usize {
    let conn = rusqlite::Connection::open(path).expect("raw open");
    let mut stmt = conn
        .prepare("SELECT session_id, idx, user_text, assistant_text, messages FROM turns")
        .expect("prepare");
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for (session, idx, user, assistant, messages) in &rows {
        let at = format!("session {session} turn {idx}");
        assert!(user.is_some(), "{at}: no user field");
        assert_eq!(assistant.as_deref(), Some(PARROT_TEXT), "{at}");
        let msgs: Vec<ChatMessage> = serde_json::from_str(messages)
            .unwrap_or_else(|e| panic!("{at}: messages JSON does not parse: {e}"));
        assert!(msgs.iter().any(|m| m.role == Role::User), "{at}: {msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m.role == Role::Assistant && m.content == PARROT_TEXT),
            "{at}: {msgs:?}"
        );
    }
    rows.len()
}

#[test]
fn killed_replays_leave_every_logged_turn_in_an_intact_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.wav");
    let (timeline, _) = concat(&[
        silence_ms(500, 1),
        load16k("speech/cards-001.wav"),
        silence_ms(2500, 2),
        load16k("speech/cards-003.wav"),
        silence_ms(2500, 3),
        load16k("speech/cards-004.wav"),
        silence_ms(2500, 4),
    ]);
    write_wav16k(&input, &timeline);
    let journal = dir.path().join("journal.sqlite");

    let mut kills = 0usize;
    let mut checked = 0usize;
    // Turns each earlier session held when it was checked: none may vanish.
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    for (run, delay) in schedule().into_iter().enumerate() {
        let events = dir.path().join(format!("events-{run}.jsonl"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_colloquy"))
            .arg("replay")
            .arg(&input)
            .args(["--agent", "parrot", "--pace", "real", "--tail-secs", "5"])
            .arg("--journal")
            .arg(&journal)
            .arg("--events")
            .arg(&events)
            .env_remove("COLLOQUY_JOURNAL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start colloquy replay");
        std::thread::sleep(delay);
        // Invariant 2: our own child, by handle (SIGKILL).
        let still_running = child.try_wait().expect("try_wait").is_none();
        child.kill().expect("kill -9 the replay");
        child.wait().expect("reap the replay");
        assert!(
            still_running,
            "run {run}: replay ended before its kill at {delay:?}"
        );
        kills += 1;

        let j = Journal::open(&journal)
            .unwrap_or_else(|e| panic!("run {run}: journal does not reopen: {e}"));
        assert_eq!(j.integrity_check().expect("integrity_check"), "ok");
        let sessions = j.sessions().expect("sessions");
        let new: Vec<_> = sessions
            .iter()
            .filter(|s| !held.contains_key(&s.id))
            .collect();
        assert!(new.len() <= 1, "run {run}: {} new sessions", new.len());
        let logged = committed_in_log(&events);
        let turns = match new.first() {
            Some(s) => j.turns(&s.id).expect("turns"),
            None => Vec::new(),
        };
        assert!(
            turns.len() >= logged.len(),
            "run {run} (killed at {delay:?}): log has {} committed turns, journal {}",
            logged.len(),
            turns.len()
        );
        // The journal is written first, so it may be ahead by the one round
        // whose events had not been flushed yet, never more.
        assert!(
            turns.len() <= logged.len() + 1,
            "run {run}: journal {} turns, log {}",
            turns.len(),
            logged.len()
        );
        for (i, (epoch, assistant, interrupted)) in logged.iter().enumerate() {
            let t = &turns[i];
            assert_eq!(
                (t.epoch as u64, &t.assistant, t.interrupted),
                (*epoch, assistant, *interrupted),
                "run {run}: turn {i}"
            );
        }
        checked += logged.len();
        // Earlier sessions keep every turn they had.
        for (id, n) in &held {
            assert_eq!(j.turns(id).expect("old turns").len(), *n, "session {id}");
        }
        if let Some(s) = new.first() {
            held.insert(s.id.clone(), turns.len());
        }
        let rows = check_rows(&journal);
        assert_eq!(rows, held.values().sum::<usize>());
    }
    // The CLI lists the killed sessions with the turns they kept.
    let out = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["sessions", "--json", "--journal"])
        .arg(&journal)
        .env_remove("COLLOQUY_JOURNAL")
        .output()
        .expect("colloquy sessions");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("sessions --json parses");
    let listed: BTreeMap<String, usize> = listed
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["turns"].as_u64().unwrap_or(u64::MAX) as usize,
            )
        })
        .collect();
    assert_eq!(listed, held);
    let sessions: BTreeSet<_> = held.keys().collect();
    println!(
        "crash test: {kills} kills, {checked} committed turns checked, {} sessions, {} journal turns",
        sessions.len(),
        held.values().sum::<usize>()
    );
    assert_eq!(kills, KILLS);
    assert!(checked >= 4, "only {checked} committed turns were checked");
}

/// Issue 18: kills that land inside a write. The replay aborts (SIGABRT, no
/// cleanup) inside the N-th turn's transaction, after the turn row was
/// inserted and before the commit (`COLLOQUY_JOURNAL_FAULT`). The journal
/// must reopen intact, without that turn (no half turn), with every turn
/// before it, and every turn whose `committed` event was logged.
#[test]
fn an_abort_inside_a_turn_write_leaves_no_half_turn_and_every_committed_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.wav");
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
    for mode in ["full", "normal"] {
        let journal = dir.path().join(format!("journal-{mode}.sqlite"));
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        for n in 1..=3usize {
            let events = dir.path().join(format!("events-{mode}-{n}.jsonl"));
            let out = Command::new(env!("CARGO_BIN_EXE_colloquy"))
                .arg("replay")
                .arg(&input)
                .args(["--agent", "parrot", "--pace", "instant"])
                .args(["--journal-sync", mode])
                .arg("--journal")
                .arg(&journal)
                .arg("--events")
                .arg(&events)
                .env_remove("COLLOQUY_JOURNAL")
                .env(
                    colloquy::journal::fault::FAULT_ENV,
                    format!("abort-in-write:{n}"),
                )
                .stdin(Stdio::null())
                .output()
                .expect("run colloquy replay");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains("aborting inside turn write"),
                "{mode} write {n}: the replay was not aborted inside the write: {stderr}"
            );
            let j = Journal::open(&journal)
                .unwrap_or_else(|e| panic!("{mode} write {n}: journal does not reopen: {e}"));
            assert_eq!(j.integrity_check().expect("integrity_check"), "ok");
            let sessions = j.sessions().expect("sessions");
            let new: Vec<_> = sessions
                .iter()
                .filter(|s| !held.contains_key(&s.id))
                .collect();
            assert_eq!(new.len(), 1, "{mode} write {n}: one new session");
            let turns = j.turns(&new[0].id).expect("turns");
            assert_eq!(
                turns.len(),
                n - 1,
                "{mode} write {n}: the aborted turn is absent, the ones before it present"
            );
            let logged = committed_in_log(&events);
            assert!(
                logged.len() <= turns.len(),
                "{mode} write {n}: {} committed events logged, {} turns kept",
                logged.len(),
                turns.len()
            );
            for (i, (epoch, assistant, interrupted)) in logged.iter().enumerate() {
                let t = &turns[i];
                assert_eq!(
                    (t.epoch as u64, &t.assistant, t.interrupted),
                    (*epoch, assistant, *interrupted),
                    "{mode} write {n}: turn {i}"
                );
            }
            held.insert(new[0].id.clone(), turns.len());
            assert_eq!(check_rows(&journal), held.values().sum::<usize>());
        }
        println!(
            "crash test ({mode}): aborted inside writes 1..=3; {} turns kept, no half turn",
            held.values().sum::<usize>()
        );
    }
}
