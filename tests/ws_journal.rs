//! `colloquy serve` and the journal (issue 10): each WebSocket connection is
//! one journal session; a client that reconnects with `?session=ID` gets the
//! committed turns as a `history` message, the resumed pipeline starts from
//! them, and its next turns are appended to the same session. An unknown or
//! malformed id gets an error and a new session; an id live in another
//! connection is refused; a journal write that fails becomes an error event
//! while the conversation goes on; an agent that hangs up (a flow's
//! `end_call`) gets its goodbye committed, then `call_ended`, then a normal
//! close.
//!
//! Each test runs a server in-process on 127.0.0.1 port 0 with the parrot
//! agent (wrapped to record the history each turn starts from) and talks to
//! it with tokio-tungstenite, once per journal backend (issue 15): a SQLite
//! file in a temporary directory, and a fresh PostgreSQL database when
//! `scripts/fleet-test.sh` provides one (`tests/common/pg.rs`).
//!
//! # Invariants
//! 1. No sleeps: every wait is for an expected message, bounded by a
//!    timeout. A turn is looked up in the journal only after its `committed`
//!    event arrived (the server sends it only once the write is durable,
//!    conn invariant 4).

mod common;
use colloquy::agent::parrot::{ParrotAgent, PARROT_TEXT};
use colloquy::agent::{Agent, Payload, Reporter, TurnJob};
use colloquy::journal::store::Store;
use colloquy::journal::TurnRecord;
use colloquy::transport::websocket::{AgentFactory, ServeConfig, Server};
use common::ws::{expect_close, next_json, Running, Ws};
use futures::SinkExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where a test's journal lives.
struct Backend {
    location: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = dir.path().join("journal.sqlite").display().to_string();
        Self {
            location,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Option<Self> {
        Some(Self {
            location: common::pg::fresh_db().await?,
            _dir: None,
        })
    }

    fn is_postgres(&self) -> bool {
        self.location.starts_with("postgres")
    }

    /// Makes every turn write fail (`on`) or succeed again.
    async fn refuse_turns(&self, on: bool) {
        if self.is_postgres() {
            let sql = if on {
                "CREATE FUNCTION refuse_turns() RETURNS trigger AS $$
                 BEGIN RAISE EXCEPTION 'simulated write failure'; END $$ LANGUAGE plpgsql;
                 CREATE TRIGGER refuse_turns BEFORE INSERT ON turns
                 FOR EACH ROW EXECUTE FUNCTION refuse_turns();"
            } else {
                "DROP TRIGGER refuse_turns ON turns; DROP FUNCTION refuse_turns();"
            };
            common::pg::execute(&self.location, sql).await;
        } else {
            let raw = rusqlite::Connection::open(&self.location).expect("raw open");
            let sql = if on {
                "CREATE TRIGGER refuse_turns BEFORE INSERT ON turns
                 BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;"
            } else {
                "DROP TRIGGER refuse_turns;"
            };
            raw.execute_batch(sql).expect("trigger");
        }
    }
}

/// Runs a test body once per backend: `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::sqlite()).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(b) = super::Backend::postgres().await {
                    super::$name(b).await;
                }
            }
        }
    };
}
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The parrot, recording the length of the history each turn starts from;
/// with `hang_up`, it says a goodbye and ends the call instead.
struct RecordingParrot {
    histories: Arc<Mutex<Vec<usize>>>,
    hang_up: bool,
}

impl Agent for RecordingParrot {
    fn name(&self) -> &str {
        "parrot"
    }

    fn start(&self, job: TurnJob, reporter: Reporter) {
        if let Ok(mut h) = self.histories.lock() {
            h.push(job.history.len());
        }
        if self.hang_up {
            let tone: Vec<i16> = (0..8000).map(|i| ((i % 40) as i16 - 20) * 200).collect();
            reporter.send(Payload::Speech {
                text: "Goodbye.".into(),
                audio: tone.into(),
            });
            reporter.send(Payload::EndCall);
            reporter.send(Payload::Done);
            return;
        }
        ParrotAgent.start(job, reporter);
    }

