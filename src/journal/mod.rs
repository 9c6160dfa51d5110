//! The conversation journal: sessions, committed turns, the flows'
//! key-value store, leases and shared router telemetry.
//!
//! Two backends behind one async trait ([`store::Store`]), chosen by the
//! location's scheme ([`location`]): SQLite (a path or `sqlite:PATH`, the
//! embedded default; [`Journal`] here, driven from one owner thread by
//! [`sqlite_store`]) and PostgreSQL (`postgres://`, [`postgres`]). Each keeps
//! its own SQL and versioned migrations, applied at open. `colloquy serve`
//! writes through [`writer`] (a bounded queue off the audio and tokio worker
//! threads); the file and device transports write a SQLite [`Journal`]
//! directly ([`session`]).
//!
//! # Invariants
//! 1. Only committed rounds are written, each in one transaction at commit
//!    time: after a crash the journal holds every turn whose commit returned,
//!    and never half a turn. SQLite commits with `synchronous=FULL` unless
//!    told otherwise ([`set_synchronous`]), so a returned commit also
//!    survives power loss; PostgreSQL commits are durable by its own default
//!    (`synchronous_commit=on`).
//! 2. A journal that cannot be opened, is read-only, locked or corrupt is
//!    refused at start with an error naming the file and the cause; a write
//!    that fails mid-session returns an error the caller reports as an event
//!    while the conversation goes on (nothing already written is touched).
//! 3. The journal never stores API keys or configuration secrets: only the
//!    conversation, timings and model names. A PostgreSQL password comes
//!    only from the environment and no message names it (locations are
//!    shown redacted, [`location::redact`]).
//! 4. The `kv` table (the flows' key-value store) is written only from the
//!    `kv_set` results of a committed round, in that round's transaction:
//!    a value is there exactly when the turn that stored it is.
//! 5. An unknown scheme (`mysql://…`) is an error, never a file name.

pub mod fault;
pub mod location;
pub mod postgres;
pub mod read;
pub mod session;
pub mod sqlite_store;
pub mod store;
pub mod trace;
pub mod writer;

pub use location::JournalLocation;
pub use session::SessionJournal;
pub use store::Store;
pub use trace::{percentile, render_trace};

use crate::llm::{ChatMessage, Role};
use crate::turn::{CommittedRound, TurnTiming};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: cannot open: {cause} (fix: check the path and its permissions, or pass --journal PATH)")]
    Open { path: PathBuf, cause: String },
    #[error("journal {path}: is not a usable database: {cause} (fix: move the file away; a new journal will be created)")]
    Corrupt { path: PathBuf, cause: String },
    #[error("journal {path}: cannot write: {cause}")]
    Write { path: PathBuf, cause: String },
    #[error("journal {path}: no session {id} (see `colloquy sessions`)")]
    NoSession { path: PathBuf, id: String },
    #[error("journal {location}: {cause}")]
    Location { location: String, cause: String },
    #[error("journal {location}: unreachable: {cause} (fix: check that the database runs and the URL; the write is retried)")]
    Unreachable { location: String, cause: String },
    #[error("journal {location}: session {session}: the lease was lost (another instance holds the session); not written")]
    LeaseLost { location: String, session: String },
    #[error("journal {location}: the write queue is full ({capacity} pending); not written")]
    QueueFull { location: String, capacity: usize },
}

impl JournalError {
    /// Whether retrying the same write can succeed (a fenced or refused
    /// write cannot).
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            JournalError::LeaseLost { .. }
                | JournalError::NoSession { .. }
                | JournalError::QueueFull { .. }
                | JournalError::Location { .. }
        )
    }
}

/// Page cache of a journal connection, KiB. The journal mostly appends and
/// reads little back (a resumed session's history, `trace`, `status`): a
/// small cache costs no write speed and bounds the memory a long-running
/// server's connection holds (it fills as the file grows, then stays).
pub const CACHE_KIB: u32 = 1024;

/// Bytes SQLite holds on the heap in this process (every connection's page
/// cache, prepared statements, schema): `serve` reports it in `/stats` so a
/// soak can tell SQLite's bounded cache from the sessions' own memory.
pub fn sqlite_heap_bytes() -> i64 {
    // SAFETY: sqlite3_memory_used takes no arguments and only reads SQLite's
    // global allocation counter (thread-safe in the bundled build).
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
}

