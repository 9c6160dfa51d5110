//! Real-time benchmarks of `colloquy serve` under adversity (issue 18), not
//! unit tests. Each scenario starts a fresh server process (`colloquy serve
//! --agent parrot`, journal in a temporary directory) and drives it with
//! WebSocket clients that stream `assets/conversation.wav` (looped, each
//! from its own offset) in real time, 20 ms per message, and time every bot
//! audio frame.
//!
//! A reply's frame is due when a page that started playing the reply's
//! first frame at once needs it, less the server's 100 ms send lead (the
//! first 100 ms arrive together): `first arrival + max(0, t − 100 ms)` for
//! the frame that starts `t` into the reply. Late: more than 20 ms after due.
//!
//! - `slow`: `WS_SLOW_SESSIONS` (10) well-behaved sessions for
//!   `WS_SLOW_SECS` (30) s, first alone, then beside `WS_SLOW_STALLED` (10)
//!   clients that speak and never read (4 KiB receive buffers; the server
//!   runs with `--send-buffer 8192`, so its writes to them block). Reports the
//!   well-behaved sessions' frames later than 20 ms in each run.
//! - `soak`: `WS_SOAK_SESSIONS` (50) sessions for `WS_SOAK_SECS` (1800) s.
//!   Reports frames, late frames, replies, committed turns, and the
//!   server's RSS and CPU sampled every 10 s, with the RSS slope after the
//!   first minute per minute and per committed turn, and the late frames
//!   of each tenth of the run. `WS_SOAK_GENERATIONS=G` splits the run into
//!   G generations of fresh sessions, one after the other on the same
//!   server, and reports the RSS once each generation's sessions closed:
//!   memory held by live sessions (their history) is freed and reused by
//!   the next generation, while a leak keeps growing across them.
//!
//! Run: `cargo bench --bench ws_soak` (both), `WS_SOAK_MODE=slow|soak`;
//! short mode: `WS_SOAK_SHORT=1` (slow: 5 s; soak: 10 sessions, 60 s).
//! Under `cargo test` (no `--bench` argument) it exits at once.

use colloquy::audio::{read_wav, resample_to_16k};
use futures::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

const FRAME: usize = 320;
const LEAD: Duration = Duration::from_millis(100);

#[derive(Default, Debug, Clone)]
struct SessionResult {
    frames: u64,
    late: u64,
    max_late_ms: f64,
    replies: u64,
    /// Late frames per tenth of the run.
    late_by_tenth: [u64; 10],
    failed: Option<String>,
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = after.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / 100.0)
        })
        .unwrap_or(0.0)
}

fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

struct ServerProc {
    child: Child,
    url: String,
    _journal: tempfile::TempDir,
}

fn start_server() -> ServerProc {
    start_server_with(&[])
}

