//! The PostgreSQL backend of [`Store`] (tokio-postgres with a deadpool
//! pool): what every `colloquy serve` instance of a fleet shares. Its own
//! SQL and versioned migrations ([`MIGRATIONS`], recorded in
//! `colloquy_migrations`), applied at open under an advisory transaction
//! lock so instances starting together apply each once.
//!
//! # Invariants
//! 1. The password comes only from the environment (`PGPASSWORD`, or the
//!    variable named by `--journal-password-env`); messages show the URL
//!    redacted (journal invariant 3).
//! 2. Each turn is one transaction: the fence check (`SELECT … FOR UPDATE`
//!    on the lease row), the turn, its `kv` rows, commit (journal
//!    invariants 1 and 4, store invariant 1).
//! 3. Lease and telemetry times are the database's `now()` (store
//!    invariant 3): instances' clocks do not matter.
//! 4. No call waits longer than the pool's timeouts ([`TIMEOUT`]): a
//!    stopped database is an `Unreachable` error, retried by the writer.

use super::location::redact;
use super::store::{new_session_id, new_token, Store};
use super::{JournalError, SessionSummary, TurnRecord, TurnRow};
use crate::llm::ChatMessage;
use crate::turn::{CommittedRound, TurnTiming};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::NoTls;

/// Longest wait to connect, for a pooled connection, or to recycle one.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Pooled connections at most.
pub const POOL_SIZE: usize = 8;

/// Versioned migrations, applied in order.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        started_at BIGINT NOT NULL,
        agent TEXT NOT NULL,
        source TEXT NOT NULL,
        quarantined BIGINT NOT NULL DEFAULT 0,
        seq BIGSERIAL
    );
    CREATE TABLE turns (
        session_id TEXT NOT NULL REFERENCES sessions(id),
        idx BIGINT NOT NULL,
        epoch BIGINT NOT NULL,
        user_text TEXT NOT NULL,
        assistant_text TEXT NOT NULL,
        interrupted BOOLEAN NOT NULL,
        model TEXT,
        messages TEXT NOT NULL,
        end_of_speech_ms BIGINT,
        stt_ms BIGINT,
        first_token_ms BIGINT,
        first_audio_ms BIGINT,
        committed_ms BIGINT NOT NULL,
        written_at BIGINT NOT NULL,
        PRIMARY KEY (session_id, idx)
    );
    CREATE TABLE kv (
        session_id TEXT NOT NULL REFERENCES sessions(id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        turn_idx BIGINT NOT NULL,
        PRIMARY KEY (session_id, key)
    );",
    "CREATE TABLE leases (
        session_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE telemetry (
        instance_id TEXT PRIMARY KEY,
        saved_at TIMESTAMPTZ NOT NULL,
        snapshot TEXT NOT NULL
    );",
];

/// Key of the advisory lock taken while migrating.
const MIGRATION_LOCK: i64 = 0x636f_6c6c_6f71;

/// The PostgreSQL journal.
pub struct PgStore {
    pool: Pool,
    location: String,
}

impl PgStore {
    /// Connects, checks the database and applies the migrations (refused
    /// at start when unusable, journal invariant 2).
    pub async fn open(url: &str, password_env: Option<&str>) -> Result<Self, JournalError> {
        let location = redact(url);
        let refuse = |cause: String| JournalError::Open {
            path: location.clone().into(),
            cause,
        };
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| refuse(format!("not a PostgreSQL URL: {e}")))?;
        let var = password_env.unwrap_or("PGPASSWORD");
        if let Ok(pw) = std::env::var(var) {
            // Holds invariant 1: from the environment only.
            config.password(pw);
        } else if password_env.is_some() {
            return Err(refuse(format!(
                "the password variable {var} is not set (fix: export it, or drop --journal-password-env)"
            )));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(TIMEOUT);
        }
        config.application_name("colloquy");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .build()
            .map_err(|e| refuse(e.to_string()))?;
        let store = Self {
            pool,
            location: location.clone(),
        };
        store
            .migrate()
            .await
            .map_err(|e| refuse(format!("{e} (fix: check that PostgreSQL runs, the URL's user, host, port and database, and PGPASSWORD)")))?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, JournalError> {
        self.pool.get().await.map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Unreachable {
            location: self.location.clone(),
            cause: e.to_string(),
        }
    }