/// SQLite's `synchronous` setting for the journal (invariant 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync at every commit: a committed turn survives power loss.
    #[default]
    Full,
    /// fsync at WAL checkpoints only: a committed turn survives a killed
    /// process, not power loss.
    Normal,
}

impl std::str::FromStr for Synchronous {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            other => Err(format!(
                "journal synchronous mode {other:?} is not one of full, normal"
            )),
        }
    }
}

static SYNCHRONOUS: std::sync::OnceLock<Synchronous> = std::sync::OnceLock::new();

/// Sets the process's SQLite `synchronous` mode (from `--journal-sync`);
/// the first call wins. Unset: FULL.
pub fn set_synchronous(mode: Synchronous) {
    let _ = SYNCHRONOUS.set(mode);
}

/// The SQLite `synchronous` mode journals open with.
pub fn synchronous() -> Synchronous {
    SYNCHRONOUS.get().copied().unwrap_or_default()
}

/// A session as listed by `colloquy sessions`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SessionSummary {
    pub id: String,
    pub started_at: i64,
    pub agent: String,
    pub source: String,
    pub turns: i64,
    pub interruptions: i64,
    pub quarantined: i64,
}

/// One committed turn as stored.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TurnRecord {
    pub index: i64,
    pub epoch: i64,
    pub user: String,
    pub assistant: String,
    pub interrupted: bool,
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub timing: TurnTiming,
    pub committed_ms: i64,
}

impl TurnRecord {
    /// Voice-to-voice latency: end of speech → first audio (ms).
    pub fn voice_to_voice_ms(&self) -> Option<u64> {
        Some(
            self.timing
                .first_audio_ms?
                .saturating_sub(self.timing.end_of_speech_ms?),
        )
    }
}

/// The journal file.
pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

/// Versioned migrations (`PRAGMA user_version` is the number applied);
/// version 1 is the schema of journals written before versioning, so its
/// statements are `IF NOT EXISTS`.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS leases (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS telemetry (
    instance_id TEXT PRIMARY KEY,
    saved_ms INTEGER NOT NULL,
    snapshot TEXT NOT NULL
);
";

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    agent TEXT NOT NULL,
    source TEXT NOT NULL,
    quarantined INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    idx INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    user_text TEXT NOT NULL,
    assistant_text TEXT NOT NULL,
    interrupted INTEGER NOT NULL,
    model TEXT,
    messages TEXT NOT NULL,
    end_of_speech_ms INTEGER,
    stt_ms INTEGER,
    first_token_ms INTEGER,
    first_audio_ms INTEGER,
    committed_ms INTEGER NOT NULL,
    written_at INTEGER NOT NULL,
    PRIMARY KEY (session_id, idx)
);
CREATE TABLE IF NOT EXISTS kv (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    turn_idx INTEGER NOT NULL,
    PRIMARY KEY (session_id, key)
);
";

