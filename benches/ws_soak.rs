//! Real-time benchmarks of `colloquy serve` under adversity (issue 18), not
//! unit tests. Each scenario starts a fresh server process (`colloquy serve
//! --agent parrot`, journal in a temporary directory) and drives it with
//! WebSocket clients that stream `assets/conversation.wav` (looped, each
//! from its own offset) in real time, 20 ms per message, and time every bot
//! audio frame.
//!
//! Each frame is timed two ways (`ws_common`): its *send lateness*, against
//! the server's send schedule (`t0 + max(0, t − 100 ms)` for the frame `t`
//! into a reply whose first frame arrived at t0: the 100 ms send lead), and
//! whether it arrived after the page's jitter buffer needed it (a *gap*, what
//! the user hears). Send lateness is shown as a histogram; "late" is more
//! than 20 ms. The client's own wake-up lag (a task sleeping 20 ms over and
//! over in the clients' runtime) and the server's tick lateness (`/stats`)
//! tell where send lateness comes from.
//!
//! - `slow`: `WS_SLOW_SESSIONS` (10) well-behaved sessions for
//!   `WS_SLOW_SECS` (30) s, first alone, then beside `WS_SLOW_STALLED` (10)
//!   clients that speak and never read (4 KiB receive buffers; the server
//!   runs with `--send-buffer 8192`, so its writes to them block). Reports the
//!   well-behaved sessions' frames later than 20 ms in each run.
//! - `soak`: `WS_SOAK_SESSIONS` (50) sessions for `WS_SOAK_SECS` (1800) s.
//!   Reports frames, late frames by both measures, replies, committed
//!   turns, and the server's RSS and CPU sampled every 10 s, with the RSS
//!   slope after the first minute per minute and per committed turn, and
//!   the late frames of each tenth of the run. `WS_SOAK_GENERATIONS=G`
//!   splits the run into G generations of fresh sessions, one after the
//!   other on the same server, and reports the RSS once each generation's
//!   sessions closed. `WS_SOAK_JOURNAL=off` runs the server with
//!   `--no-journal` (to tell the journal's memory from the sessions').
//!
//! Run: `cargo bench --bench ws_soak` (both), `WS_SOAK_MODE=slow|soak`;
//! short mode: `WS_SOAK_SHORT=1` (slow: 5 s; soak: 10 sessions, 60 s).
//! Under `cargo test` (no `--bench` argument) it exits at once.

mod ws_common;