    fn err(&self, e: tokio_postgres::Error) -> JournalError {
        if e.is_closed() || e.code().is_none() {
            // The connection failed, not the statement: retry helps.
            let cause = match std::error::Error::source(&e) {
                Some(src) => format!("{e}: {src}"),
                None => e.to_string(),
            };
            return self.unreachable(cause);
        }
        let cause = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        JournalError::Write {
            path: self.location.clone().into(),
            cause,
        }
    }

    async fn migrate(&self) -> Result<(), String> {
        let mut client = self.pool.get().await.map_err(|e| e.to_string())?;
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| e.to_string())?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS colloquy_migrations (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|e| e.to_string())?;
        let applied: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM colloquy_migrations",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
            let version = i as i32 + 1;
            tx.batch_execute(sql)
                .await
                .map_err(|e| format!("migration {version}: {e}"))?;
            tx.execute(
                "INSERT INTO colloquy_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ms(v: Option<u64>) -> Option<i64> {
    v.map(|x| x as i64)
}

fn interval(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn location(&self) -> &str {
        &self.location
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), JournalError> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn create_session(&self, agent: &str, source: &str) -> Result<String, JournalError> {
        let id = new_session_id();
        let c = self.client().await?;
        c.execute(
            "INSERT INTO sessions (id, started_at, agent, source) VALUES ($1, $2, $3, $4)",
            &[&id, &unix_now(), &agent, &source],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(id)
    }

    async fn turns(&self, session: &str) -> Result<Vec<TurnRecord>, JournalError> {
        let c = self.client().await?;
        let exists = c
            .query_opt("SELECT 1 FROM sessions WHERE id = $1", &[&session])
            .await
            .map_err(|e| self.err(e))?;
        if exists.is_none() {
            return Err(JournalError::NoSession {
                path: self.location.clone().into(),
                id: session.to_string(),
            });
        }
        let rows = c
            .query(
                "SELECT idx, epoch, user_text, assistant_text, interrupted, model, messages,
                        end_of_speech_ms, stt_ms, first_token_ms, first_audio_ms, committed_ms
                 FROM turns WHERE session_id = $1 ORDER BY idx",
                &[&session],
            )
            .await
            .map_err(|e| self.err(e))?;
        let opt = |v: Option<i64>| v.map(|x| x.max(0) as u64);
        Ok(rows
            .iter()
            .map(|r| {
                let messages: String = r.get(6);
                TurnRecord {
                    index: r.get(0),
                    epoch: r.get(1),
                    user: r.get(2),
                    assistant: r.get(3),
                    interrupted: r.get(4),
                    model: r.get(5),
                    messages: serde_json::from_str::<Vec<ChatMessage>>(&messages)
                        .unwrap_or_default(),
                    timing: TurnTiming {
                        end_of_speech_ms: opt(r.get(7)),
                        stt_ms: opt(r.get(8)),
                        first_token_ms: opt(r.get(9)),
                        first_audio_ms: opt(r.get(10)),
                    },
                    committed_ms: r.get(11),
                }
            })
            .collect())
    }

    async fn append_turn(
        &self,
        session: &str,
        idx: i64,
        round: &CommittedRound,
        fence: Option<i64>,
    ) -> Result<(), JournalError> {
        let row = TurnRow::of(round);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.err(e))?;
        if let Some(token) = fence {
            // Holds invariant 2: the lease row is locked until the commit,
            // so no other owner can take it in between.
            let held = tx
                .query_opt(
                    "SELECT 1 FROM leases WHERE session_id = $1 AND token = $2 FOR UPDATE",
                    &[&session, &token],
                )
                .await
                .map_err(|e| self.err(e))?;
            if held.is_none() {
                return Err(JournalError::LeaseLost {
                    location: self.location.clone(),
                    session: session.to_string(),
                });
            }
        }
        let t = round.timing;
        let inserted = tx
            .execute(
                "INSERT INTO turns (session_id, idx, epoch, user_text, assistant_text, interrupted, model,
                    messages, end_of_speech_ms, stt_ms, first_token_ms, first_audio_ms, committed_ms, written_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT (session_id, idx) DO NOTHING",
                &[
                    &session,
                    &idx,
                    &(round.epoch as i64),
                    &row.user,
                    &row.assistant,
                    &round.interrupted,
                    &round.model,
                    &row.messages,
                    &ms(t.end_of_speech_ms),
                    &ms(t.stt_ms),
                    &ms(t.first_token_ms),
                    &ms(t.first_audio_ms),
                    &(round.committed_ms as i64),
                    &unix_now(),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        if inserted == 1 {
            for (key, value) in &row.kv {
                tx.execute(
                    "INSERT INTO kv (session_id, key, value, turn_idx) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (session_id, key) DO UPDATE SET value = $3, turn_idx = $4",
                    &[&session, key, value, &idx],
                )
                .await
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    async fn finish_session(&self, session: &str, quarantined: u64) -> Result<(), JournalError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE sessions SET quarantined = quarantined + $2 WHERE id = $1",
            &[&session, &(quarantined as i64)],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn sessions(&self) -> Result<Vec<SessionSummary>, JournalError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT s.id, s.started_at, s.agent, s.source, s.quarantined,
                        COUNT(t.idx), COALESCE(SUM(CASE WHEN t.interrupted THEN 1 ELSE 0 END), 0)::BIGINT
                 FROM sessions s LEFT JOIN turns t ON t.session_id = s.id
                 GROUP BY s.id ORDER BY s.started_at DESC, s.seq DESC",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| SessionSummary {
                id: r.get(0),
                started_at: r.get(1),
                agent: r.get(2),
                source: r.get(3),
                quarantined: r.get(4),
                turns: r.get(5),
                interruptions: r.get(6),
            })
            .collect())
    }

    async fn kv(&self, session: &str) -> Result<BTreeMap<String, String>, JournalError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT key, value FROM kv WHERE session_id = $1 ORDER BY key",
                &[&session],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn acquire_lease(
        &self,
        session: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, JournalError> {
        let token = new_token();
        let c = self.client().await?;
        let row = c
            .query_opt(
                "INSERT INTO leases (session_id, owner, token, expires_at)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4))
                 ON CONFLICT (session_id) DO UPDATE
                   SET owner = EXCLUDED.owner, token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
                   WHERE leases.expires_at < now()
                 RETURNING token",
                &[&session, &owner, &token, &interval(ttl)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn renew_leases(
        &self,
        leases: &[(String, i64)],
        ttl: Duration,
    ) -> Result<Vec<String>, JournalError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let sessions: Vec<&str> = leases.iter().map(|(s, _)| s.as_str()).collect();
        let tokens: Vec<i64> = leases.iter().map(|(_, t)| *t).collect();
        let c = self.client().await?;
        // One statement for every lease of this instance; a stale token
        // matches no row (lease lost).
        let rows = c
            .query(
                "UPDATE leases l SET expires_at = now() + make_interval(secs => $3)
                 FROM unnest($1::text[], $2::bigint[]) AS held(session_id, token)
                 WHERE l.session_id = held.session_id AND l.token = held.token
                 RETURNING l.session_id",
                &[&sessions, &tokens, &interval(ttl)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn release_lease(&self, session: &str, token: i64) -> Result<(), JournalError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM leases WHERE session_id = $1 AND token = $2",
            &[&session, &token],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn save_telemetry(&self, instance: &str, snapshot: &str) -> Result<(), JournalError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO telemetry (instance_id, saved_at, snapshot) VALUES ($1, now(), $2)
             ON CONFLICT (instance_id) DO UPDATE SET saved_at = now(), snapshot = EXCLUDED.snapshot",
            &[&instance, &snapshot],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn load_telemetry(&self, window: Duration) -> Result<Vec<String>, JournalError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT snapshot FROM telemetry
                 WHERE saved_at >= now() - make_interval(secs => $1)
                 ORDER BY saved_at DESC, instance_id",
                &[&interval(window)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