impl Journal {
    /// The journal path: `COLLOQUY_JOURNAL`, else the user's data directory.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("COLLOQUY_JOURNAL") {
            return PathBuf::from(p);
        }
        dirs::data_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("colloquy")
            .join("journal.sqlite")
    }

    /// Opens (creating if needed) and checks the journal (invariant 2);
    /// `path` may be `sqlite:PATH`; a URL of another scheme is refused
    /// (invariant 5).
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        Self::open_with(path, synchronous())
    }

    /// [`Journal::open`] with an explicit SQLite `synchronous` mode.
    pub fn open_with(path: &Path, sync: Synchronous) -> Result<Self, JournalError> {
        let path = &match JournalLocation::parse_path(path)? {
            JournalLocation::Sqlite(p) => p,
            other => {
                return Err(JournalError::Location {
                    location: other.to_string(),
                    cause: "`replay` and `run` keep a SQLite journal on this machine; a PostgreSQL journal is for `serve` (and is read by `sessions`, `trace` and `status`) (fix: give a file path or sqlite:PATH)".into(),
                })
            }
        };
        let open_err = |cause: String| JournalError::Open {
            path: path.to_path_buf(),
            cause,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_millis(500))
            .map_err(|e| open_err(e.to_string()))?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            // A locked journal is not a corrupt one (invariant 2).
            .map_err(|e| classify_open(path, e))?;
        if check != "ok" {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                cause: check,
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| classify_open(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "journal is not in WAL mode");
        }
        let sync = match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA cache_size=-{CACHE_KIB};"
        ))
        .map_err(|e| classify_open(path, e))?;
        migrate(&conn).map_err(|e| classify_open(path, e))?;
        // Refuse a journal we could not write to at start, not mid-session.
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|e| classify_open(path, e))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_err(&self, e: rusqlite::Error) -> JournalError {
        JournalError::Write {
            path: self.path.clone(),
            cause: e.to_string(),
        }
    }

    /// Starts a new session (or resumes `resume`); returns its id.
    pub fn start_session(
        &mut self,
        resume: Option<&str>,
        agent: &str,
        source: &str,
    ) -> Result<String, JournalError> {
        if let Some(id) = resume {
            return if self.session_exists(id)? {
                Ok(id.to_string())
            } else {
                Err(JournalError::NoSession {
                    path: self.path.clone(),
                    id: id.to_string(),
                })
            };
        }
        let id = format!("{:016x}", rand::random::<u64>());
        self.conn
            .execute(
                "INSERT INTO sessions (id, started_at, agent, source) VALUES (?1, ?2, ?3, ?4)",
                params![id, unix_now(), agent, source],
            )
            .map_err(|e| self.write_err(e))?;
        Ok(id)
    }

    fn session_exists(&self, id: &str) -> Result<bool, JournalError> {
        self.conn
            .query_row("SELECT 1 FROM sessions WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.write_err(e))
    }

    /// Writes one committed round in one transaction at the next index
    /// (invariant 1); returns its index.
    pub fn append_turn(
        &mut self,
        session: &str,
        round: &CommittedRound,
    ) -> Result<i64, JournalError> {
        self.write_turn(session, None, round, None)
    }

    /// Writes one committed round in one transaction (invariant 1) at `idx`
    /// (the next index when `None`). With `idx`, a turn already there is
    /// left as it is (a retried write is idempotent). With `fence`, the
    /// write happens only while `session`'s lease carries that token
    /// (`LeaseLost` otherwise, nothing written).
    pub fn write_turn(
        &mut self,
        session: &str,
        idx: Option<i64>,
        round: &CommittedRound,
        fence: Option<i64>,
    ) -> Result<i64, JournalError> {
        let row = TurnRow::of(round);
        let path = self.path.clone();
        let err = |e: rusqlite::Error| JournalError::Write {
            path: path.clone(),
            cause: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        if let Some(token) = fence {
            let held = tx
                .query_row(
                    "SELECT 1 FROM leases WHERE session_id = ?1 AND token = ?2",
                    params![session, token],
                    |_| Ok(()),
                )
                .optional()
                .map_err(err)?;
            if held.is_none() {
                return Err(JournalError::LeaseLost {
                    location: self.path.display().to_string(),
                    session: session.to_string(),
                });
            }
        }
        let idx: i64 = match idx {
            Some(i) => i,
            None => tx
                .query_row(
                    "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE session_id = ?1",
                    [session],
                    |r| r.get(0),
                )
                .map_err(err)?,
        };
        let t = round.timing;
        let inserted = tx
            .execute(
                "INSERT INTO turns (session_id, idx, epoch, user_text, assistant_text, interrupted, model,
                messages, end_of_speech_ms, stt_ms, first_token_ms, first_audio_ms, committed_ms, written_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (session_id, idx) DO NOTHING",
                params![
                    session,
                    idx,
                    round.epoch as i64,
                    row.user,
                    row.assistant,
                    round.interrupted,
                    round.model,
                    row.messages,
                    t.end_of_speech_ms.map(|v| v as i64),
                    t.stt_ms.map(|v| v as i64),
                    t.first_token_ms.map(|v| v as i64),
                    t.first_audio_ms.map(|v| v as i64),
                    round.committed_ms as i64,
                    unix_now(),
                ],
            )
            .map_err(err)?;
        // Inside the transaction, before the kv rows and the commit: a
        // crash here must leave no trace of this turn (issue 18).
        fault::inside_write();
        if inserted == 1 {
            // What the round's `kv_set` calls stored, in the same
            // transaction (invariant 4).
            for (key, value) in &row.kv {
                tx.execute(
                    "INSERT INTO kv (session_id, key, value, turn_idx) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (session_id, key) DO UPDATE SET value = ?3, turn_idx = ?4",
                    params![session, key, value, idx],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(idx)
    }

    /// Adds a run's quarantined-result count to the session's (at the end
    /// of each run: a resumed session sums them).
    pub fn finish_session(&mut self, session: &str, quarantined: u64) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE sessions SET quarantined = quarantined + ?2 WHERE id = ?1",
                params![session, quarantined as i64],
            )
            .map_err(|e| self.write_err(e))?;
        Ok(())
    }

    /// All sessions, newest first.
    pub fn sessions(&self) -> Result<Vec<SessionSummary>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.id, s.started_at, s.agent, s.source, s.quarantined,
                        COUNT(t.idx), COALESCE(SUM(t.interrupted), 0)
                 FROM sessions s LEFT JOIN turns t ON t.session_id = s.id
                 GROUP BY s.id ORDER BY s.started_at DESC, s.rowid DESC",
            )
            .map_err(|e| self.write_err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SessionSummary {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    agent: r.get(2)?,
                    source: r.get(3)?,
                    quarantined: r.get(4)?,
                    turns: r.get(5)?,
                    interruptions: r.get(6)?,
                })
            })
            .map_err(|e| self.write_err(e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.write_err(e))
    }

    /// The turns of `session`, in order.
    pub fn turns(&self, session: &str) -> Result<Vec<TurnRecord>, JournalError> {
        if !self.session_exists(session)? {
            return Err(JournalError::NoSession {
                path: self.path.clone(),
                id: session.to_string(),
            });
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT idx, epoch, user_text, assistant_text, interrupted, model, messages,
                        end_of_speech_ms, stt_ms, first_token_ms, first_audio_ms, committed_ms
                 FROM turns WHERE session_id = ?1 ORDER BY idx",
            )
            .map_err(|e| self.write_err(e))?;
        let rows = stmt
            .query_map([session], |r| {
                let messages: String = r.get(6)?;
                let opt = |v: Option<i64>| v.map(|x| x.max(0) as u64);
                Ok(TurnRecord {
                    index: r.get(0)?,
                    epoch: r.get(1)?,
                    user: r.get(2)?,
                    assistant: r.get(3)?,
                    interrupted: r.get(4)?,
                    model: r.get(5)?,
                    messages: serde_json::from_str(&messages).unwrap_or_default(),
                    timing: TurnTiming {
                        end_of_speech_ms: opt(r.get(7)?),
                        stt_ms: opt(r.get(8)?),
                        first_token_ms: opt(r.get(9)?),
                        first_audio_ms: opt(r.get(10)?),
                    },
                    committed_ms: r.get(11)?,
                })
            })
            .map_err(|e| self.write_err(e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.write_err(e))
    }

    /// The key-value store of `session` (what its committed `kv_set` calls
    /// stored), by key.
    pub fn kv(
        &self,
        session: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM kv WHERE session_id = ?1 ORDER BY key")
            .map_err(|e| self.write_err(e))?;
        let rows = stmt
            .query_map([session], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.write_err(e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.write_err(e))
    }

    /// The committed history of `session` (to resume it).
    pub fn history(&self, session: &str) -> Result<Vec<ChatMessage>, JournalError> {
        Ok(self
            .turns(session)?
            .into_iter()
            .flat_map(|t| t.messages)
            .collect())
    }

    /// `PRAGMA integrity_check` result ("ok" when healthy).
    pub fn integrity_check(&self) -> Result<String, JournalError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.write_err(e))
    }
}

