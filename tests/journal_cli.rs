//! `colloquy sessions`, `trace` and `status` read either journal backend
//! (issue 15): the same checks run the release binary against a SQLite file
//! and against a fresh PostgreSQL database (the server
//! `scripts/fleet-test.sh` starts; skipped without it, a failure with
//! `COLLOQUY_REQUIRE_PG=1`). Turns are written through the store trait, as
//! `serve` writes them, with the models that served each stage.
//!
//! # Invariants
//! 1. Each check reads what was written (ids, counts, texts, models), so a
//!    command that read nothing or the wrong store fails.

mod common;
use colloquy::llm::ChatMessage;
use colloquy::turn::{CommittedRound, TurnTiming};
use std::path::Path;
use std::process::Command;

/// Which model served each stage (`agent::served` labels, as the voice
/// agent writes them): all embedded, then hosted with a TTS fallback.
const M0: &str = "stt=embedded/whisper-tiny.en llm=embedded/smollm2 tts=embedded/piper";
const M1: &str = "stt=openai/whisper-1 llm=openai/gpt-test tts=openai/tts-1+embedded/piper";

fn round(user: &str, assistant: &str, model: &str) -> CommittedRound {
    CommittedRound {
        epoch: 1,
        messages: vec![ChatMessage::user(user), ChatMessage::assistant(assistant)],
        interrupted: false,
        committed_ms: 10,
        timing: TurnTiming {
            end_of_speech_ms: Some(1000),
            stt_ms: Some(1150),
            first_token_ms: Some(1400),
            first_audio_ms: Some(1620),
        },
        model: Some(model.into()),
    }
}

/// Runs `colloquy ARGS --journal LOCATION` in `cwd`: (success, stdout, stderr).
fn colloquy(cwd: &Path, location: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(args)
        .args(["--journal", location])
        .current_dir(cwd)
        .env_remove("COLLOQUY_JOURNAL")
        // `status` also shows this machine's routing telemetry file.
        .env("XDG_DATA_HOME", cwd)
        .output()
        .expect("run colloquy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn the_commands_read(location: &str, backend: &str) {
    let cwd = tempfile::tempdir().expect("tempdir");
    let store = common::pg::store(location).await;
    let id = store
        .create_session("voice", "test")
        .await
        .expect("session");
    store
        .append_turn(&id, 0, &round("capital of France?", "Paris.", M0), None)
        .await
        .expect("turn 0");
    store
        .append_turn(&id, 1, &round("and Germany?", "Berlin.", M1), None)
        .await
        .expect("turn 1");
    drop(store);

    let (ok, out, err) = colloquy(cwd.path(), location, &["sessions", "--json"]);
    assert!(ok, "sessions on {backend}: {err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let me = listed
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{id} not listed: {out}"));
    assert_eq!(me["turns"], 2, "{me}");
    let (ok, out, err) = colloquy(cwd.path(), location, &["sessions"]);
    assert!(ok && out.contains(&id), "{out}{err}");

    // The waterfall names the model that served each stage of each turn.
    let (ok, out, err) = colloquy(cwd.path(), location, &["trace", &id]);
    assert!(ok, "trace on {backend}: {err}");
    assert!(
        out.contains(&format!("turn 1 (epoch 1) model {M0}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("turn 2 (epoch 1) model {M1}\n")),
        "{out}"
    );
    assert!(out.contains("assistant: Berlin."), "{out}");
    assert!(out.contains("first audio       620 ms"), "{out}");
    let (ok, out, err) = colloquy(cwd.path(), location, &["trace", &id, "--json"]);
    assert!(ok, "{err}");
    let turns: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(turns[1]["model"], M1, "{out}");
    let (ok, _, err) = colloquy(cwd.path(), location, &["trace", "0000000000000000"]);
    assert!(!ok && err.contains("no session 0000000000000000"), "{err}");

    let (ok, out, err) = colloquy(cwd.path(), location, &["status"]);
    assert!(ok, "status on {backend}: {err}");
    assert!(
        out.contains(&format!(
            ", {backend}): 1 sessions, 2 turns, 0 interruptions"
        )) && out.contains("voice-to-voice p50 620 ms"),
        "{out}"
    );
}

#[tokio::test]
async fn sessions_trace_and_status_read_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    the_commands_read(&path.display().to_string(), "sqlite").await;
}

#[tokio::test]
async fn sessions_trace_and_status_read_postgres() {
    let Some(url) = common::pg::fresh_db().await else {
        return;
    };
    the_commands_read(&url, "postgres").await;
}

#[test]
fn an_unknown_scheme_is_refused_and_no_file_is_made() {
    let cwd = tempfile::tempdir().expect("tempdir");
    for cmd in [&["sessions"][..], &["trace", "abc"], &["status"]] {
        let (ok, _, err) = colloquy(cwd.path(), "mongodb://db.internal/colloquy", cmd);
        assert!(!ok, "{cmd:?} accepted an unknown scheme");
        assert!(err.contains("unknown journal scheme \"mongodb\""), "{err}");
    }
    let made: Vec<_> = std::fs::read_dir(cwd.path())
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("mongodb"))
        .collect();
    assert!(made.is_empty(), "made {made:?}");
}
