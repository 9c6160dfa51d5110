//! The hosted STT and TTS backends against the in-process OpenAI-compatible
//! server: a transcription and a synthesis round-trip, errors are reported as
//! backend errors with their class, and a cancel returns at once.

use colloquy::llm::testkit::{FakeOpenAi, Reply};
use colloquy::stt::openai::OpenAiStt;
use colloquy::stt::{SpeechToText, SttError};
use colloquy::tts::openai::OpenAiTts;
use colloquy::tts::{TextToSpeech, TtsError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn tone(n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| ((i as f32 * 0.05).sin() * 6000.0) as i16)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn transcription_sends_a_wav_and_returns_the_text() {
    let server = FakeOpenAi::start().await.expect("server");
    server.push_transcription([Reply::tokens(["  hello", " world "])]);
    let stt = OpenAiStt::new(&server.base_url(), "whisper-1", None);
    assert_eq!(stt.name(), "openai:whisper-1");
    let t = stt
        .transcribe(&tone(16_000), &CancellationToken::new())
        .await
        .expect("transcript");
    assert_eq!(t.text, "hello world");
    let rec = &server.requests()[0];
    assert_eq!(rec.route, "transcriptions");
    assert!(
        rec.body_len > 32_000,
        "one second of PCM16 was uploaded: {}",
        rec.body_len
    );
}

#[tokio::test(start_paused = true)]
async fn transcription_errors_and_cancels_are_reported() {
    let server = FakeOpenAi::start().await.expect("server");
    server.push_transcription([
        Reply::status(503),
        Reply::tokens(["late"]).first_token_after(Duration::from_secs(5)),
    ]);
    let stt = OpenAiStt::new(&server.base_url(), "whisper-1", None);
    match stt.transcribe(&tone(800), &CancellationToken::new()).await {
        Err(SttError::Hosted { error, .. }) => assert_eq!(error.status, Some(503), "{error}"),
        other => panic!("{other:?}"),
    }
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.cancel();
    });
    let start = tokio::time::Instant::now();
    assert!(matches!(
        stt.transcribe(&tone(800), &cancel).await,
        Err(SttError::Cancelled)
    ));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert!(matches!(
        stt.transcribe(&[], &CancellationToken::new()).await,
        Err(SttError::Input(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn speech_returns_decoded_wav_at_its_own_rate() {
    let server = FakeOpenAi::start().await.expect("server");
    server.push_speech([Reply::tokens(["a", "b", "c"])]);
    let tts = OpenAiTts::new(&server.base_url(), "tts-1", "alloy", None);
    let speech = tts
        .synthesize("Hello.", &CancellationToken::new())
        .await
        .expect("speech");
    assert_eq!(speech.sample_rate, 24_000);
    assert_eq!(speech.samples.len(), 720);
    let body = &server.requests()[0].body;
    assert_eq!(body["voice"], "alloy");
    assert_eq!(body["model"], "tts-1");
    assert_eq!(body["response_format"], "wav");
    assert_eq!(body["input"], "Hello.");
}

#[tokio::test(start_paused = true)]
async fn speech_errors_are_backend_errors() {
    let server = FakeOpenAi::start().await.expect("server");
    server.push_speech([Reply::rate_limited(1.0)]);
    let tts = OpenAiTts::new(&server.base_url(), "tts-1", "alloy", None);
    match tts.synthesize("Hi.", &CancellationToken::new()).await {
        Err(TtsError::Hosted { error, .. }) => {
            assert_eq!(
                error.class,
                colloquy::llm::ErrorClass::RateLimited,
                "{error}"
            );
            assert_eq!(error.status, Some(429), "{error}");
            assert_eq!(error.retry_after, Some(Duration::from_secs(1)), "{error}");
        }
        other => panic!("{other:?}"),
    }
}
