//! Costs of the LLM layer's bookkeeping: one router decision, one span's
//! events (started, first_token, 20 tokens, completed), and a whole leg on a
//! zero-latency scripted model against reading the same stream bare.

use colloquy::frame::CancelReason;
use colloquy::llm::leg::{LegInput, LegModel};
use colloquy::llm::retry::RetryPolicy;
use colloquy::llm::span::{LegSpan, SpanHeader};
use colloquy::llm::telemetry::{StoreClock, TelemetryStore};
use colloquy::llm::testkit::{Script, ScriptedModel};
use colloquy::llm::{
    CancelSignal, ChatMessage, ChatModel, ChatRequest, FinishReason, LegRunner, LegTimeouts,
    Router, RouterPolicy, SpanSink, Telemetry, WindowConfig,
};
use criterion::{criterion_group, criterion_main, Criterion};
use futures::StreamExt;
use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A router over `n` scripted candidates (the last one local) with full
/// telemetry windows.
fn router_with(n: usize) -> Router {
    let window = WindowConfig::default();
    let mut store = TelemetryStore::new(window.clone());
    let clock = StoreClock::at(1_000_000);
    let now = clock.now_ms();
    let models: Vec<Arc<dyn ChatModel>> = (0..n)
        .map(|i| {
            let provider = if i + 1 == n { "embedded" } else { "p" };
            Arc::new(ScriptedModel::new(
                provider,
                &format!("m{i}"),
                Script::n_tokens(3, 0, 0),
            )) as Arc<dyn ChatModel>
        })
        .collect();
    for (i, m) in models.iter().enumerate() {
        let key = format!("{}/{}", m.provider(), m.model());
        for s in 0..window.max_samples {
            let ttft = Duration::from_millis(200 + 50 * i as u64 + (s as u64 % 7) * 10);
            store.record_served(
                &key,
                Some(ttft),
                Some(ttft * 4),
                Some(40.0),
                now - 1000 + s as u64,
            );
        }
    }
    let telemetry = Telemetry::new(store, clock);
    let runner = LegRunner::new(
        SpanSink::new(16),
        telemetry,
        RetryPolicy::default(),
        LegTimeouts::default(),
    );
    Router::new(
        models.into_iter().map(|m| LegModel::new(m, None)).collect(),
        runner,
        RouterPolicy {
            seed: Some(1),
            ..RouterPolicy::default()
        },
    )
}

/// One routing decision per turn: read every candidate's window from the
/// store and plan (what `Router::plan` does at each turn's start).
fn bench_router(c: &mut Criterion) {
    let rt = runtime();
    let _g = rt.enter();
    let mut group = c.benchmark_group("router_plan_full_windows");
    for n in 2..=6 {
        let router = router_with(n);
        group.bench_function(format!("{n}_candidates"), |b| {
            b.iter(|| black_box(router.plan()))
        });
    }
    group.finish();
}

fn bench_span(c: &mut Criterion) {
    let rt = runtime();
    let _g = rt.enter();
    let sink = SpanSink::new(4096);
    let mut rx = sink.subscribe();
    c.bench_function("span_events_one_leg_20_tokens", |b| {
        b.iter(|| {
            let header = SpanHeader {
                request_id: 1,
                leg_id: 1,
                attempt: 1,
                epoch: 1,
                provider: "p".into(),
                model: "m".into(),
            };
            let mut span = LegSpan::start(sink.clone(), header, 100, 2);
            for _ in 0..20 {
                span.token();
            }
            black_box(span.complete(FinishReason::Stop, None, None));
            while rx.try_recv().is_ok() {}
        })
    });
}

fn bench_leg(c: &mut Criterion) {
    let rt = runtime();
    let model: Arc<ScriptedModel> =
        Arc::new(ScriptedModel::new("p", "m", Script::n_tokens(20, 0, 0)));
    let request = ChatRequest::new(vec![ChatMessage::user("hello")]);
    let mut group = c.benchmark_group("leg_20_tokens");
    group.bench_function("bare_stream", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = model.stream(request.clone()).await.expect("stream");
                while let Some(d) = s.next().await {
                    black_box(d.ok());
                }
            })
        })
    });
    let sink = SpanSink::new(4096);
    let mut rx = sink.subscribe();
    let runner = {
        let _g = rt.enter();
        LegRunner::new(
            sink,
            Telemetry::empty(WindowConfig::default()),
            RetryPolicy::default(),
            LegTimeouts::default(),
        )
    };
    let leg_model = LegModel::new(model.clone() as Arc<dyn ChatModel>, None);
    group.bench_function("leg_runner_with_span", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, mut out) = tokio::sync::mpsc::channel(64);
                let input = LegInput {
                    request: request.clone(),
                    epoch: 1,
                    deadline: tokio::time::Instant::now() + Duration::from_secs(60),
                    cancel: CancelSignal::new(CancellationToken::new(), CancelReason::Shutdown),
                    audio_played: Arc::new(AtomicBool::new(false)),
                };
                let drain = async { while out.recv().await.is_some() {} };
                let run = async {
                    let o = runner.run(&leg_model, &input, 1, &tx).await;
                    drop(tx);
                    o
                };
                let (o, ()) = tokio::join!(run, drain);
                black_box(o);
                while rx.try_recv().is_ok() {}
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_router, bench_span, bench_leg);
criterion_main!(benches);