/// Applies the migrations past `user_version`, each in one transaction.
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql} PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

fn classify_open(path: &Path, e: rusqlite::Error) -> JournalError {
    let cause = e.to_string();
    if cause.contains("not a database") || cause.contains("malformed") {
        JournalError::Corrupt {
            path: path.to_path_buf(),
            cause,
        }
    } else {
        JournalError::Open {
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// A committed round as the `turns` and `kv` rows store it (shared by both
/// backends).
pub(crate) struct TurnRow {
    pub user: String,
    pub assistant: String,
    pub messages: String,
    pub kv: Vec<(String, String)>,
}

impl TurnRow {
    pub fn of(round: &CommittedRound) -> Self {
        let user = first_text(&round.messages, Role::User);
        let assistant = round
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let messages = serde_json::to_string(&round.messages).unwrap_or_else(|_| "[]".into());
        let kv = round
            .messages
            .iter()
            .filter(|m| m.role == Role::Tool)
            .flat_map(|m| crate::tools::kv::stored(&m.content).unwrap_or_default())
            .collect();
        Self {
            user,
            assistant,
            messages,
            kv,
        }
    }
}

fn first_text(messages: &[ChatMessage], role: Role) -> String {
    messages
        .iter()
        .find(|m| m.role == role)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(user: &str, assistant: &str, interrupted: bool) -> CommittedRound {
        let mut a = ChatMessage::assistant(assistant);
        a.interrupted = interrupted;
        CommittedRound {
            epoch: 1,
            messages: vec![ChatMessage::user(user), a],
            interrupted,
            committed_ms: 1234,
            timing: TurnTiming {
                end_of_speech_ms: Some(1000),
                stt_ms: Some(1300),
                first_token_ms: Some(1500),
                first_audio_ms: Some(1700),
            },
            model: Some("embedded/smollm2".into()),
        }
    }

    #[test]
    fn the_page_cache_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(&dir.path().join("j.sqlite")).expect("open");
        let kib: i64 = j
            .conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(kib, -(CACHE_KIB as i64));
        assert!(sqlite_heap_bytes() > 0);
    }

    #[test]
    fn turns_round_trip_and_history_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.sqlite");
        let mut j = Journal::open(&path).expect("open");
        let id = j.start_session(None, "voice", "test").expect("session");
        j.append_turn(&id, &round("hi", "hello", false))
            .expect("turn");
        j.append_turn(&id, &round("capital of france", "Paris is", true))
            .expect("turn");
        drop(j);
        let j = Journal::open(&path).expect("reopen");
        let turns = j.turns(&id).expect("turns");
        assert_eq!(turns.len(), 2);
        assert_eq!(turns[1].assistant, "Paris is");
        assert!(turns[1].interrupted);
        assert_eq!(turns[0].voice_to_voice_ms(), Some(700));
        assert_eq!(j.history(&id).expect("history").len(), 4);
        let s = j.sessions().expect("sessions");
        assert_eq!((s[0].turns, s[0].interruptions), (2, 1));
        assert_eq!(j.integrity_check().expect("check"), "ok");
        let trace = render_trace(&turns);
        assert!(trace.contains("first audio"), "{trace}");
        assert!(matches!(
            j.turns("nope"),
            Err(JournalError::NoSession { .. })
        ));
    }

    #[test]
    fn kv_set_results_of_committed_rounds_fill_the_kv_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(&dir.path().join("j.sqlite")).expect("open");
        let id = j.start_session(None, "voice", "test").expect("session");
        let with_tool = |args: &str| {
            let mut r = round("yes", "Booked.", false);
            let mut call = ChatMessage::assistant("");
            call.tool_calls = vec![crate::llm::ToolCall {
                id: "c1".into(),
                name: "confirm_booking".into(),
                arguments: args.into(),
            }];
            let result = crate::tools::kv::set(
                serde_json::from_str::<serde_json::Value>(args)
                    .expect("json")
                    .as_object()
                    .expect("object"),
            )
            .expect("kv_set");
            r.messages
                .splice(1..1, [call, ChatMessage::tool_result("c1", result)]);
            r
        };
        j.append_turn(&id, &with_tool(r#"{"name":"Ada","party_size":2}"#))
            .expect("turn");
        j.append_turn(&id, &round("no wait", "OK.", false))
            .expect("turn");
        j.append_turn(&id, &with_tool(r#"{"party_size":6}"#))
            .expect("turn");
        let kv = j.kv(&id).expect("kv");
        assert_eq!(kv.len(), 2);
        assert_eq!(kv["name"], "Ada");
        assert_eq!(kv["party_size"], "6", "a later kv_set replaces the value");
        let trace = render_trace(&j.turns(&id).expect("turns"));
        assert!(
            trace.contains(
                r#"tool:      confirm_booking({"party_size":6}) → {"stored":{"party_size":"6"}}"#
            ),
            "{trace}"
        );
    }

    #[test]
    fn a_corrupt_file_is_refused_with_the_path_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.sqlite");
        std::fs::write(&path, vec![0x42u8; 8192]).expect("write garbage");
        let err = Journal::open(&path).err().expect("refused").to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("not a usable database"), "{err}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[5, 1, 3], 50.0), Some(3));
        assert_eq!(percentile(&[1, 2, 3, 4, 100], 95.0), Some(100));
    }
}
