//! The STT and TTS stages' routers (the same core as the LLM's) on a paused
//! clock: a hosted transcription service that answers 404 or 500, or times
//! out, loses to the local transcript; a hosted voice that fails lets the
//! local voice speak; the failing service cools down and `status` shows it;
//! the stack's store is written and read back by `status`.
//!
//! The local candidates here are scripted; `tests/route_embedded.rs` runs
//! the real Whisper worker and Piper as the fallback.

use async_trait::async_trait;
use colloquy::llm::telemetry::{StoreClock, TelemetryStore};
use colloquy::llm::testkit::{FakeOpenAi, Reply};
use colloquy::llm::{Telemetry, WindowConfig};
use colloquy::route::status::{rows, CandidateState};
use colloquy::route::{RoutePolicy, Stage, StageCandidate};
use colloquy::stt::openai::OpenAiStt;
use colloquy::stt::routed::RoutedStt;
use colloquy::stt::{SpeechToText, SttError, Transcript};
use colloquy::tts::openai::OpenAiTts;
use colloquy::tts::routed::RoutedTts;
use colloquy::tts::{Speech, TextToSpeech, TtsError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A local recogniser: `text` after `delay`, cancellable.
struct LocalStt {
    delay: Duration,
}

#[async_trait]
impl SpeechToText for LocalStt {
    fn name(&self) -> &str {
        "whisper-fake"
    }

    async fn transcribe(
        &self,
        _: &[i16],
        cancel: &CancellationToken,
    ) -> Result<Transcript, SttError> {
        tokio::select! {
            _ = cancel.cancelled() => Err(SttError::Cancelled),
            _ = tokio::time::sleep(self.delay) => Ok(Transcript { text: "local words".into() }),
        }
    }
}

/// A local voice: 100 ms of audio at 22.05 kHz after `delay`.
struct LocalTts {
    delay: Duration,
}

#[async_trait]
impl TextToSpeech for LocalTts {
    fn name(&self) -> &str {
        "piper-fake"
    }

    async fn synthesize(&self, _: &str, cancel: &CancellationToken) -> Result<Speech, TtsError> {
        tokio::select! {
            _ = cancel.cancelled() => Err(TtsError::Cancelled),
            _ = tokio::time::sleep(self.delay) => Ok(Speech { samples: vec![100; 2_205], sample_rate: 22_050 }),
        }
    }
}

fn telemetry() -> Telemetry {
    Telemetry::new(
        TelemetryStore::new(WindowConfig::default()),
        StoreClock::at(4_000_000),
    )
}

fn policy() -> RoutePolicy {
    // No probe: the local candidate starts only on failure or at the hedge.
    RoutePolicy {
        probe: false,
        exploration_rate: 0.0,
        seed: Some(5),
        ..RoutePolicy::default()
    }
}

fn stt_router(server: &FakeOpenAi, telemetry: &Telemetry) -> RoutedStt {
    RoutedStt::new(
        vec![
            StageCandidate {
                name: "hosted/whisper-1".into(),
                backend: Arc::new(OpenAiStt::new(&server.base_url(), "whisper-1", None))
                    as Arc<dyn SpeechToText>,
                local: false,
            },
            StageCandidate {
                name: "embedded/whisper-fake".into(),
                backend: Arc::new(LocalStt {
                    delay: Duration::from_millis(400),
                }),
                local: true,
            },
        ],
        policy(),
        telemetry.clone(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_hosted_transcription_that_fails_or_times_out_loses_to_the_local_transcript() {
    let audio = vec![500i16; 16_000];
    for (what, reply, answer_by) in [
        ("404", Reply::status(404), 400),
        ("500", Reply::status(500), 400),
        (
            "timeout",
            Reply::tokens(["late hosted words"]).first_token_after(Duration::from_secs(60)),
            1_500 + 400,
        ),
    ] {
        let server = FakeOpenAi::start().await.expect("server");
        server.set_default(reply.first_token_after(Duration::from_millis(30)));
        if what == "timeout" {
            server.set_default(
                Reply::tokens(["late hosted words"]).first_token_after(Duration::from_secs(60)),
            );
        }
        let telemetry = telemetry();
        let stt = stt_router(&server, &telemetry);
        let start = Instant::now();
        let (t, key) = stt
            .transcribe_served(&audio, &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let took = start.elapsed().as_millis() as u64;
        assert_eq!(t.text, "local words", "{what}");
        assert_eq!(key, "stt:embedded/whisper-fake", "{what}");
        assert!(took <= answer_by + 30, "{what}: {took} ms");
        // A shadowed hosted request runs to its cap (3 s) before it is cancelled.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let table = rows(&telemetry.lock(), telemetry.now_ms());
        let hosted = table
            .iter()
            .find(|r| r.key == "stt:hosted/whisper-1")
            .expect("hosted row");
        assert_eq!(hosted.stage, Stage::Stt);
        if what == "timeout" {
            assert_eq!(
                hosted.error_rate, None,
                "a lost hedge is no error: {hosted:?}"
            );
            assert_eq!(hosted.state, CandidateState::Healthy);
            let s = telemetry.summary("stt:hosted/whisper-1");
            assert_eq!(s.ttft_p50_ms, Some(3_000), "censored at the shadow cap");
        } else {
            assert!(
                matches!(hosted.state, CandidateState::CoolingDown(_)),
                "{what}: {hosted:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hosted_transcription_that_answers_is_used_and_the_local_one_never_starts() {
    let server = FakeOpenAi::start().await.expect("server");
    server
        .set_default(Reply::tokens(["hosted words"]).first_token_after(Duration::from_millis(200)));
    let telemetry = telemetry();
    let stt = stt_router(&server, &telemetry);
    let (t, key) = stt
        .transcribe_served(&[1i16; 1_600], &CancellationToken::new())
        .await
        .expect("hosted");
    assert_eq!(
        (t.text.as_str(), key.as_str()),
        ("hosted words", "stt:hosted/whisper-1")
    );
    assert_eq!(
        telemetry.summary("stt:embedded/whisper-fake").samples,
        0,
        "no hedge before the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_hosted_voice_lets_the_local_voice_speak() {
    let server = FakeOpenAi::start().await.expect("server");
    server.set_default(Reply::status(500));
    let telemetry = telemetry();
    let tts = RoutedTts::new(
        vec![
            StageCandidate {
                name: "hosted/tts-1".into(),
                backend: Arc::new(OpenAiTts::new(&server.base_url(), "tts-1", "alloy", None))
                    as Arc<dyn TextToSpeech>,
                local: false,
            },
            StageCandidate {
                name: "embedded/piper-fake".into(),
                backend: Arc::new(LocalTts {
                    delay: Duration::from_millis(120),
                }),
                local: true,
            },
        ],
        policy(),
        telemetry.clone(),
    );
    for sentence in ["First sentence.", "Second one."] {
        let (speech, key) = tts
            .synthesize_served(sentence, &CancellationToken::new())
            .await
            .expect("speech");
        assert_eq!(key, "tts:embedded/piper-fake");
        assert_eq!(speech.sample_rate, 22_050);
    }
    assert_eq!(
        server.request_count(),
        1,
        "the hosted voice cools down after its failure: the second sentence goes local at once"
    );
    assert!(telemetry.in_cooldown("tts:hosted/tts-1"));
}

#[test]
fn the_stack_writes_its_store_and_status_reads_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(async { FakeOpenAi::start().await.expect("server") });
    server.push_transcription([Reply::tokens(["hello there"])]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("telemetry.json");
    let opts = colloquy::agent::stack::StackOptions {
        llm: vec![format!("{}::chat", server.base_url())],
        stt: vec![format!("{}::whisper-1", server.base_url())],
        tts: vec![format!("{}::tts-1", server.base_url())],
        telemetry: colloquy::agent::stack::StoreLocation::At(path.clone()),
        ..Default::default()
    };
    let store = colloquy::models::ModelStore::new(dir.path());
    let stack = {
        let _g = runtime.enter();
        colloquy::agent::stack::VoiceStack::build(&opts, &store).expect("hosted stack")
    };
    let (t, _) = runtime
        .block_on(
            stack
                .stt
                .transcribe_served(&[3i16; 3_200], &CancellationToken::new()),
        )
        .expect("transcript");
    assert_eq!(t.text, "hello there");
    stack.save();
    let table = colloquy::llm::telemetry::status_table(&path).expect("status");
    println!("{table}");
    assert!(table.starts_with("STAGE"), "{table}");
    assert!(
        table.contains("stt") && table.contains("/whisper-1"),
        "{table}"
    );
    assert!(
        table.contains("100%") && table.contains("healthy"),
        "{table}"
    );
}

/// A malformed candidate is bad input: exit status 2 and an error naming
/// the entry and where it came from (the flag or the variable).
#[test]
fn a_bad_candidate_exits_2_naming_the_entry_and_its_source() {
    let wav =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/speech/q-france.wav");
    for (args, var, needle) in [
        (
            vec!["--llm", "ftp://127.0.0.1/v1::m"],
            None,
            "--llm: `ftp://127.0.0.1/v1::m`: scheme `ftp`",
        ),
        (
            vec!["--stt", "embedded,,embedded"],
            None,
            "--stt: an empty candidate",
        ),
        (
            vec!["--tts", "embedded", "--tts", "embedded"],
            None,
            "--tts: a candidate is listed twice",
        ),
        (
            vec![],
            Some(("COLLOQUY_TTS", "bogus")),
            "COLLOQUY_TTS: unknown candidate `bogus`",
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_colloquy"));
        cmd.arg("replay").arg(&wav).arg("--no-journal").args(&args);
        for v in [
            "COLLOQUY_LLM",
            "COLLOQUY_STT",
            "COLLOQUY_TTS",
            "COLLOQUY_CONFIG",
        ] {
            cmd.env_remove(v);
        }
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run colloquy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains("fix:"),
            "{args:?}: {stderr}"
        );
    }
}
