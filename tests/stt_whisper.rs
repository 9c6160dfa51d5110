//! The embedded Whisper backend transcribes real speech well enough: word
//! error rate ≤ 10 % over the real recordings of Debian's
//! `pocketsphinx-testdata` package (LibriVox read speech and spoken card
//! names), and a cancelled call leaves the backend usable.
//!
//! Needs the converted model (`colloquy models fetch`; `COLLOQUY_MODELS`
//! selects the store) and the recordings (`apt-get install
//! pocketsphinx-testdata`, or `POCKETSPHINX_TESTDATA` pointing at its
//! `test/data` folder). Without them the tests print why and pass, unless
//! `COLLOQUY_REQUIRE_MODELS=1`, which makes a missing model or recording a
//! failure (CI sets it).
#![cfg(feature = "embedded")]

use std::path::{Path, PathBuf};
use std::time::Instant;

use colloquy::models::{ModelId, ModelStore};
use colloquy::stt::normalize::word_errors;
use colloquy::stt::whisper::{AudioCtx, Outcome, WhisperConfig, WhisperStt};
use colloquy::stt::{SpeechToText, SttError};
use tokio_util::sync::CancellationToken;

/// Where Debian installs the package's test data.
const DEBIAN_TESTDATA: &str = "/usr/share/pocketsphinx/test/data";

