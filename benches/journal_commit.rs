//! Journal commit latency per backend (issue 15) and per SQLite
//! `synchronous` mode (issue 18): not a unit test.
//!
//! 1. Through the server's path: [`Writer`] lanes on a [`Store`], 20
//!    sessions each queueing `JOURNAL_BENCH_TURNS` (default 50) committed
//!    rounds as fast as they are acknowledged (a session waits for its turn's
//!    `Written` before the next, as a real conversation commits one turn at a
//!    time): the time from queueing a turn to `Written` (what delays a
//!    `committed` event), p50 / p99 / max, for SQLite (FULL, the default) and
//!    PostgreSQL (`COLLOQUY_TEST_PG_URL`, e.g. from the database
//!    `scripts/fleet-test.sh` starts; skipped without it).
//! 2. One turn write on the SQLite [`Journal`] directly, FULL vs NORMAL.
//!
//! Run: `cargo bench --bench journal_commit` (under `cargo test` it runs a
//! few turns only).

use colloquy::journal::store::{open_store, Store};
use colloquy::journal::writer::{Op, Report, RetryPolicy, Writer};
use colloquy::journal::{percentile, Journal, JournalLocation, Synchronous};
use colloquy::llm::ChatMessage;
use colloquy::turn::{CommittedRound, TurnTiming};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn round(i: usize) -> CommittedRound {
    CommittedRound {
        epoch: i as u64,
        messages: vec![
            ChatMessage::user("What is the capital of France?"),
            ChatMessage::assistant("The capital of France is Paris, on the Seine."),
        ],
        interrupted: false,
        committed_ms: 1000 + i as u64,
        timing: TurnTiming {
            end_of_speech_ms: Some(100),
            stt_ms: Some(300),
            first_token_ms: Some(500),
            first_audio_ms: Some(700),
        },
        model: Some("bench".into()),
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn line(name: &str, v: &[u64]) {
    let p = |q| percentile(v, q).map_or(0.0, |x| x as f64 / 1000.0);
    println!(
        "{name:<34} {:>5} turns  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        v.len(),
        p(50.0),
        p(99.0),
        p(100.0)
    );
}

async fn through_writer(store: Arc<dyn Store>, turns: usize) -> Vec<u64> {
    let lanes = if store.backend() == "sqlite" { 1 } else { 4 };
    let writer = Arc::new(Writer::start(
        store.clone(),
        lanes,
        1024,
        RetryPolicy::default(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let id = store
                .create_session("bench", "bench")
                .await
                .expect("session");
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut lat = Vec::with_capacity(turns);
            for i in 0..turns {
                let t0 = Instant::now();
                let op = Op::Append {
                    session: id.clone(),
                    idx: i as i64,
                    round: Box::new(round(i)),
                    fence: None,
                    seq: i as u64,
                    reply: tx.clone(),
                };
                assert!(writer.submit(op).is_ok(), "queue full");
                match rx.recv().await {
                    Some(Report::Written { .. }) => lat.push(us(t0.elapsed())),
                    other => panic!("turn not written: {other:?}"),
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("session task"));
    }
    writer.close(Duration::from_secs(10)).await;
    all
}

fn sqlite_direct(sync: Synchronous, turns: usize) -> Vec<u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open_with(&dir.path().join("j.sqlite"), sync).expect("open");
    let id = j.start_session(None, "bench", "bench").expect("session");
    (0..turns)
        .map(|i| {
            let t0 = Instant::now();
            j.append_turn(&id, &round(i)).expect("write");
            us(t0.elapsed())
        })
        .collect()
}

fn main() {
    let quick =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let turns: usize = std::env::var("JOURNAL_BENCH_TURNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 50 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("journal commit latency: 20 sessions x {turns} turns, queued to durable (loaded 2-core machine)");
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = JournalLocation::Sqlite(dir.path().join("j.sqlite"));
    let v = rt.block_on(async {
        let store = open_store(&sqlite, None).await.expect("sqlite store");
        through_writer(store, turns).await
    });
    line("writer -> sqlite (synchronous=FULL)", &v);
    match std::env::var("COLLOQUY_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => {
            let loc = JournalLocation::parse(&url).expect("url");
            let v = rt.block_on(async {
                let store = open_store(&loc, None).await.expect("postgres store");
                through_writer(store, turns).await
            });
            line("writer -> postgres (4 lanes)", &v);
        }
        _ => println!("writer -> postgres: skipped (no COLLOQUY_TEST_PG_URL)"),
    }
    line(
        "sqlite direct, synchronous=FULL",
        &sqlite_direct(Synchronous::Full, turns * 4),
    );
    line(
        "sqlite direct, synchronous=NORMAL",
        &sqlite_direct(Synchronous::Normal, turns * 4),
    );
}