    fn transcribes(&self) -> bool {
        false
    }
}

struct TestServer {
    running: Running,
    base: String,
    token: String,
    store: Arc<dyn Store>,
    histories: Arc<Mutex<Vec<usize>>>,
    backend: Backend,
}

impl TestServer {
    async fn start(backend: Backend, tune: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_agent(backend, false, tune).await
    }

    async fn start_agent(
        backend: Backend,
        hang_up: bool,
        tune: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.journal = Some(PathBuf::from(&backend.location));
        tune(&mut config);
        let histories = Arc::new(Mutex::new(Vec::new()));
        let recorded = histories.clone();
        let agents: AgentFactory = Arc::new(move || {
            Arc::new(RecordingParrot {
                histories: recorded.clone(),
                hang_up,
            }) as Arc<dyn Agent>
        });
        let running = Running::start(config, agents).await;
        Self {
            base: running.base.clone(),
            token: running.token.clone(),
            running,
            store: common::pg::store(&backend.location).await,
            histories,
            backend,
        }
    }

    /// The journal's turns of `id` (read through a second store handle).
    async fn turns(&self, id: &str) -> Vec<TurnRecord> {
        self.store
            .turns(id)
            .await
            .expect("the session is in the journal")
    }

    async fn connect(&self, session: Option<&str>) -> Ws {
        let mut url = format!("{}?token={}", self.base, self.token);
        if let Some(s) = session {
            url.push_str("&session=");
            url.push_str(s);
        }
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        ws
    }

