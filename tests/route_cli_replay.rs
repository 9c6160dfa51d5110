//! The "done when" (issue 13), at the command line:
//! `colloquy replay FILE --llm URL::MODEL --llm embedded` (and the same for
//! `--stt` and `--tts`) against an OpenAI-compatible server — here the
//! scripted one, a real HTTP server on 127.0.0.1 in this test process. The
//! hosted candidates answer every stage (no probe: the hosted model leads
//! and answers in 50 ms, long before its hedge deadline), the embedded ones
//! stand by. The second run's server fails every request (HTTP 500): the
//! embedded models answer every stage. Skips without the models (fails in
//! CI with COLLOQUY_REQUIRE_MODELS=1).

mod common;

use colloquy::llm::testkit::{FakeOpenAi, Reply};
use common::route::colloquy_cmd;

/// Runs `colloquy replay` on the question with every stage listing
/// `base`'s model first and `embedded` second; returns its events.
fn replay_cli(base: &str, dir: &std::path::Path) -> Vec<serde_json::Value> {
    let config = dir.join("colloquy.toml");
    std::fs::write(&config, "[router]\nprobe = false\nexploration_rate = 0.0\n").expect("config");
    let events = dir.join("events.jsonl");
    let out = colloquy_cmd(dir)
        .arg("replay")
        .arg(common::asset("speech/q-france.wav"))
        .arg("--events")
        .arg(&events)
        .arg("--no-journal")
        .arg("--config")
        .arg(&config)
        .args(["--llm", &format!("{base}::chat-x"), "--llm", "embedded"])
        .args(["--stt", &format!("{base}::whisper-1"), "--stt", "embedded"])
        .args([
            "--tts",
            &format!("{base}::tts-1::alloy"),
            "--tts",
            "embedded",
        ])
        .output()
        .expect("run colloquy replay");
    assert!(
        out.status.success(),
        "replay failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of_type<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Each routed stage's first race's winner in the turn's `turn_latency`.
fn winners(events: &[serde_json::Value]) -> Vec<(String, String)> {
    let latency = of_type(events, "turn_latency");
    assert_eq!(latency.len(), 1, "{latency:?}");
    let mut out: Vec<(String, String)> = Vec::new();
    for r in latency[0]["routes"].as_array().expect("routes") {
        let stage = r["stage"].as_str().unwrap_or_default().to_string();
        if !out.iter().any(|(s, _)| *s == stage) {
            out.push((stage, r["winner"].as_str().unwrap_or_default().to_string()));
        }
    }
    out
}

#[test]
fn replay_with_a_hosted_and_the_embedded_candidate_per_stage() {
    if common::models_or_skip().is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    // 1. The server answers: the hosted models serve every stage.
    let server = runtime.block_on(async { FakeOpenAi::start().await.expect("server") });
    server.push_transcription(
        (0..4).map(|_| Reply::tokens(["What is the capital ", "of France, please?"])),
    );
    server.set_default(Reply::tokens(["Paris", " is the capital", " of France."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let events = replay_cli(&server.base_url(), dir.path());
    let committed = of_type(&events, "committed");
    assert_eq!(committed.len(), 1, "{events:?}");
    assert_eq!(
        committed[0]["user"],
        "What is the capital of France, please?"
    );
    assert_eq!(committed[0]["assistant"], "Paris is the capital of France.");
    let host = server.base_url().replace("http://", "").replace("/v1", "");
    let won = winners(&events);
    println!("hosted answers: {won:?}");
    assert_eq!(
        won,
        [
            ("stt".into(), format!("stt:{host}/whisper-1")),
            ("llm".into(), format!("{host}/chat-x")),
            ("tts".into(), format!("tts:{host}/tts-1")),
        ]
    );
    let routes: Vec<&str> = server.requests().iter().map(|r| r.route).collect();
    for route in ["transcriptions", "chat", "speech"] {
        assert!(routes.contains(&route), "{route}: {routes:?}");
    }

    // 2. The server fails everything: the embedded models answer.
    let failing = runtime.block_on(async { FakeOpenAi::start().await.expect("server") });
    failing.set_default(Reply::status(500));
    let dir = tempfile::tempdir().expect("tempdir");
    let events = replay_cli(&failing.base_url(), dir.path());
    let committed = of_type(&events, "committed");
    assert_eq!(committed.len(), 1, "{events:?}");
    assert!(
        committed[0]["user"]
            .as_str()
            .is_some_and(|u| u.to_lowercase().contains("capital")),
        "Whisper heard the question: {committed:?}"
    );
    assert!(
        committed[0]["assistant"]
            .as_str()
            .is_some_and(|a| !a.trim().is_empty()),
        "SmolLM2 answered: {committed:?}"
    );
    let won = winners(&events);
    println!("embedded answers: {won:?}");
    for (stage, winner) in &won {
        assert!(winner.contains("embedded/"), "{stage}: {won:?}");
    }
    assert_eq!(won.len(), 3, "{won:?}");
    let routes: Vec<&str> = failing.requests().iter().map(|r| r.route).collect();
    for route in ["transcriptions", "chat", "speech"] {
        assert!(routes.contains(&route), "{route} was tried: {routes:?}");
    }
}
