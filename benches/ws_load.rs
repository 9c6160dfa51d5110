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
//! Each bot audio frame is timed against its due time. The server sends a
//! reply up to `lead` = 100 ms ahead of real time (`ServeConfig::lead`): the
//! first 100 ms at once, then one frame per 20 ms tick, each once its end is
//! within the lead. So frame k of a reply (k × 20 ms into it) is due to
//! arrive by `t0 + max(0, (k + 1) × 20 − 100) ms`, where t0 is the arrival
//! of the reply's first frame. Its lateness is
//! its arrival minus that due time; a frame is late when its lateness passes
//! 20 ms (one tick). A page that starts playing the first frame at once needs
//! frame k at `t0 + k × 20 ms`: a frame arriving after that is a gap the user
//! hears (counted separately; the lead absorbs up to 100 ms of lateness).
//! Memory per session is the server's RSS delta (before the clients, at the
//! end) divided by N.
//!
//! Run: `cargo bench --bench ws_load` (env `WS_LOAD_SESSIONS`, `WS_LOAD_SECS`;
//! `WS_LOAD_JOURNAL` names the servers' journal, e.g. a `postgres://` URL;
//! `scripts/ws-load-journals.sh` runs SQLite and PostgreSQL side by side).
//! Under `cargo test` (no `--bench` argument) it runs one tiny step (2
//! sessions, 2 s) to check that it works.

use colloquy::audio::{read_wav, resample_to_16k};
use futures::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

const FRAME: usize = 320;
/// The server's send lead (`ServeConfig::lead`, 100 ms by default).
const LEAD_MS: f64 = 100.0;

#[derive(Default, Debug, Clone)]
struct SessionResult {
    frames: u64,
    /// Frames whose lateness against their due time passed 20 ms.
    late: u64,
    /// Largest lateness against the due time (ms; negative = early).
    max_late_ms: f64,
    /// Frames that arrived after a page would have played them (gaps).
    gaps: u64,
    lateness_ms: Vec<f64>,
    replies: u64,
    send_late_max_ms: f64,
    failed: Option<String>,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Server CPU time so far (user + system), seconds.
fn cpu_secs(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = after.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / ticks)
        })
        .unwrap_or(0.0)
}

/// The server's `/stats` counters.
async fn server_stats(ws_url: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = ws_url.trim_start_matches("ws://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.replacen("ws?", "stats?", 1);
    let Ok(mut s) = tokio::net::TcpStream::connect(host).await else {
        return serde_json::Value::Null;
    };
    let req = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return serde_json::Value::Null;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(serde_json::Value::Null)
}

struct ServerProc {
    child: Child,
    url: String,
    /// Holds the server's journal (each session is journaled, as by default).
    _journal: tempfile::TempDir,
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

fn start_server(token: &str, hosted: Option<&str>) -> ServerProc {
    let journal = tempfile::tempdir().expect("journal dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_colloquy"));
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--max-sessions", "100000"]);
    match hosted {
        None => cmd.args(["--agent", "parrot"]),
        Some(base) => cmd
            .args(["--agent", "voice"])
            .arg(format!("--llm={base}::fake-chat"))
            .arg(format!("--stt={base}::whisper-1"))
            .arg(format!("--tts={base}::tts-1::alloy"))
            .env("OPENAI_API_KEY", "density-bench"),
    };
    let mut child = cmd
        .arg("--journal")
        .arg(
            std::env::var("WS_LOAD_JOURNAL")
                .unwrap_or_else(|_| journal.path().join("journal.sqlite").display().to_string()),
        )
        .env("COLLOQUY_TOKEN", token)
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
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    let ws = url
        .replacen("http://", "ws://", 1)
        .replacen("/?token", "/ws?token", 1);
    ServerProc {
        child,
        url: ws,
        _journal: journal,
    }
}

async fn run_session(url: String, audio: Arc<Vec<i16>>, offset: usize, secs: u64) -> SessionResult {
    let mut r = SessionResult::default();
    let (ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
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
    // Reply timing: arrival of its first frame and samples received since.
    let mut burst: Option<(Instant, u64)> = None;
    let mut new_burst = true;
    loop {
        tokio::select! {
            deadline = tick.tick() => {
                if deadline >= end {
                    break;
                }
                let late = Instant::now().saturating_duration_since(deadline);
                r.send_late_max_ms = r.send_late_max_ms.max(late.as_secs_f64() * 1e3);
                if pos + FRAME > audio.len() {
                    pos = 0;
                }
                let bytes: Vec<u8> = audio[pos..pos + FRAME].iter().flat_map(|s| s.to_le_bytes()).collect();
                pos += FRAME;
                if tx.send(Message::binary(bytes)).await.is_err() {
                    r.failed = Some("send failed".into());
                    break;
                }
            }
            msg = rx.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Binary(b))) => {
                        let n = (b.len() / 2) as u64;
                        r.frames += 1;
                        if new_burst || burst.is_none() {
                            burst = Some((now, 0));
                            new_burst = false;
                            r.replies += 1;
                        }
                        if let Some((t0, samples)) = burst.as_mut() {
                            // Offset of this frame into the reply, and its
                            // due time with the send lead accounted for.
                            let offset_ms = *samples as f64 * 1e3 / 16_000.0;
                            let end_ms = offset_ms + n as f64 * 1e3 / 16_000.0;
                            let since_t0 = now.duration_since(*t0).as_secs_f64() * 1e3;
                            let late = since_t0 - (end_ms - LEAD_MS).max(0.0);
                            r.lateness_ms.push(late);
                            r.max_late_ms = r.max_late_ms.max(late);
                            if late > 20.0 {
                                r.late += 1;
                            }
                            if since_t0 > offset_ms {
                                r.gaps += 1;
                            }
                            *samples += n;
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        let s = t.as_str();
                        if s.contains("\"bot_started_speaking\"") || s.contains("\"clear_playback\"") {
                            new_burst = true;
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
        let token = colloquy::transport::websocket::generate_token();
        let mut server = start_server(&token, hosted.as_ref().map(|f| f.base_url()).as_deref());
        let pid = server.child.id();
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
        let _ = server.child.kill();
        let _ = server.child.wait();
        let frames: u64 = results.iter().map(|r| r.frames).sum();
        let late: u64 = results.iter().map(|r| r.late).sum();
        let max_late = results
            .iter()
            .map(|r| r.max_late_ms)
            .fold(f64::NEG_INFINITY, f64::max);
        let gaps: u64 = results.iter().map(|r| r.gaps).sum();
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
        let replies: u64 = results.iter().map(|r| r.replies).sum();
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