fn required() -> bool {
    std::env::var("COLLOQUY_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

/// The model path, or `None` (after saying why) when the test should skip.
fn model() -> Option<PathBuf> {
    match ModelStore::from_env().require(ModelId::WhisperTinyEn) {
        Ok(p) => Some(p),
        Err(e) if required() => panic!("COLLOQUY_REQUIRE_MODELS=1 but {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

struct Clip {
    name: String,
    path: PathBuf,
    reference: String,
}

/// Parses Sphinx transcription lines: `<s> words </s> (id)`.
fn parse_transcription(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (words, id) = line.rsplit_once('(')?;
            let id = id.trim().trim_end_matches(')').to_string();
            let words = words
                .split_whitespace()
                .filter(|w| *w != "<s>" && *w != "</s>")
                .collect::<Vec<_>>()
                .join(" ");
            Some((id, words))
        })
        .collect()
}

fn clips() -> Option<Vec<Clip>> {
    let root = std::env::var_os("POCKETSPHINX_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEBIAN_TESTDATA));
    let mut out = Vec::new();
    for (dir, list) in [
        ("librivox", "librivox/transcription"),
        ("cards", "cards/cards.transcription"),
    ] {
        let text = match std::fs::read_to_string(root.join(list)) {
            Ok(t) => t,
            Err(e) if required() => {
                panic!("recordings missing: {}: {e}", root.join(list).display())
            }
            Err(e) => {
                eprintln!("skipping: {}: {e}", root.join(list).display());
                return None;
            }
        };
        for (id, reference) in parse_transcription(&text) {
            out.push(Clip {
                name: format!("{dir}/{id}"),
                path: root.join(dir).join(format!("{id}.wav")),
                reference,
            });
        }
    }
    assert!(
        out.len() >= 10,
        "expected at least 10 clips, found {}",
        out.len()
    );
    Some(out)
}

/// Reads a 16 kHz mono 16-bit WAV (asserting the format).
fn read_wav(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16_000, 1, 16),
        "{} is not 16 kHz mono 16-bit",
        path.display()
    );
    r.samples::<i16>().map(|s| s.unwrap()).collect()
}

/// Transcribes every clip; returns (errors, words) and prints per-clip WER.
async fn run_all(stt: &WhisperStt, clips: &[Clip]) -> (usize, usize) {
    let (mut errs, mut words) = (0, 0);
    for clip in clips {
        let audio = read_wav(&clip.path);
        let t = Instant::now();
        let got = stt
            .transcribe(&audio, &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", clip.name));
        let (e, n) = word_errors(&clip.reference, &got.text);
        println!(
            "{:<52} {:>4.1} s audio {:>5} ms  WER {:>5.1} %  {:?}",
            clip.name,
            audio.len() as f64 / 16_000.0,
            t.elapsed().as_millis(),
            100.0 * e as f64 / n as f64,
            got.text
        );
        errs += e;
        words += n;
    }
    (errs, words)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_recordings_transcribe_with_wer_at_most_ten_percent() {
    let (Some(path), Some(clips)) = (model(), clips()) else {
        return;
    };
    // Both encoder windows: the full one and the fitted one the pipeline uses.
    for ctx in [AudioCtx::Full, AudioCtx::FIT_DEFAULT] {
        let config = WhisperConfig {
            audio_ctx: ctx,
            ..WhisperConfig::default()
        };
        let stt = WhisperStt::load(&path, config).unwrap();
        let (errs, words) = run_all(&stt, &clips).await;
        let wer = 100.0 * errs as f64 / words as f64;
        println!("TOTAL ({ctx:?}): {errs} errors / {words} words = WER {wer:.1} %");
        assert!(wer <= 10.0, "{ctx:?}: WER {wer:.1} % > 10 %");
    }
}

/// The fitted window's ladder (crates/whisper-worker/src/window.rs) on the
/// short card names, which loop with a short window ("10 of clubs 10 of
/// clubs …", "5 5 5 …"): every one comes out right and no decode is a loop.
#[test]
fn short_clips_in_the_fitted_window_come_out_right_not_looping() {
    let (Some(path), Some(clips)) = (model(), clips()) else {
        return;
    };
    let stt = WhisperStt::load(&path, WhisperConfig::default()).unwrap();
    let cards: Vec<_> = clips
        .iter()
        .filter(|c| c.name.starts_with("cards/"))
        .collect();
    assert!(!cards.is_empty(), "no card clips");
    let (mut errs, mut words) = (0, 0);
    for clip in cards {
        let d = stt
            .decode_blocking(&read_wav(&clip.path), AudioCtx::FIT_DEFAULT)
            .unwrap();
        println!("{}: frames {} {:?}", clip.name, d.frames, d.text);
        let (e, n) = word_errors(&clip.reference, &d.text);
        assert!(
            d.text.split_whitespace().count() <= n + 2,
            "{}: {:?} is longer than {:?}",
            clip.name,
            d.text,
            clip.reference
        );
        errs += e;
        words += n;
    }
    // The full window makes 1 error in these 15 words ("queen of clothes").
    assert!(errs <= 2, "{errs} errors in {words} words");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_transcription_returns_cancelled_and_the_backend_stays_usable() {
    let (Some(path), Some(clips)) = (model(), clips()) else {
        return;
    };
    let stt = WhisperStt::load(&path, WhisperConfig::default()).unwrap();
    let audio = read_wav(&clips[0].path);

    let cancel = CancellationToken::new();
    cancel.cancel();
    let r = stt.transcribe(&audio, &cancel).await;
    assert!(matches!(r, Err(SttError::Cancelled)), "{r:?}");

    // Cancel while whisper.cpp runs: the abort callback or the check after
    // inference turns it into Cancelled.
    let cancel = CancellationToken::new();
    let t = Instant::now();
    let (r, ()) = tokio::join!(stt.transcribe(&audio, &cancel), async {
        tokio::task::yield_now().await;
        cancel.cancel();
    });
    println!(
        "cancelled mid-inference after {} ms",
        t.elapsed().as_millis()
    );
    assert!(matches!(r, Err(SttError::Cancelled)), "{r:?}");

    let ok = stt
        .transcribe(&audio, &CancellationToken::new())
        .await
        .unwrap();
    let (e, n) = word_errors(&clips[0].reference, &ok.text);
    assert!(e * 5 < n, "backend unusable after cancel: {:?}", ok.text);
}

/// The cancel tests' set-up: a backend on the full window (the longest
/// decode, the worst case to wait behind), the longest clip (to cancel) and
/// another (the next request).
fn cancel_setup(path: &Path, clips: &[Clip]) -> (WhisperStt, Vec<i16>, Vec<i16>) {
    let config = WhisperConfig {
        audio_ctx: AudioCtx::Full,
        ..WhisperConfig::default()
    };
    let stt = WhisperStt::load(path, config).unwrap();
    let long = clips
        .iter()
        .map(|c| read_wav(&c.path))
        .max_by_key(Vec::len)
        .unwrap();
    let next = read_wav(&clips[1].path);
    (stt, long, next)
}

/// Issue 14: a cancelled (speculative) decode frees the worker at once, so
/// the confirmed turn's decode never waits behind it. Over a spread of
/// cancel points (before the decode starts, early in the encoder, later),
/// the cancelled request stops at its first abort check after the cancel
/// (a ggml graph node: at most one more may be in flight), and the request
/// sent right behind it transcribes exactly as it does alone. Counts of
/// work, not wall-clock times, are asserted; the times are printed.
#[test]
fn a_cancelled_decode_stops_within_one_graph_node_and_the_next_is_not_delayed() {
    let (Some(path), Some(clips)) = (model(), clips()) else {
        return;
    };
    let (stt, long, next) = cancel_setup(&path, &clips);
    let t = Instant::now();
    let alone = stt.decode_blocking(&next, AudioCtx::Full).unwrap();
    let alone_ms = t.elapsed().as_millis();
    println!("next decode alone: {alone_ms} ms {:?}", alone.text);
    if !stt.aborts_per_node() {
        eprintln!("note: this build aborts only after the encoder (not Linux)");
    }
    for delay_ms in [0u64, 30, 250] {
        let (a, b) = (stt.next_id(), stt.next_id());
        let (outcome, confirmed, confirmed_ms) = std::thread::scope(|s| {
            let speculative = s.spawn(|| stt.decode_id(a, &long, AudioCtx::Full));
            // Not a timing assumption: any cancel point must satisfy the
            // assertions below; the delays only spread the points.
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            stt.cancel(a);
            let t = Instant::now();
            let confirmed = s.spawn(|| stt.decode_id(b, &next, AudioCtx::Full));
            let outcome = speculative.join().unwrap().unwrap();
            let confirmed = confirmed.join().unwrap().unwrap();
            (outcome, confirmed, t.elapsed().as_millis())
        });
        println!(
            "cancel after {delay_ms:>3} ms: {outcome:?}; next transcript after {confirmed_ms} ms (alone {alone_ms} ms)"
        );
        match outcome {
            Outcome::Cancelled {
                running,
                checks_after_cancel,
                ..
            } => {
                if running && stt.aborts_per_node() {
                    assert!(
                        checks_after_cancel <= 2,
                        "cancel after {delay_ms} ms: {checks_after_cancel} abort checks ran after the cancel"
                    );
                }
                if !running {
                    assert_eq!(checks_after_cancel, 0);
                }
            }
            Outcome::Text(d) => panic!("a 30 s-window decode finished before its cancel: {d:?}"),
        }
        match confirmed {
            Outcome::Text(d) => {
                assert_eq!(d.text, alone.text, "the next decode changed after a cancel");
                assert_eq!(d.waited_checks, 0, "the next decode waited behind another");
            }
            other => panic!("the next decode was not transcribed: {other:?}"),
        }
    }
}

/// A transcription whose future is dropped before its reply (what a router
/// does to a losing or dead leg, and a `select!` to its other branches) is
/// cancelled in the worker like one whose token fired: it is reported
/// cancelled, never transcribed, and the next request runs alone. Before
/// `CancelOnDrop`, the speculative turn's decode ran out in full and the
/// confirmed turn's transcript waited ≈ 180 ms behind it (voice-latency
/// bench, conversation 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transcription_is_cancelled_in_the_worker() {
    let (Some(path), Some(clips)) = (model(), clips()) else {
        return;
    };
    let (stt, long, next) = cancel_setup(&path, &clips);
    let alone = stt.decode_blocking(&next, AudioCtx::Full).unwrap();
    let never = CancellationToken::new();
    for delay_ms in [0u64, 30, 250] {
        let before = stt.replies();
        // Dropped at the timeout: the token never fires.
        let dropped = tokio::time::timeout(
            std::time::Duration::from_millis(delay_ms),
            stt.transcribe(&long, &never),
        )
        .await;
        assert!(
            dropped.is_err(),
            "a 30 s-window decode finished within {delay_ms} ms"
        );
        let confirmed = stt.transcribe(&next, &never).await.unwrap();
        let after = stt.replies();
        println!("dropped after {delay_ms:>3} ms: {before:?} -> {after:?}");
        assert_eq!(confirmed.text, alone.text);
        assert_eq!(
            after.transcribed,
            before.transcribed + 1,
            "the dropped decode ran to its end in the worker"
        );
        assert_eq!(
            after.cancelled_running + after.cancelled_queued,
            before.cancelled_running + before.cancelled_queued + 1
        );
        if stt.aborts_per_node() {
            assert!(
                after.max_checks_after_cancel <= 2,
                "{} abort checks ran after the cancel",
                after.max_checks_after_cancel
            );
        }
    }
}

#[tokio::test]
async fn empty_audio_is_an_input_error() {
    let Some(path) = model() else {
        return;
    };
    let stt = WhisperStt::load(&path, WhisperConfig::default()).unwrap();
    let r = stt.transcribe(&[], &CancellationToken::new()).await;
    assert!(matches!(r, Err(SttError::Input(_))), "{r:?}");
}

/// Measurement, not a check: per-clip latency and WER for the full and
/// fitted encoder windows with 1 and 2 threads. Run with
/// `cargo test --release --test stt_whisper -- --ignored --nocapture`;
/// `STT_FITS=MARGIN_MS:MIN_FRAMES,...` picks the windows (`0:0` = full),
/// `STT_THREADS=1,2` the thread counts.
#[test]
#[ignore = "measurement; prints a table"]
fn measure_audio_ctx_and_threads() {
    let (Some(path), Some(clips)) = (model(), clips()) else {
        return;
    };
    let audio: Vec<(String, String, Vec<i16>)> = clips
        .iter()
        .map(|c| (c.name.clone(), c.reference.clone(), read_wav(&c.path)))
        .collect();
    let threads_list: Vec<usize> = std::env::var("STT_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|t| t.parse().ok())
        .collect();
    for threads in threads_list {
        let config = WhisperConfig {
            threads,
            ..WhisperConfig::default()
        };
        let stt = WhisperStt::load(&path, config).unwrap();
        let fits: Vec<(String, AudioCtx)> = std::env::var("STT_FITS")
            .unwrap_or_else(|_| "0:0,1000:250,3000:500".into())
            .split(',')
            .map(|f| {
                let (m, n) = f.split_once(':').expect("STT_FITS: MARGIN_MS:MIN_FRAMES");
                let (m, n): (u32, u32) = (
                    m.parse().expect("STT_FITS margin"),
                    n.parse().expect("STT_FITS frames"),
                );
                let ctx = if n == 0 {
                    AudioCtx::Full
                } else {
                    AudioCtx::Fit {
                        margin_ms: m,
                        min_frames: n,
                    }
                };
                (format!("{m}:{n}"), ctx)
            })
            .collect();
        for (label, ctx) in fits {
            let (label, ctx) = (label.as_str(), ctx);
            let (mut errs, mut words, mut total_ms, mut fallbacks) = (0, 0, 0u128, 0);
            let mut total_cpu = 0u64;
            for (name, reference, pcm) in &audio {
                let d = stt.decode_blocking(pcm, ctx).unwrap();
                // The worker is a separate process: report its own inference time.
                let cpu = d.elapsed.as_millis() as u64;
                total_cpu += cpu;
                let (e, n) = word_errors(reference, &d.text);
                errs += e;
                words += n;
                total_ms += d.elapsed.as_millis();
                fallbacks += usize::from(d.fell_back);
                println!(
                    "  {label:<4} t{threads} {name:<52} {:>4.1} s {:>5} ms (cpu {cpu:>5} ms) frames {:>4}{} WER {:>5.1} % {:?}",
                    pcm.len() as f64 / 16_000.0,
                    d.elapsed.as_millis(),
                    d.frames,
                    if d.fell_back { " (fallback)" } else { "" },
                    100.0 * e as f64 / n as f64,
                    d.text
                );
            }
            println!(
                "  {label:<4} t{threads} TOTAL WER {:.1} % ({errs}/{words}), mean {} ms wall, {} ms cpu, fallbacks {fallbacks}",
                100.0 * errs as f64 / words as f64,
                total_ms / audio.len() as u128,
                total_cpu / audio.len() as u64
            );
        }
    }
}
