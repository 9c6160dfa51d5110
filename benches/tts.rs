//! Speech synthesis and chunking costs.
//!
//! Criterion benches: espeak and Piper time per 10-word sentence, chunker
//! throughput. Piper needs the voice files (`COLLOQUY_MODELS`, or
//! `COLLOQUY_PIPER_ONNX` + `COLLOQUY_ONNXRUNTIME_LIB`) and is skipped without
//! them.
//!
//! With `COLLOQUY_BENCH_REPORT=1` a one-shot report follows: espeak
//! first-audio latency and real-time factor, Piper load time and real-time
//! factor, llama load / time to first token / decode rate (needs
//! `COLLOQUY_LLM_GGUF` or `COLLOQUY_MODELS`), and the decode rate while Piper
//! synthesises on the other core, for 1 and 2 threads on each side.

use std::hint::black_box;
use std::time::{Duration, Instant};

use colloquy::tts::chunker::SentenceChunker;
use colloquy::tts::espeak::{EspeakTts, DEFAULT_RATE_WPM};
use colloquy::tts::TextToSpeech;
use criterion::{Criterion, Throughput};
use tokio_util::sync::CancellationToken;

const SENTENCE: &str = "The quick brown fox jumps over the lazy sleeping dog today.";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn espeak(c: &mut Criterion) {
    let rt = runtime();
    let tts = EspeakTts::new(DEFAULT_RATE_WPM).expect("libespeak-ng");
    let never = CancellationToken::new();
    c.bench_function("espeak/10_words", |b| {
        b.iter(|| {
            rt.block_on(tts.synthesize(black_box(SENTENCE), &never))
                .unwrap()
        })
    });
}

#[cfg(feature = "embedded")]
fn piper_voice(threads: usize) -> Option<colloquy::tts::PiperTts> {
    let (onnx, json, lib) = colloquy::tts::piper::default_voice_paths()?;
    if !(onnx.is_file() && json.is_file() && lib.is_file()) {
        return None;
    }
    Some(colloquy::tts::PiperTts::load(&onnx, &json, &lib, threads).expect("Piper voice"))
}

#[cfg(feature = "embedded")]
fn piper(c: &mut Criterion) {
    let never = CancellationToken::new();
    for threads in [1, 2] {
        let Some(voice) = piper_voice(threads) else {
            eprintln!("piper benches skipped: no voice files");
            return;
        };
        let options = ort::session::RunOptions::new().expect("run options");
        let mut group = c.benchmark_group("piper");
        group.sample_size(20);
        group.bench_function(format!("10_words/threads={threads}"), |b| {
            b.iter(|| {
                voice
                    .synthesize_blocking(black_box(SENTENCE), &never, &options)
                    .unwrap()
            })
        });
        group.finish();
    }
}

fn chunker(c: &mut Criterion) {
    let text = "Mr. Smith paid $3.14 at 10:30, e.g. for coffee. Then he left! \
                Did he come back? Nobody knows... "
        .repeat(50);
    // LLM-like deltas of about four bytes.
    let deltas: Vec<&str> = {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, _) in text.char_indices() {
            if i - start >= 4 {
                out.push(&text[start..i]);
                start = i;
            }
        }
        out.push(&text[start..]);
        out
    };
    let mut group = c.benchmark_group("chunker");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("streamed_4_byte_deltas", |b| {
        b.iter(|| {
            let mut chunker = SentenceChunker::default();
            let mut n = 0;
            for d in &deltas {
                n += chunker.push(black_box(d)).len();
            }
            n + chunker.finish().len()
        })
    });
    group.finish();
}

fn report() {
    let rt = runtime();
    let never = CancellationToken::new();
    let tts = EspeakTts::new(DEFAULT_RATE_WPM).expect("libespeak-ng");
    let mut first = Vec::new();
    let mut rtf = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let audio = rt.block_on(tts.synthesize_timed(SENTENCE, &never)).unwrap();
        let took = t.elapsed().as_secs_f64();
        first.push(audio.first_audio.unwrap_or_default().as_secs_f64() * 1e3);
        rtf.push(took / (audio.speech.samples.len() as f64 / audio.speech.sample_rate as f64));
    }
    println!(
        "espeak: first audio median {:.2} ms, RTF median {:.4}",
        median(&mut first),
        median(&mut rtf)
    );
    #[cfg(feature = "embedded")]
    embedded_report(&rt);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(feature = "embedded")]