fn start_server_with(extra: &[&str]) -> ServerProc {
    let token = colloquy::transport::websocket::generate_token();
    let journal = tempfile::tempdir().expect("journal dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["serve", "--bind", "127.0.0.1:0", "--agent", "parrot"])
        .args(["--max-sessions", "100000"])
        .args(extra)
        .arg("--journal")
        .arg(journal.path().join("journal.sqlite"))
        .env("COLLOQUY_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start colloquy serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("server printed its URL")
            .expect("read stdout");
        if let Some(i) = line.find("http://") {
            break line[i..].trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let url = url
        .replacen("http://", "ws://", 1)
        .replacen("/?token", "/ws?token", 1);
    ServerProc {
        child,
        url,
        _journal: journal,
    }
}

fn frame_bytes(audio: &[i16], pos: &mut usize) -> Vec<u8> {
    if *pos + FRAME > audio.len() {
        *pos = 0;
    }
    let bytes = audio[*pos..*pos + FRAME]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    *pos += FRAME;
    bytes
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
    let (ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
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
    let mut burst: Option<(Instant, u64)> = None;
    let mut new_burst = true;
    loop {
        tokio::select! {
            deadline = tick.tick() => {
                if deadline >= end {
                    break;
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
                        r.frames += 1;
                        if new_burst || burst.is_none() {
                            burst = Some((now, 0));
                            new_burst = false;
                            r.replies += 1;
                        }
                        if let Some((t0, samples)) = burst.as_mut() {
                            let into = Duration::from_micros(*samples * 1_000_000 / 16_000);
                            let due = *t0 + into.saturating_sub(LEAD);
                            let late = now.saturating_duration_since(due).as_secs_f64() * 1e3;
                            r.max_late_ms = r.max_late_ms.max(late);
                            if late > 20.0 {
                                r.late += 1;
                                let tenth = (now.duration_since(start).as_secs_f64() / run.as_secs_f64() * 10.0) as usize;
                                r.late_by_tenth[tenth.min(9)] += 1;
                            }
                            *samples += (b.len() / 2) as u64;
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        let s = t.as_str();
                        if s.contains("\"bot_started_speaking\"") || s.contains("\"clear_playback\"") {
                            new_burst = true;
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
    frames: u64,
    late: u64,
    max_late_ms: f64,
    replies: u64,
    failed: usize,
    late_by_tenth: [u64; 10],
}

fn totals(results: &[SessionResult]) -> Totals {
    let mut t = Totals {
        frames: 0,
        late: 0,
        max_late_ms: 0.0,
        replies: 0,
        failed: 0,
        late_by_tenth: [0; 10],
    };
    for r in results {
        t.frames += r.frames;
        t.late += r.late;
        t.max_late_ms = t.max_late_ms.max(r.max_late_ms);
        t.replies += r.replies;
        t.failed += usize::from(r.failed.is_some());
        for (a, b) in t.late_by_tenth.iter_mut().zip(r.late_by_tenth) {
            *a += b;
        }
    }
    t
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn slow(audio: &Arc<Vec<i16>>, short: bool) {
    let sessions = env_u64("WS_SLOW_SESSIONS", 10) as usize;
    let stalled = env_u64("WS_SLOW_STALLED", 10) as usize;
    let secs = env_u64("WS_SLOW_SECS", if short { 5 } else { 30 });
    println!("slow clients: {sessions} well-behaved session(s), {secs} s, alone then beside {stalled} clients that never read");
    println!(
        "{:>8} {:>9} {:>9} {:>11} {:>8} {:>7}",
        "stalled", "frames", "late>20ms", "max late ms", "replies", "failed"
    );
    for n_stalled in [0, stalled] {
        // A small send buffer: the server's writes to the stalled block
        // within a second (the kernel's default grows to hold seconds).
        let mut server = start_server_with(&["--send-buffer", "8192"]);
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
        let _ = server.child.kill();
        let _ = server.child.wait();
        let t = totals(&results);
        println!(
            "{:>8} {:>9} {:>9} {:>11.1} {:>8} {:>7}",
            n_stalled, t.frames, t.late, t.max_late_ms, t.replies, t.failed
        );
    }
}

fn soak(audio: &Arc<Vec<i16>>, short: bool) {
    let sessions = env_u64("WS_SOAK_SESSIONS", if short { 10 } else { 50 }) as usize;
    let secs = env_u64("WS_SOAK_SECS", if short { 60 } else { 1800 });
    let generations = env_u64("WS_SOAK_GENERATIONS", 1).max(1);
    let gen_secs = (secs / generations).max(1);
    let mut server = start_server();
    let pid = server.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = proc_status(pid, "VmRSS:");
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
    let (results, samples, ends) = rt.block_on(async {
        let turns = committed.clone();
        let sampler = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            while t0.elapsed() < Duration::from_secs(gen_secs * generations) {
                tokio::time::sleep(Duration::from_secs(10)).await;
                samples.push(Sample {
                    minutes: t0.elapsed().as_secs_f64() / 60.0,
                    rss_kib: proc_status(pid, "VmRSS:"),
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
            ends.push((
                proc_status(pid, "VmRSS:"),
                committed.load(Ordering::Relaxed),
            ));
        }
        (out, sampler.await.unwrap_or_default(), ends)
    });
    let cpu = (cpu_secs(pid) - cpu0) / (gen_secs * generations) as f64 * 100.0;
    let _ = server.child.kill();
    let _ = server.child.wait();
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
        "frames {} late>20ms {} max late {:.1} ms replies {} committed turns {} failed {}",
        t.frames,
        t.late,
        t.max_late_ms,
        t.replies,
        committed.load(Ordering::Relaxed),
        t.failed
    );
    println!(
        "late frames by tenth of each generation's run: {:?}",
        t.late_by_tenth
    );
    println!(
        "server RSS {} -> {} KiB, slope after the first minute {:.1} KiB/min, \
         {:.2} KiB per committed turn; CPU {:.1} % of a core",
        rss0,
        samples.last().map_or(rss0, |s| s.rss_kib),
        slope(&by_minute),
        slope(&by_turn),
        cpu
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
