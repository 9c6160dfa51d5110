//! Operability of `colloquy serve` (issue 15), in-process on 127.0.0.1 port
//! 0 with the parrot agent and a SQLite journal:
//! - `/healthz` 200; `/readyz` 200 below `--max-sessions`, 503 naming
//!   "full" at it; `/metrics` is Prometheus text with the session gauge,
//!   turn counter and latency histograms (buckets, not summaries);
//! - a drain (the server's shutdown future: SIGTERM in `serve`) sends
//!   `draining`, closes with 1012, and the committed turns are in the
//!   journal; a second server on the same journal resumes the session;
//! - two servers sharing one journal ("instances") never hold one session
//!   at once: the second gets `session_in_use`;
//! - the routers' telemetry is shared through the journal: what one
//!   instance learned (saved at its shutdown) is merged into the next
//!   instance's store at its start.
//!
//! # Invariants
//! 1. No sleeps: every wait is for an expected answer, bounded.

mod common;
use colloquy::agent::parrot::{ParrotAgent, PARROT_TEXT};
use colloquy::agent::Agent;
use colloquy::transport::websocket::{AgentFactory, ServeConfig};
use common::ws::{next_json, Running, Ws};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn server(journal: &Path, tune: impl FnOnce(&mut ServeConfig)) -> Running {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.journal = Some(journal.to_path_buf());
    config.resume_wait = Duration::from_millis(300);
    tune(&mut config);
    let agents: AgentFactory = Arc::new(|| Arc::new(ParrotAgent) as Arc<dyn Agent>);
    Running::start(config, agents).await
}

fn port(r: &Running) -> u16 {
    r.base
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches("/ws")
        .parse()
        .expect("port")
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

async fn connect(r: &Running, session: Option<&str>) -> Ws {
    let mut url = format!("{}?token={}", r.base, r.token);
    if let Some(s) = session {
        url.push_str("&session=");
        url.push_str(s);
    }
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn expect_type(ws: &mut Ws, kind: &str) -> serde_json::Value {
    loop {
        let v = next_json(ws)
            .await
            .unwrap_or_else(|| panic!("closed before {kind}"));
        if v["type"] == kind {
            return v;
        }
    }
}

fn journal_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("journal.sqlite")
}

#[tokio::test]
async fn probes_answer_and_metrics_are_prometheus_histograms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = server(&journal_path(&dir), |c| c.max_sessions = 1).await;
    let p = port(&r);
    assert_eq!(get(p, "/healthz").await.0, 200);
    let (status, body) = get(p, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready: 0 sessions"));
    let mut ws = connect(&r, None).await;
    expect_type(&mut ws, "history").await;
    let (status, body) = get(p, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("full: 1 of 1 sessions"), "{body}");
    common::ws::say_question(&mut ws).await;
    let committed = expect_type(&mut ws, "committed").await;
    assert_eq!(committed["assistant"], PARROT_TEXT);
    let (status, metrics) = get(p, "/metrics").await;
    assert_eq!(status, 200);
    for want in [
        "colloquy_sessions_live 1",
        "colloquy_turns_total{interrupted=\"false\"}",
        "colloquy_voice_to_voice_seconds_bucket{le=\"0.5\"}",
        "colloquy_stage_seconds_bucket{stage=\"first_audio\",le=\"1\"}",
        "colloquy_journal_write_seconds_bucket{backend=\"sqlite\",le=\"0.1\"}",
        "colloquy_router_choices_total",
    ] {
        assert!(metrics.contains(want), "no {want} in:\n{metrics}");
    }
    assert!(!metrics.contains("quantile="), "summaries, not histograms");
    r.stop().await;
}

#[tokio::test]
async fn a_drain_says_draining_closes_1012_and_another_server_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = journal_path(&dir);
    let a = server(&journal, |_| {}).await;
    let mut ws = connect(&a, None).await;
    let hello = expect_type(&mut ws, "hello").await;
    let id = hello["session"].as_str().expect("id").to_string();
    common::ws::say_question(&mut ws).await;
    expect_type(&mut ws, "committed").await;
    // The drain: the server's shutdown future resolves (SIGTERM in serve).
    let stopping = tokio::spawn(a.stop());
    let draining = expect_type(&mut ws, "draining").await;
    assert_eq!(draining["reconnect"], true);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(close, Some(CloseCode::Restart));
    stopping.await.expect("stopped");
    // Another instance on the same journal resumes it with its turn.
    let b = server(&journal, |_| {}).await;
    let mut ws = connect(&b, Some(&id)).await;
    let hello = expect_type(&mut ws, "hello").await;
    assert_eq!(hello["session"], id.as_str());
    let history = expect_type(&mut ws, "history").await;
    assert_eq!(
        history["turns"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    b.stop().await;
}

#[tokio::test]
async fn two_servers_on_one_journal_never_hold_one_session_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = journal_path(&dir);
    let a = server(&journal, |_| {}).await;
    let b = server(&journal, |_| {}).await;
    let mut on_a = connect(&a, None).await;
    let hello = expect_type(&mut on_a, "hello").await;
    let id = hello["session"].as_str().expect("id").to_string();
    let mut on_b = connect(&b, Some(&id)).await;
    let refused = next_json(&mut on_b).await.expect("an answer");
    assert_eq!(refused["code"], "session_in_use", "{refused}");
    // A lets go (bye): B can take it.
    futures::SinkExt::send(&mut on_a, Message::text(r#"{"type":"bye"}"#))
        .await
        .expect("bye");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut ws = connect(&b, Some(&id)).await;
        let first = next_json(&mut ws).await.expect("an answer");
        if first["type"] == "hello" {
            assert_eq!(first["session"], id.as_str());
            break;
        }
        assert_eq!(first["code"], "session_in_use", "{first}");
        assert!(std::time::Instant::now() < deadline, "never released");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_new_instance_starts_with_the_routing_telemetry_the_fleet_saved() {
    use colloquy::llm::telemetry::{Telemetry, WindowConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = journal_path(&dir);
    let learned = Telemetry::empty(WindowConfig::default());
    learned.record_success(
        "fleet-host/fast-model",
        Some(Duration::from_millis(120)),
        None,
    );
    let a = server(&journal, |c| c.telemetry = Some(learned.clone())).await;
    // A's shutdown saves its snapshot (the drain ends with a last save).
    a.stop().await;

    let fresh = Telemetry::empty(WindowConfig::default());
    assert!(!fresh.to_snapshot().contains("fast-model"));
    let b = server(&journal, |c| c.telemetry = Some(fresh.clone())).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fresh.to_snapshot().contains("fleet-host/fast-model") {
        assert!(
            std::time::Instant::now() < deadline,
            "B never merged A's telemetry: {}",
            fresh.to_snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
}