fn embedded_report(rt: &tokio::runtime::Runtime) {
    use colloquy::llm::llama::{default_model_path, LlamaChat, LlamaOptions};
    use colloquy::llm::{ChatDelta, ChatMessage, ChatModel, ChatRequest};
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let never = CancellationToken::new();
    let options = ort::session::RunOptions::new().expect("run options");
    for threads in [1, 2] {
        let t = Instant::now();
        let Some(voice) = piper_voice(threads) else {
            println!("piper: skipped (no voice files)");
            break;
        };
        let load = t.elapsed();
        let mut per = Vec::new();
        let mut rtf = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let speech = voice
                .synthesize_blocking(SENTENCE, &never, &options)
                .unwrap();
            let took = t.elapsed().as_secs_f64();
            per.push(took * 1e3);
            rtf.push(took / (speech.samples.len() as f64 / speech.sample_rate as f64));
        }
        println!(
            "piper threads={threads}: load {:.0} ms, 10-word sentence median {:.0} ms, RTF {:.3}",
            load.as_secs_f64() * 1e3,
            median(&mut per),
            median(&mut rtf)
        );
    }

    let Some(gguf) = default_model_path().filter(|p| p.is_file()) else {
        println!("llama: skipped (no model file)");
        return;
    };
    let question = |content: &str, max_tokens: u32| {
        let mut r = ChatRequest::new(vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user(content),
        ]);
        r.max_tokens = max_tokens;
        r
    };
    // (ttft, decode tokens/s, tokens)
    let generate = |chat: &LlamaChat, request: ChatRequest| {
        rt.block_on(async {
            let start = Instant::now();
            let mut stream = chat.stream(request).await.unwrap();
            let mut first = None;
            let mut last = start;
            let mut n = 0u32;
            while let Some(item) = stream.next().await {
                if let ChatDelta::Text(_) = item.unwrap() {
                    n += 1;
                    last = Instant::now();
                    first.get_or_insert(last);
                }
            }
            let first = first.unwrap_or(last);
            let decode = (last - first).as_secs_f64();
            (
                first - start,
                f64::from(n.saturating_sub(1)) / decode.max(1e-9),
                n,
            )
        })
    };
    let long = "Count from one to fifty, writing each number as a word.";
    // (decode threads, prefill threads)
    for (llm_threads, prefill) in [(1, 1), (1, 2), (2, 2)] {
        let options = LlamaOptions {
            threads: llm_threads,
            prefill_threads: Some(prefill),
            ..LlamaOptions::default()
        };
        let chat = LlamaChat::load(&gguf, options).expect("llama model");
        println!(
            "llama threads={llm_threads}/{prefill}: load {:.0} ms",
            chat.load_time().as_secs_f64() * 1e3
        );
        // Cold prompt (nothing cached), then the same prefix again.
        let (ttft, _, _) = generate(&chat, question("What is the capital of France?", 24));
        let (ttft_warm, _, _) = generate(&chat, question("What is the capital of Spain?", 24));
        let (_, rate, n) = generate(&chat, question(long, 96));
        println!(
            "llama threads={llm_threads}/{prefill}: TTFT cold {:.0} ms, warm prefix {:.0} ms; decode alone {rate:.1} tok/s ({n} tokens)",
            ttft.as_secs_f64() * 1e3,
            ttft_warm.as_secs_f64() * 1e3
        );
        for piper_threads in [1, 2] {
            let Some(voice) = piper_voice(piper_threads) else {
                break;
            };
            let stop = Arc::new(AtomicBool::new(false));
            let sentences = Arc::new(AtomicU64::new(0));
            let busy_us = Arc::new(AtomicU64::new(0));
            let worker = {
                let (stop, sentences, busy_us) = (
                    Arc::clone(&stop),
                    Arc::clone(&sentences),
                    Arc::clone(&busy_us),
                );
                std::thread::spawn(move || {
                    let never = CancellationToken::new();
                    let options = ort::session::RunOptions::new().expect("run options");
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        voice
                            .synthesize_blocking(SENTENCE, &never, &options)
                            .unwrap();
                        busy_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        sentences.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            // Let Piper get going before decoding starts.
            while sentences.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let before = (
                sentences.load(Ordering::Relaxed),
                busy_us.load(Ordering::Relaxed),
            );
            let (_, rate, n) = generate(&chat, question(long, 96));
            let after = (
                sentences.load(Ordering::Relaxed),
                busy_us.load(Ordering::Relaxed),
            );
            stop.store(true, Ordering::Relaxed);
            let _ = worker.join();
            let done = after.0 - before.0;
            let per_sentence = if done > 0 {
                format!("{:.0} ms", (after.1 - before.1) as f64 / done as f64 / 1e3)
            } else {
                "none finished".to_string()
            };
            println!(
                "llama threads={llm_threads}/{prefill} + piper threads={piper_threads}: decode {rate:.1} tok/s ({n} tokens); piper {done} sentences, {per_sentence} each"
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    espeak(&mut c);
    #[cfg(feature = "embedded")]
    piper(&mut c);
    chunker(&mut c);
    c.final_summary();
    if std::env::var("COLLOQUY_BENCH_REPORT").is_ok_and(|v| v == "1") {
        report();
    }
}