use colloquy::audio::{read_wav, resample_to_16k};
use futures::{SinkExt, StreamExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use ws_common::{
    client_lag, cpu_secs, env_u64, frame_bytes, rss_anon_kib, rss_kib, server_stats, slope,
    stale_tick, start_server, ClockTotals, FrameClock, Journal, Lag, ServerProc, FRAME,
};

#[derive(Default)]
struct SessionResult {
    clock: FrameClock,
    /// Frames more than 20 ms late against the send schedule, and gaps,
    /// per tenth of the run.
    late_by_tenth: [u64; 10],
    gaps_by_tenth: [u64; 10],
    failed: Option<String>,
}

fn parrot_server(extra: &[&str]) -> ServerProc {
    let journal = match std::env::var("WS_SOAK_JOURNAL").as_deref() {
        Ok("off") => Journal::Off,
        _ => Journal::Temp,
    };
    start_server(journal, |c| {
        c.args(["--agent", "parrot"]).args(extra);
    })
}

/// A well-behaved session: streams in real time, times every bot frame.
async fn run_session(
    url: String,
    audio: Arc<Vec<i16>>,
    offset: usize,
    secs: u64,
    committed: Arc<AtomicU64>,
) -> SessionResult {
    let mut r = SessionResult::default();
    let (ws, _) = match tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await
    {
        Ok(x) => x,
        Err(e) => {
            r.failed = Some(format!("connect: {e}"));
            return r;
        }
    };
    let (mut tx, mut rx) = ws.split();
    let start = Instant::now();
    let run = Duration::from_secs(secs);
    let end = start + run;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut pos = offset - offset % FRAME;
    loop {
        tokio::select! {
            deadline = tick.tick() => {
                if deadline >= end {
                    break;
                }
                if stale_tick(deadline) {
                    continue;
                }
                if tx.send(Message::binary(frame_bytes(&audio, &mut pos))).await.is_err() {
                    r.failed = Some("send failed".into());
                    break;
                }
            }
            msg = rx.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Binary(b))) => {
                        let gaps = r.clock.gaps;
                        let late = r.clock.frame(now, (b.len() / 2) as u64);
                        let tenth = ((now.duration_since(start).as_secs_f64() / run.as_secs_f64() * 10.0) as usize).min(9);
                        if late > 20.0 {
                            r.late_by_tenth[tenth] += 1;
                        }
                        if r.clock.gaps > gaps {
                            r.gaps_by_tenth[tenth] += 1;
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        let s = t.as_str();
                        if s.contains("\"bot_started_speaking\"") || s.contains("\"clear_playback\"") {
                            r.clock.reply_starts();
                        }
                        if s.contains("\"type\":\"committed\"") {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        if s.contains("\"type\":\"error\"") {
                            r.failed = Some(format!("error event: {s}"));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => { r.failed = Some(format!("recv: {e}")); break; }
                    None => { r.failed = Some("closed by server".into()); break; }
                }
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    r
}

/// A client that streams in real time and never reads (a 4 KiB receive
/// buffer, so the server's writes to it block soon).
async fn run_stalled(url: String, audio: Arc<Vec<i16>>, offset: usize, secs: u64) {
    let rest = url.trim_start_matches("ws://");
    let host = rest.split('/').next().unwrap_or(rest);
    let Ok(addr) = host.parse::<std::net::SocketAddr>() else {
        return;
    };
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return;
    };
    let _ = socket.set_recv_buffer_size(4096);
    let Ok(stream) = socket.connect(addr).await else {
        return;
    };
    let Ok((mut ws, _)) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
    else {
        return;
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut pos = offset - offset % FRAME;
    while tick.tick().await < end {
        // A send that cannot go out (the server dropped us) ends the client.
        match tokio::time::timeout(
            Duration::from_secs(1),
            ws.send(Message::binary(frame_bytes(&audio, &mut pos))),
        )
        .await
        {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

struct Totals {
    clock: ClockTotals,
    failed: usize,
    late_by_tenth: [u64; 10],
    gaps_by_tenth: [u64; 10],
}

fn totals(results: &[SessionResult]) -> Totals {
    let mut t = Totals {
        clock: ClockTotals::default(),
        failed: 0,
        late_by_tenth: [0; 10],
        gaps_by_tenth: [0; 10],
    };
    for r in results {
        r.clock.merge_into(&mut t.clock);
        t.failed += usize::from(r.failed.is_some());
        for (a, b) in t.late_by_tenth.iter_mut().zip(r.late_by_tenth) {
            *a += b;
        }
        for (a, b) in t.gaps_by_tenth.iter_mut().zip(r.gaps_by_tenth) {
            *a += b;
        }
    }
    t
}

/// Both measures of lateness, and where send lateness comes from.
fn print_lateness(t: &Totals, lag: &Lag, stats: &serde_json::Value) {
    let c = &t.clock;
    println!(
        "frames {}: send lateness > 20 ms {} ({:.2} %), max {:.1} ms; \
         arrived after the page needed them (gaps) {}, worst {:.1} ms; \
         smallest playout margin {:.1} ms",
        c.frames,
        c.send_late.above(20.0),
        c.send_late.above(20.0) as f64 * 100.0 / c.frames.max(1) as f64,
        c.send_late.max_ms,
        c.gaps,
        c.max_gap_ms,
        c.min_margin_ms.unwrap_or(0.0),
    );
    println!("send lateness histogram (ms): {}", c.send_late.line());
    println!(
        "client wake-up lag (20 ms sleeps in the clients' runtime): > 20 ms {}, max {:.1} ms; {}",
        lag.hist.above(20.0),
        lag.hist.max_ms,
        lag.hist.line()
    );
    if lag.pauses > 0 {
        println!(
            "PAUSED: the processes were stopped {} time(s), {:.0} s in all (a wake-up over 1 s late); \
             the figures above include the frames around those pauses",
            lag.pauses, lag.paused_secs
        );
    }
    println!(
        "server ticks more than 20 ms late: {}, latest {:.1} ms (/stats)",
        stats["ticks_late"],
        stats["max_tick_late_us"].as_f64().unwrap_or(0.0) / 1e3
    );
}

fn slow(audio: &Arc<Vec<i16>>, short: bool) {
    let sessions = env_u64("WS_SLOW_SESSIONS", 10) as usize;
    let stalled = env_u64("WS_SLOW_STALLED", 10) as usize;
    let secs = env_u64("WS_SLOW_SECS", if short { 5 } else { 30 });
    println!("slow clients: {sessions} well-behaved session(s), {secs} s, alone then beside {stalled} clients that never read");
    println!(
        "{:>8} {:>9} {:>9} {:>11} {:>6} {:>8} {:>7}",
        "stalled", "frames", "late>20ms", "max late ms", "gaps", "replies", "failed"
    );
    for n_stalled in [0, stalled] {
        // A small send buffer: the server's writes to the stalled block
        // within a second (the kernel's default grows to hold seconds).
        let server = parrot_server(&["--send-buffer", "8192"]);
        std::thread::sleep(Duration::from_millis(300));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let results = rt.block_on(async {
            for i in 0..n_stalled {
                let offset = audio.len() * i / n_stalled.max(1);
                tokio::spawn(run_stalled(
                    server.url.clone(),
                    audio.clone(),
                    offset,
                    secs + 2,
                ));
            }
            let tasks: Vec<_> = (0..sessions)
                .map(|i| {
                    let offset = audio.len() * (2 * i + 1) / (2 * sessions.max(1));
                    tokio::spawn(run_session(
                        server.url.clone(),
                        audio.clone(),
                        offset,
                        secs,
                        Arc::new(AtomicU64::new(0)),
                    ))
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap_or_default());
            }
            out
        });
        drop(rt);
        drop(server);
        let t = totals(&results);
        println!(
            "{:>8} {:>9} {:>9} {:>11.1} {:>6} {:>8} {:>7}",
            n_stalled,
            t.clock.frames,
            t.clock.send_late.above(20.0),
            t.clock.send_late.max_ms,
            t.clock.gaps,
            t.clock.replies,
            t.failed
        );
    }
}

fn soak(audio: &Arc<Vec<i16>>, short: bool) {
    let sessions = env_u64("WS_SOAK_SESSIONS", if short { 10 } else { 50 }) as usize;
    let secs = env_u64("WS_SOAK_SECS", if short { 60 } else { 1800 });
    let generations = env_u64("WS_SOAK_GENERATIONS", 1).max(1);
    let gen_secs = (secs / generations).max(1);
    let server = parrot_server(&[]);
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss_kib(pid);
    let cpu0 = cpu_secs(pid);
    println!(
        "soak: {sessions} sessions for {secs} s in real time, in {generations} generation(s) \
         of {gen_secs} s (server RSS at start {rss0} KiB)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let committed = Arc::new(AtomicU64::new(0));
    let (results, samples, ends, lag, stats) = rt.block_on(async {
        let turns = committed.clone();
        let total = Duration::from_secs(gen_secs * generations);
        let lag = tokio::spawn(client_lag(Instant::now() + total));
        let stats_url = server.url.clone();
        let sampler = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if t0.elapsed() >= total {
                    // The sessions are closing: not a sample of the run.
                    break;
                }
                let sqlite = server_stats(&stats_url).await["sqlite_heap_bytes"]
                    .as_u64()
                    .unwrap_or(0);
                samples.push(Sample {
                    minutes: t0.elapsed().as_secs_f64() / 60.0,
                    rss_kib: rss_kib(pid),
                    anon_kib: rss_anon_kib(pid),
                    sqlite_kib: sqlite / 1024,
                    turns: turns.load(Ordering::Relaxed),
                });
            }
            samples
        });
        let mut out = Vec::new();
        // (RSS once the generation's sessions closed, turns so far).
        let mut ends = Vec::new();
        for g in 0..generations as usize {
            let tasks: Vec<_> = (0..sessions)
                .map(|i| {
                    let offset = audio.len() * ((i + g) % sessions.max(1)) / sessions.max(1);
                    tokio::spawn(run_session(
                        server.url.clone(),
                        audio.clone(),
                        offset,
                        gen_secs,
                        committed.clone(),
                    ))
                })
                .collect();
            for t in tasks {
                out.push(t.await.unwrap_or_default());
            }
            // The closes reach the server and its sessions end.
            tokio::time::sleep(Duration::from_secs(2)).await;
            ends.push((rss_kib(pid), committed.load(Ordering::Relaxed)));
        }
        let stats = server_stats(&server.url).await;
        (
            out,
            sampler.await.unwrap_or_default(),
            ends,
            lag.await.unwrap_or_default(),
            stats,
        )
    });
    let cpu = (cpu_secs(pid) - cpu0) / (gen_secs * generations) as f64 * 100.0;
    drop(server);
    let t = totals(&results);
    // From the second minute on (sessions and allocator warm).
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.minutes >= 1.0 || secs < 120)
        .collect();
    let by_minute: Vec<(f64, f64)> = warm.iter().map(|s| (s.minutes, s.rss_kib as f64)).collect();
    let by_turn: Vec<(f64, f64)> = warm
        .iter()
        .map(|s| (s.turns as f64, s.rss_kib as f64))
        .collect();
    println!(
        "replies {} committed turns {} failed {}",
        t.clock.replies,
        committed.load(Ordering::Relaxed),
        t.failed
    );
    print_lateness(&t, &lag, &stats);
    if let Some(f) = results.iter().find_map(|r| r.failed.as_ref()) {
        println!("first failure: {f}");
    }
    println!(
        "send lateness > 20 ms by tenth of each generation's run: {:?}; gaps: {:?}",
        t.late_by_tenth, t.gaps_by_tenth
    );
    println!(
        "server RSS {} -> {} KiB (at 1 min {} KiB), slope after the first minute {:.1} KiB/min, \
         {:.3} KiB per committed turn; CPU {:.1} % of a core",
        rss0,
        samples.last().map_or(rss0, |s| s.rss_kib),
        warm.first().map_or(rss0, |s| s.rss_kib),
        slope(&by_minute),
        slope(&by_turn),
        cpu
    );
    // Points of the last two thirds of the run, and one value a minute.
    let late = |point: fn(&Sample) -> (f64, f64)| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter(|s| s.minutes * 3.0 >= (secs / 60) as f64)
            .map(point)
            .collect()
    };
    let by_minute = |value: fn(&Sample) -> u64| -> Vec<u64> {
        samples
            .iter()
            .filter(|s| (s.minutes * 6.0).round() as u64 % 6 == 0)
            .map(value)
            .collect()
    };
    println!(
        "over the last two thirds of the run: RSS slope {:.1} KiB/min, {:.3} KiB per committed turn",
        slope(&late(|s| (s.minutes, s.rss_kib as f64))),
        slope(&late(|s| (s.turns as f64, s.rss_kib as f64)))
    );
    // The heap apart from SQLite's own (page cache and statements, bounded
    // by the journal's cache_size): the sessions' and the server's memory.
    println!(
        "over the last two thirds: heap without SQLite's {:.3} KiB per committed turn; \
         SQLite's heap (KiB) by minute: {:?}",
        slope(&late(|s| {
            (s.turns as f64, s.anon_kib as f64 - s.sqlite_kib as f64)
        })),
        by_minute(|s| s.sqlite_kib)
    );
    println!("server RSS by minute: {:?}", by_minute(|s| s.rss_kib));
    println!(
        "server anonymous RSS (heap) by minute: {:?}",
        by_minute(|s| s.anon_kib)
    );
    for (g, (rss, turns)) in ends.iter().enumerate() {
        println!(
            "after generation {} (its sessions closed): server RSS {rss} KiB, {turns} turns committed so far",
            g + 1
        );
    }
}

/// The server's RSS and the turns committed so far, every 10 s.
struct Sample {
    minutes: f64,
    rss_kib: u64,
    anon_kib: u64,
    /// SQLite's heap in the server (`/stats`).
    sqlite_kib: u64,
    turns: u64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("ws_soak: a real-time benchmark; run it with `cargo bench --bench ws_soak`");
        return;
    }
    let short = std::env::var("WS_SOAK_SHORT").is_ok_and(|v| v != "0");
    let mode = std::env::var("WS_SOAK_MODE").unwrap_or_else(|_| "both".into());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/conversation.wav");
    let audio =
        Arc::new(resample_to_16k(&read_wav(&path).expect("read conversation.wav")).expect("16k"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "ws_soak: {cores} core(s), parrot agent, {}",
        if short { "short mode" } else { "full" }
    );
    if mode == "slow" || mode == "both" {
        slow(&audio, short);
    }
    if mode == "soak" || mode == "both" {
        soak(&audio, short);
    }
}
