//! Load benchmark of `colloquy serve` (not a unit test): how many concurrent
//! sessions the machine holds with every bot audio frame on time, and the
//! memory each session costs.
//!
//! For each N in `WS_LOAD_SESSIONS` (default `10,25,50,100,150,200,300`) a
//! fresh server process (`colloquy serve --agent parrot`, journal in a
//! temporary directory, as every session is journaled by default) is started; N
//! WebSocket clients each stream `assets/conversation.wav` over a −55 dBFS
//! noise floor (looped, each from a different offset so turns are spread) in
//! real time, 20 ms per message, for `WS_LOAD_SECS` (default 12) seconds, and
//! time every bot audio frame.
//!
//! Density (`WS_LOAD_AGENT=hosted`): the same with the voice agent on hosted
//! models — STT, chat and TTS all served by the in-process OpenAI-compatible
//! test server (`llm::testkit::FakeOpenAi`, 300 ms to answer, scripted
//! text) — the production case. The server process's CPU per session gives
//! sessions per core (the fake server runs in this process, not counted).
//!
//! Each bot audio frame is timed against its due time (`ws_common`): its
//! send lateness against the server's send schedule (the reply's first
//! 100 ms at once, then each frame once its start is within the 100 ms send
//! lead: `t0 + max(0, t − 100 ms)` for the frame `t` into a reply whose
//! first frame arrived at t0); a frame is late when that passes 20 ms. A
//! frame that arrives after the page's jitter buffer (80 ms start) needed it
//! is a gap the user hears, counted apart: the lead absorbs about 100 ms of
//! send lateness.
//! Memory per session is the server's RSS delta (before the clients, at the
//! end) divided by N.
//!
//! Run: `cargo bench --bench ws_load` (env `WS_LOAD_SESSIONS`, `WS_LOAD_SECS`;
//! `WS_LOAD_JOURNAL` names the servers' journal, e.g. a `postgres://` URL;
//! `scripts/ws-load-journals.sh` runs SQLite and PostgreSQL side by side).
//! Under `cargo test` (no `--bench` argument) it runs one tiny step (2
//! sessions, 2 s) to check that it works.

mod ws_common;

