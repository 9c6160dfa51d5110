//! API keys never appear in logs, span events, errors or Debug output, while
//! the server does receive them.

use colloquy::frame::CancelReason;
use colloquy::llm::config::{resolve_key, LlmConfig};
use colloquy::llm::leg::{LegInput, LegModel};
use colloquy::llm::openai::OpenAiChat;
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::testkit::{FakeOpenAi, Reply};
use colloquy::llm::{
    CancelSignal, ChatMessage, ChatModel, ChatRequest, LegRunner, LegTimeouts, Router, SpanSink,
    Telemetry, WindowConfig,
};
use colloquy::stt::openai::OpenAiStt;
use colloquy::stt::SpeechToText;
use colloquy::tts::openai::OpenAiTts;
use colloquy::tts::TextToSpeech;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "sk-test-SECRET-0123456789abcdef";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn api_keys_never_appear_in_logs_events_errors_or_debug() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = FakeOpenAi::start().await.expect("server");
    server.push_chat([
        Reply::default(),
        Reply::status(401),
        Reply::rate_limited(0.1),
        Reply::tokens(["a", "b"]).reset_after(1),
        Reply::tokens(["a", "b"]).malformed_after(1),
    ]);
    let env = |k: &str| (k == "TEST_KEY").then(|| SECRET.to_string());
    let key = resolve_key(Some("TEST_KEY"), "fake/m", &env).expect("key");
    let chat = OpenAiChat::new("fake", &server.base_url(), "m", key.clone());
    let sink = SpanSink::new(1024);
    let mut events = sink.subscribe();
    let runner = LegRunner::new(
        sink,
        Telemetry::empty(WindowConfig::default()),
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        LegTimeouts::default(),
    );
    let model = LegModel::new(Arc::new(chat) as Arc<dyn ChatModel>, None);
    let mut debug = String::new();
    for _ in 0..5 {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let input = LegInput {
            request: ChatRequest::new(vec![ChatMessage::user("hi")]),
            epoch: 1,
            deadline: tokio::time::Instant::now() + Duration::from_secs(10),
            cancel: CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown),
            audio_played: Arc::new(AtomicBool::new(false)),
        };
        let run = async {
            let o = runner.run(&model, &input, 1, &tx).await;
            drop(tx);
            o
        };
        let drain = async { while rx.recv().await.is_some() {} };
        let (outcome, ()) = tokio::join!(run, drain);
        debug.push_str(&format!("{outcome:?}\n"));
    }
    server.push_transcription([Reply::status(500)]);
    server.push_speech([Reply::status(401)]);
    let stt = OpenAiStt::new(&server.base_url(), "whisper-1", key.clone());
    let tts = OpenAiTts::new(&server.base_url(), "tts-1", "alloy", key.clone());
    let e1 = stt
        .transcribe(&[1; 1600], &CancellationToken::new())
        .await
        .expect_err("500");
    let e2 = tts
        .synthesize("hi", &CancellationToken::new())
        .await
        .expect_err("401");
    debug.push_str(&format!(
        "{e1:?} {e1} {e2:?} {e2} {stt:?} {tts:?} {model:?} {key:?}\n"
    ));
    let mut config = LlmConfig::default();
    config
        .apply_cli(&[format!("{}::m", server.base_url())], &[], &[], &|k| {
            (k == "OPENAI_API_KEY").then(|| SECRET.to_string())
        })
        .expect("cli");
    let router = Router::from_config(
        &config,
        SpanSink::default(),
        Telemetry::empty(WindowConfig::default()),
        &|k| (k == "OPENAI_API_KEY").then(|| SECRET.to_string()),
    )
    .expect("router");
    debug.push_str(&format!("{router:?} {config:?}\n"));

    let spans: Vec<String> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| serde_json::to_string(&e.to_frame_event()).expect("json"))
        .collect();
    assert!(spans.len() >= 10, "{spans:?}");
    let logs = String::from_utf8_lossy(&capture.0.lock().expect("lock")).into_owned();
    assert!(logs.contains("llm span"), "tracing saw the spans");
    assert!(
        server.requests().iter().all(|r| r.authorized),
        "the key was sent"
    );
    for (what, text) in [
        ("logs", &logs),
        ("debug", &debug),
        ("spans", &spans.join("\n")),
    ] {
        assert!(!text.contains(SECRET), "the key leaked into {what}");
        assert!(
            !text.contains("0123456789abcdef"),
            "part of the key leaked into {what}"
        );
    }
}
