//! `colloquy serve` writes the routing telemetry store when it shuts down
//! (SIGTERM), and `colloquy status` — another process — reads it and lists
//! every configured candidate of every routed stage, a never-tried one as
//! `untried` (issue 13).
//!
//! The binary is spawned on 127.0.0.1 with hosted candidates only (no model
//! is loaded; no session connects, so no candidate is ever asked and
//! nothing leaves the machine). Its state and journal live in a temp dir.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::route::{
    assert_saved_and_untried, colloquy_cmd as colloquy, free_port, store_path,
    with_unused_candidates,
};

#[test]
fn serve_saves_the_store_at_shutdown_and_status_lists_untried_candidates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = dir.path().join("serve.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = with_unused_candidates(colloquy(dir.path()).args([
        "serve",
        "--token",
        "t",
        "--bind",
        &format!("127.0.0.1:{port}"),
    ]))
    .stdout(out.try_clone().expect("log"))
    .stderr(out)
    .spawn()
    .expect("start colloquy serve");
    // Readiness (not a timing bound): the port accepts connections.
    let since = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "serve exited with {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "serve never listened: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let store = store_path(dir.path());
    assert!(!store.exists(), "nothing saved before the shutdown");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    // Bounded so a hung shutdown fails instead of hanging the suite.
    let since = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if since.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "serve did not exit within 60 s of SIGTERM: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let served_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "serve exited with {status}: {served_log}");

    assert_saved_and_untried(dir.path(), &served_log);
}