use colloquy::audio::{read_wav, resample_to_16k};
use futures::{SinkExt, StreamExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use ws_common::{
    cpu_secs, frame_bytes, rss_kib, server_stats, stale_tick, start_server, FrameClock, Journal,
    ServerProc, FRAME,
};

#[derive(Default)]
struct SessionResult {
    clock: FrameClock,
    /// Send lateness of every frame (ms; negative = early).
    lateness_ms: Vec<f64>,
    send_late_max_ms: f64,
    failed: Option<String>,
}

/// The hosted models of the density run: one in-process OpenAI-compatible
/// server (`llm::testkit::FakeOpenAi`) answering transcription, chat and
/// speech, each after 300 ms; chat streams a token every 20 ms; speech is
/// 10 ms of audio per token (≈ 0.6 s per request).
fn hosted_models(rt: &tokio::runtime::Runtime) -> colloquy::llm::testkit::FakeOpenAi {
    use colloquy::llm::testkit::{FakeOpenAi, Reply};
    let fake = rt
        .block_on(FakeOpenAi::start())
        .expect("fake OpenAI server");
    // Three-character tokens: 60 of them, 1.2 s of streaming, and 0.6 s
    // of speech per TTS request.
    let text: Vec<char> = "Paris is the capital of France. It lies on the Seine, in the north. \
                           About two million people live in the city itself."
        .chars()
        .collect();
    let tokens: Vec<String> = text.chunks(3).map(|c| c.iter().collect()).collect();
    fake.set_default(
        Reply::tokens(tokens)
            .first_token_after(Duration::from_millis(300))
            .every(Duration::from_millis(20)),
    );
    fake
}

fn load_server(hosted: Option<&str>) -> ServerProc {
    let journal = match std::env::var("WS_LOAD_JOURNAL") {
        Ok(j) => Journal::At(j),
        Err(_) => Journal::Temp,
    };
    start_server(journal, |cmd| {
        match hosted {
            None => cmd.args(["--agent", "parrot"]),
            Some(base) => cmd
                .args(["--agent", "voice"])
                .arg(format!("--llm={base}::fake-chat"))
                .arg(format!("--stt={base}::whisper-1"))
                .arg(format!("--tts={base}::tts-1::alloy"))
                .env("OPENAI_API_KEY", "density-bench"),
        };
    })
}

async fn run_session(url: String, audio: Arc<Vec<i16>>, offset: usize, secs: u64) -> SessionResult {
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
    let _ = tx
        .send(Message::text(
            r#"{"type":"hello","version":1,"sample_rate":16000}"#,
        ))
        .await;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
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
                let late = Instant::now().saturating_duration_since(deadline);
                r.send_late_max_ms = r.send_late_max_ms.max(late.as_secs_f64() * 1e3);
                if tx.send(Message::binary(frame_bytes(&audio, &mut pos))).await.is_err() {
                    r.failed = Some("send failed".into());
                    break;
                }
            }
            msg = rx.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Binary(b))) => {
                        let late = r.clock.frame(now, (b.len() / 2) as u64);
                        r.lateness_ms.push(late);
                    }
                    Some(Ok(Message::Text(t))) => {
                        let s = t.as_str();
                        if s.contains("\"bot_started_speaking\"") || s.contains("\"clear_playback\"") {
                            r.clock.reply_starts();
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

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it: then one tiny step only.
    let full = std::env::args().any(|a| a == "--bench");
    let sessions: Vec<usize> = if full {
        std::env::var("WS_LOAD_SESSIONS")
            .unwrap_or_else(|_| "10,25,50,100,150,200,300".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    } else {
        vec![2]
    };
    let secs: u64 = if full {
        std::env::var("WS_LOAD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12)
    } else {
        2
    };
    // WS_LOAD_AGENT=hosted: the voice agent on hosted (scripted) models,
    // the production case; reports sessions per core (density).
    let hosted_rt = std::env::var("WS_LOAD_AGENT")
        .is_ok_and(|a| a == "hosted")
        .then(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime for the hosted models")
        });
    let hosted = hosted_rt.as_ref().map(hosted_models);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/conversation.wav");
    // With a noise floor, as a microphone gives (never digital silence).
    let mut pcm = resample_to_16k(&read_wav(&path).expect("read conversation.wav")).expect("16k");
    colloquy::audio::signal::add_noise_floor(&mut pcm, -55.0, 1);
    let audio = Arc::new(pcm);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let agent = if hosted.is_some() {
        "voice agent on hosted scripted models (STT, chat, TTS: 300 ms each)"
    } else {
        "parrot agent"
    };
    // WS_LOAD_JOURNAL: the journal every step's server writes (default: a
    // SQLite file in a temporary directory; `scripts/ws-load-journals.sh`
    // runs both backends against a temporary PostgreSQL).
    let journal = match std::env::var("WS_LOAD_JOURNAL") {
        Ok(j) => match colloquy::journal::JournalLocation::parse(&j) {
            Ok(colloquy::journal::JournalLocation::Postgres(_)) => "PostgreSQL (WS_LOAD_JOURNAL)",
            Ok(colloquy::journal::JournalLocation::Sqlite(_)) => "SQLite (WS_LOAD_JOURNAL)",
            Err(e) => panic!("WS_LOAD_JOURNAL: {e}"),
        },
        Err(_) => "SQLite (a temporary file)",
    };
    println!(
        "ws_load: {cores} core(s), {agent}, journal on {journal}, {secs} s per step, audio {} ({:.1} s, looped)",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        audio.len() as f64 / 16_000.0
    );
    println!(
        "{:>8} {:>9} {:>9} {:>10} {:>11} {:>5} {:>12} {:>8} {:>12} {:>11} {:>10} {:>11} {:>13}",
        "sessions",
        "frames",
        "late>20ms",
        "p99 late ms",
        "max late ms",
        "gaps",
        "client lag ms",
        "replies",
        "RSS delta MiB",
        "KiB/session",
        "CPU %core",
        "%core/sess",
        "ticks>20ms late"
    );
    let mut held = 0usize;
    for &n in &sessions {
        let server = load_server(hosted.as_ref().map(|f| f.base_url()).as_deref());
        let pid = server.pid();
        std::thread::sleep(Duration::from_millis(300));
        let base = rss_kib(pid);
        let cpu0 = cpu_secs(pid);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let results: Vec<SessionResult> = rt.block_on(async {
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                let offset = audio.len() * i / n.max(1);
                tasks.push(tokio::spawn(run_session(
                    server.url.clone(),
                    audio.clone(),
                    offset,
                    secs,
                )));
            }
            let mut out = Vec::with_capacity(n);
            for t in tasks {
                out.push(t.await.unwrap_or_default());
            }
            out
        });
        let peak = rss_kib(pid);
        let cpu = (cpu_secs(pid) - cpu0) / secs as f64 * 100.0;
        let stats = rt.block_on(server_stats(&server.url));
        drop(server);
        let frames: u64 = results.iter().map(|r| r.clock.frames).sum();
        let late: u64 = results.iter().map(|r| r.clock.send_late.above(20.0)).sum();
        let max_late = results
            .iter()
            .map(|r| r.clock.send_late.max_ms)
            .fold(0.0, f64::max);
        let gaps: u64 = results.iter().map(|r| r.clock.gaps).sum();
        let mut lateness: Vec<f64> = results
            .iter()
            .flat_map(|r| r.lateness_ms.iter().copied())
            .collect();
        lateness.sort_by(f64::total_cmp);
        let p99_late = lateness
            .get((lateness.len().saturating_sub(1) as f64 * 0.99) as usize)
            .copied()
            .unwrap_or(0.0);
        let client_lag = results
            .iter()
            .map(|r| r.send_late_max_ms)
            .fold(0.0, f64::max);
        let replies: u64 = results.iter().map(|r| r.clock.replies).sum();
        let failed: Vec<&String> = results.iter().filter_map(|r| r.failed.as_ref()).collect();
        let delta = peak.saturating_sub(base);
        println!(
            "{:>8} {:>9} {:>9} {:>10.1} {:>11.1} {:>5} {:>12.1} {:>8} {:>12.1} {:>11.0} {:>10.1} {:>11.2} {:>13}",
            n,
            frames,
            late,
            p99_late,
            max_late,
            gaps,
            client_lag,
            replies,
            delta as f64 / 1024.0,
            delta as f64 / n as f64,
            cpu,
            cpu / n as f64,
            stats["ticks_late"]
        );
        if let Some(f) = failed.first() {
            println!("         {} session(s) failed, first: {f}", failed.len());
        }
        if hosted.is_some() && cpu > 0.0 {
            let share = cpu / n as f64;
            println!(
                "         density: {share:.2} % of a core per session (server process) → {:.0} sessions per core",
                100.0 / share
            );
        }
        if late == 0 && failed.is_empty() && frames > 0 {
            held = n;
        } else if hosted.is_none() {
            break;
        }
    }
    println!(
        "held: {held} concurrent sessions with no bot frame later than 20 ms past its due time (100 ms send lead accounted for)"
    );
}
