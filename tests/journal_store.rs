//! The journal store trait on both backends (issue 15): the same checks run
//! on SQLite (a temporary file) and on PostgreSQL (a fresh database on the
//! server `scripts/fleet-test.sh` starts; skipped without it, a failure with
//! `COLLOQUY_REQUIRE_PG=1`).
//!
//! - turns round-trip; a retried write at the same index is idempotent;
//! - leases: one holder; a fenced write or renewal by a stale token touches
//!   nothing ("0 rows = lease lost"); an expired lease can be taken, after
//!   which the old token is lost; release frees at once;
//! - telemetry: one snapshot per instance, the newest kept, only recent
//!   ones loaded;
//! - migrations: opening an existing store again applies nothing twice.
//!
//! # Invariants
//! 1. Expiry is tested with a short time to live and a bounded wait for the
//!    expected state (polled), never a sleep that hopes.

mod common;
use colloquy::journal::store::Store;
use colloquy::journal::JournalError;
use colloquy::llm::ChatMessage;
use colloquy::turn::{CommittedRound, TurnTiming};
use std::sync::Arc;
use std::time::Duration;

fn round(user: &str, assistant: &str) -> CommittedRound {
    CommittedRound {
        epoch: 1,
        messages: vec![ChatMessage::user(user), ChatMessage::assistant(assistant)],
        interrupted: false,
        committed_ms: 10,
        timing: TurnTiming {
            end_of_speech_ms: Some(100),
            stt_ms: Some(200),
            first_token_ms: Some(300),
            first_audio_ms: Some(400),
        },
        model: Some("m".into()),
    }
}

async fn turns_round_trip_and_retries_are_idempotent(s: Arc<dyn Store>) {
    let id = s.create_session("parrot", "test").await.expect("session");
    s.append_turn(&id, 0, &round("a", "b"), None)
        .await
        .expect("turn 0");
    s.append_turn(&id, 1, &round("c", "d"), None)
        .await
        .expect("turn 1");
    // A retry after a lost acknowledgement: nothing changes.
    s.append_turn(&id, 1, &round("c", "d"), None)
        .await
        .expect("retry");
    let turns = s.turns(&id).await.expect("turns");
    assert_eq!(turns.len(), 2);
    assert_eq!((turns[1].index, turns[1].assistant.as_str()), (1, "d"));
    assert_eq!(turns[0].voice_to_voice_ms(), Some(300));
    assert!(matches!(
        s.turns("nope").await,
        Err(JournalError::NoSession { .. })
    ));
    s.finish_session(&id, 2).await.expect("finish");
    let listed = s.sessions().await.expect("sessions");
    let me = listed.iter().find(|x| x.id == id).expect("listed");
    assert_eq!((me.turns, me.quarantined), (2, 2));
    s.ping().await.expect("ping");
}

async fn leases_hold_fence_and_expire(s: Arc<dyn Store>) {
    let id = s.create_session("parrot", "test").await.expect("session");
    let long = Duration::from_secs(30);
    let a = s
        .acquire_lease(&id, "A", long)
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(
        s.acquire_lease(&id, "B", long).await.expect("acquire"),
        None,
        "a live lease is not taken"
    );
    assert_eq!(
        s.renew_leases(&[(id.clone(), a)], long)
            .await
            .expect("renew"),
        vec![id.clone()]
    );
    s.append_turn(&id, 0, &round("a", "b"), Some(a))
        .await
        .expect("fenced write by the holder");
    s.release_lease(&id, a).await.expect("release");
    // Released: free at once; the old token is fenced out.
    let short = Duration::from_millis(300);
    let b = s
        .acquire_lease(&id, "B", short)
        .await
        .expect("acquire")
        .expect("free after release");
    assert!(s
        .renew_leases(&[(id.clone(), a)], long)
        .await
        .expect("renew")
        .is_empty());
    assert!(matches!(
        s.append_turn(&id, 1, &round("x", "y"), Some(a)).await,
        Err(JournalError::LeaseLost { .. })
    ));
    // B stops renewing (a crash): C gets the session once it expired.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let c = loop {
        if let Some(t) = s.acquire_lease(&id, "C", long).await.expect("acquire") {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an expired lease was never free"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        s.renew_leases(&[(id.clone(), b)], long)
            .await
            .expect("renew")
            .is_empty(),
        "the crashed owner's heartbeat updates 0 rows"
    );
    assert!(matches!(
        s.append_turn(&id, 1, &round("x", "y"), Some(b)).await,
        Err(JournalError::LeaseLost { .. })
    ));
    s.append_turn(&id, 1, &round("x", "y"), Some(c))
        .await
        .expect("the new owner writes");
    assert_eq!(s.turns(&id).await.expect("turns").len(), 2);
}

async fn telemetry_keeps_the_newest_snapshot_per_instance(s: Arc<dyn Store>) {
    assert!(s
        .load_telemetry(Duration::from_secs(60))
        .await
        .expect("load")
        .is_empty());
    s.save_telemetry("a", r#"{"v":1}"#).await.expect("save");
    s.save_telemetry("b", r#"{"v":2}"#).await.expect("save");
    s.save_telemetry("a", r#"{"v":3}"#).await.expect("save");
    let mut got = s
        .load_telemetry(Duration::from_secs(60))
        .await
        .expect("load");
    got.sort();
    assert_eq!(
        got,
        vec![r#"{"v":2}"#.to_string(), r#"{"v":3}"#.to_string()]
    );
    // Outside a (tiny) window, nothing is recent.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let recent = s
            .load_telemetry(Duration::from_millis(1))
            .await
            .expect("load");
        if recent.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{recent:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all(location: String) {
    let s = common::pg::store(&location).await;
    turns_round_trip_and_retries_are_idempotent(s.clone()).await;
    leases_hold_fence_and_expire(s.clone()).await;
    telemetry_keeps_the_newest_snapshot_per_instance(s.clone()).await;
    drop(s);
    // Migrations are applied once: a second open finds the same store.
    let again = common::pg::store(&location).await;
    assert!(!again.sessions().await.expect("sessions").is_empty());
}

#[tokio::test]
async fn the_store_contract_holds_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    all(path.display().to_string()).await;
    // `sqlite:PATH` names the same file.
    let again = common::pg::store(&format!("sqlite:{}", path.display())).await;
    assert_eq!(again.backend(), "sqlite");
    assert!(!again.sessions().await.expect("sessions").is_empty());
}

#[tokio::test]
async fn the_store_contract_holds_on_postgres() {
    let Some(url) = common::pg::fresh_db().await else {
        return;
    };
    all(url.clone()).await;
    assert_eq!(common::pg::store(&url).await.backend(), "postgres");
}

#[tokio::test]
async fn an_unreachable_postgres_is_refused_at_start_without_the_password() {
    // A port nothing listens on (bound then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("postgres://colloquy@127.0.0.1:{port}/colloquy");
    std::env::set_var("COLLOQUY_TEST_SECRET_PW", "hunter2-secret");
    let loc = colloquy::journal::JournalLocation::parse(&url).expect("url");
    let err =
        match colloquy::journal::store::open_store(&loc, Some("COLLOQUY_TEST_SECRET_PW")).await {
            Ok(_) => panic!("nothing listens there"),
            Err(e) => e.to_string(),
        };
    assert!(err.contains(&url), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