    fn histories(&self) -> Vec<usize> {
        self.histories.lock().map(|h| h.clone()).unwrap_or_default()
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// Reads until a message of `kind`; panics on an error event or a close.
async fn expect_type(ws: &mut Ws, kind: &str) -> serde_json::Value {
    loop {
        let v = next_json(ws)
            .await
            .unwrap_or_else(|| panic!("socket closed before a {kind} message"));
        if v["type"] == kind {
            return v;
        }
        assert_ne!(
            v["type"], "error",
            "unexpected error waiting for {kind}: {v}"
        );
    }
}

/// Reads until an error event; returns it.
async fn expect_error(ws: &mut Ws) -> serde_json::Value {
    loop {
        let v = next_json(ws).await.expect("an error before the close");
        if v["type"] == "error" {
            return v;
        }
    }
}

/// The server's `hello` and `history` of a new connection.
async fn greeting(ws: &mut Ws) -> (serde_json::Value, serde_json::Value) {
    let hello = expect_type(ws, "hello").await;
    let history = next_json(ws).await.expect("history after hello");
    assert_eq!(
        history["type"], "history",
        "history follows hello: {history}"
    );
    assert_eq!(history["session"], hello["session"]);
    (hello, history)
}

/// Says one question (faster than real time, 100 ms messages, then a
/// second of silence) and returns the parrot's `committed` event.
async fn say_and_commit(ws: &mut Ws) -> serde_json::Value {
    common::ws::say_question(ws).await;
    let committed = expect_type(ws, "committed").await;
    assert_eq!(committed["assistant"], PARROT_TEXT, "{committed}");
    assert_eq!(committed["interrupted"], false, "{committed}");
    committed
}

/// Says goodbye and waits for the server's close.
async fn bye(mut ws: Ws) {
    ws.send(Message::text(r#"{"type":"bye"}"#))
        .await
        .expect("bye");
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::Normal));
}

on_both_backends!(a_reconnecting_client_gets_its_history_and_its_next_turn_joins_the_same_session);
async fn a_reconnecting_client_gets_its_history_and_its_next_turn_joins_the_same_session(
    backend: Backend,
) {
    let server = TestServer::start(backend, |_| {}).await;

    // First connection: a new session, one committed turn.
    let mut a = server.connect(None).await;
    let (hello, history) = greeting(&mut a).await;
    assert_eq!(hello["resumable"], true, "{hello}");
    let id = hello["session"].as_str().expect("session id").to_string();
    assert_ne!(hello["connection"], hello["session"], "{hello}");
    assert_eq!(history["turns"], serde_json::json!([]), "{history}");
    say_and_commit(&mut a).await;
    let turns = server.turns(&id).await;
    assert_eq!(
        turns.len(),
        1,
        "the committed turn was written before its event"
    );
    assert_eq!(turns[0].assistant, PARROT_TEXT);
    bye(a).await;

    // Second connection resumes it: history, then the next turn appends.
    let mut b = server.connect(Some(&id)).await;
    let (hello, history) = greeting(&mut b).await;
    assert_eq!(hello["session"], id.as_str(), "{hello}");
    assert_eq!(
        history["turns"],
        serde_json::json!([{"user": "", "assistant": PARROT_TEXT, "interrupted": false}]),
        "{history}"
    );
    say_and_commit(&mut b).await;
    bye(b).await;

    let turns = server.turns(&id).await;
    assert_eq!(turns.len(), 2, "the resumed turn joined the same session");
    assert_eq!(
        turns.iter().map(|t| t.index).collect::<Vec<_>>(),
        vec![0, 1]
    );
    let sessions = server.store.sessions().await.expect("sessions");
    assert_eq!(sessions.len(), 1, "no second session: {sessions:?}");
    assert_eq!(sessions[0].turns, 2);
    // The resumed pipeline started from the first turn (user + assistant).
    assert_eq!(server.histories(), vec![0, 2]);
    server.stop().await;
}

on_both_backends!(an_unknown_or_malformed_session_id_gets_an_error_and_a_new_session);
async fn an_unknown_or_malformed_session_id_gets_an_error_and_a_new_session(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    for (asked, code) in [
        ("feedfacefeedface", "unknown_session"),
        ("not%20an%20id", "bad_session"),
        ("..%2F..%2Fetc", "bad_session"),
    ] {
        let mut ws = server.connect(Some(asked)).await;
        let err = next_json(&mut ws).await.expect("an error first");
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["code"], code, "{asked}: {err}");
        assert!(
            err["message"]
                .as_str()
                .is_some_and(|m| m.contains("new session")),
            "{err}"
        );
        let (hello, history) = greeting(&mut ws).await;
        assert_eq!(hello["resumable"], true);
        assert_ne!(hello["session"], asked, "{hello}");
        assert_eq!(history["turns"], serde_json::json!([]));
        bye(ws).await;
    }
    server.stop().await;
}

on_both_backends!(a_session_live_in_another_connection_is_refused);
async fn a_session_live_in_another_connection_is_refused(backend: Backend) {
    let server = TestServer::start(backend, |c| c.resume_wait = Duration::from_millis(200)).await;
    let mut a = server.connect(None).await;
    let (hello, _) = greeting(&mut a).await;
    let id = hello["session"].as_str().expect("id").to_string();
    let mut b = server.connect(Some(&id)).await;
    let err = expect_error(&mut b).await;
    assert_eq!(err["code"], "session_in_use", "{err}");
    assert_eq!(expect_close(&mut b).await, Some(CloseCode::Policy));
    // The holder is unaffected and its turn goes to its session.
    say_and_commit(&mut a).await;
    bye(a).await;
    assert_eq!(server.turns(&id).await.len(), 1);
    server.stop().await;
}

on_both_backends!(
    a_turn_the_store_refuses_is_retried_then_reported_lost_and_the_conversation_goes_on
);
async fn a_turn_the_store_refuses_is_retried_then_reported_lost_and_the_conversation_goes_on(
    backend: Backend,
) {
    let server = TestServer::start(backend, |c| {
        c.fleet.retry.give_up_after = Duration::from_millis(600);
    })
    .await;
    let mut ws = server.connect(None).await;
    let (hello, _) = greeting(&mut ws).await;
    let id = hello["session"].as_str().expect("id").to_string();
    server.backend.refuse_turns(true).await;
    common::ws::say_question(&mut ws).await;
    // The failure is reported, retried, then the turn is reported lost:
    // no `committed` event for a turn that is not kept.
    let (mut retrying, mut lost) = (false, false);
    while !lost {
        let v = next_json(&mut ws).await.expect("session open");
        assert_ne!(
            v["type"], "committed",
            "a lost turn was announced committed: {v}"
        );
        if v["type"] == "error" {
            assert_eq!(v["source"], "journal", "{v}");
            let m = v["message"].as_str().unwrap_or_default();
            assert!(m.contains("simulated write failure"), "{v}");
            retrying |= m.contains("retrying");
            lost = m.contains("lost");
        }
    }
    assert!(retrying, "the first failure was reported before the loss");
    ws.send(Message::text(r#"{"type":"ping","id":3}"#))
        .await
        .expect("ping");
    let pong = expect_type(&mut ws, "pong").await;
    assert_eq!(pong["id"], 3);
    server.backend.refuse_turns(false).await;
    bye(ws).await;
    assert!(server.turns(&id).await.is_empty());
    server.stop().await;
}

on_both_backends!(a_turn_written_once_the_store_returns_is_then_committed);
async fn a_turn_written_once_the_store_returns_is_then_committed(backend: Backend) {
    let server = TestServer::start(backend, |c| {
        c.fleet.retry.give_up_after = Duration::from_secs(60);
    })
    .await;
    let mut ws = server.connect(None).await;
    let (hello, _) = greeting(&mut ws).await;
    let id = hello["session"].as_str().expect("id").to_string();
    server.backend.refuse_turns(true).await;
    common::ws::say_question(&mut ws).await;
    let err = expect_error(&mut ws).await;
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("retrying")),
        "{err}"
    );
    // The store is back: the retried write lands, then `committed`.
    server.backend.refuse_turns(false).await;
    let committed = expect_type(&mut ws, "committed").await;
    assert_eq!(committed["assistant"], PARROT_TEXT, "{committed}");
    let turns = server.turns(&id).await;
    assert_eq!(turns.len(), 1);
    bye(ws).await;
    server.stop().await;
}

#[tokio::test]
async fn an_unusable_journal_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the journal file should be.
    let path = dir.path().join("journal.sqlite");
    std::fs::create_dir(&path).expect("mkdir");
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.journal = Some(path.clone());
    let agents: AgentFactory = Arc::new(|| Arc::new(ParrotAgent) as Arc<dyn Agent>);
    let err = match Server::bind(config, agents).await {
        Ok(_) => panic!("a directory was accepted as the journal"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&path.display().to_string()), "{err}");
}

on_both_backends!(when_the_agent_hangs_up_the_server_says_call_ended_and_closes_normally);
async fn when_the_agent_hangs_up_the_server_says_call_ended_and_closes_normally(backend: Backend) {
    let server = TestServer::start_agent(backend, true, |_| {}).await;
    let mut ws = server.connect(None).await;
    let (hello, _) = greeting(&mut ws).await;
    let id = hello["session"].as_str().expect("session id").to_string();
    common::ws::say_question(&mut ws).await;
    let committed = expect_type(&mut ws, "committed").await;
    assert_eq!(committed["assistant"], "Goodbye.", "{committed}");
    // call_ended comes right after the goodbye's committed, then the close.
    let ended = next_json(&mut ws)
        .await
        .expect("call_ended after committed");
    assert_eq!(ended["type"], "call_ended", "{ended}");
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::Normal));
    let turns = server.turns(&id).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].assistant, "Goodbye.");
    server.stop().await;
}
