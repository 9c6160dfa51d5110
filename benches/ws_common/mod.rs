//! Shared by the WebSocket benches (`ws_load`, `ws_soak`): starting a
//! `colloquy serve` child, reading its RSS and CPU, and timing the bot's
//! audio frames against their due times.
//!
//! # Due times
//! The server sends a reply up to `lead` = 100 ms ahead of real time
//! (`ServeConfig::lead`): the first 100 ms at once, then each frame once its
//! start is within the lead. With t0 the arrival of the reply's first frame
//! and `t` the offset of a frame into the reply:
//! - **send schedule**: the frame is due at `t0 + max(0, t − 100 ms)`; its
//!   *send lateness* is its arrival minus that (timer and scheduler jitter of
//!   the server and of this client, and the network);
//! - **playout**: the page's jitter buffer (`playback-worklet.js`, `startMs`
//!   80) starts playing once 80 ms are buffered, and waits for 80 ms again
//!   when it runs dry. A frame that arrives after the page needed it is a
//!   *gap* the user hears. The lead absorbs about 100 ms of send lateness.
//!
//! # Invariants
//! 1. Every frame is counted once, in the reply that was playing when it
//!    arrived (a `bot_started_speaking` or `clear_playback` starts a new one).
//! 2. The playout model never plays a sample before it arrived.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// The server's send lead (`ServeConfig::lead`).
pub const LEAD: Duration = Duration::from_millis(100);
/// The page's start buffer (`startMs` in `app.js`).
pub const PAGE_START: Duration = Duration::from_millis(80);
/// Samples per 20 ms message at 16 kHz.
pub const FRAME: usize = 320;
const RATE: u64 = 16_000;

/// Where the server's journal goes.
pub enum Journal {
    /// A SQLite file in a temporary directory (the default of `serve`).
    Temp,
    /// This location (a path or URL).
    At(String),
    /// `--no-journal`.
    Off,
}

/// A `colloquy serve` child process.
pub struct ServerProc {
    pub child: Child,
    /// The WebSocket URL, token included.
    pub url: String,
    _journal: tempfile::TempDir,
}

impl ServerProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `colloquy serve` on a free loopback port with a fresh token,
/// `configure` adding the agent and other arguments, and waits for its URL.
pub fn start_server(journal: Journal, configure: impl FnOnce(&mut Command)) -> ServerProc {
    let dir = tempfile::tempdir().expect("journal dir");
    let token = colloquy::transport::websocket::generate_token();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_colloquy"));
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--max-sessions", "100000"]);
    configure(&mut cmd);
    match journal {
        Journal::Temp => cmd.arg("--journal").arg(dir.path().join("journal.sqlite")),
        Journal::At(location) => cmd.arg("--journal").arg(location),
        Journal::Off => cmd.arg("--no-journal"),
    };
    let mut child = cmd
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
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    let url = url
        .replacen("http://", "ws://", 1)
        .replacen("/?token", "/ws?token", 1);
    ServerProc {
        child,
        url,
        _journal: dir,
    }
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

/// Anonymous resident memory of `pid` (KiB): the heap, without the
/// file-backed and shared pages (binary, SQLite's mapped WAL index).
pub fn rss_anon_kib(pid: u32) -> u64 {
    proc_status(pid, "RssAnon:")
}

/// Resident set of `pid` (KiB).
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// CPU time of `pid` so far (user + system), seconds.
pub fn cpu_secs(pid: u32) -> f64 {
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

/// Least-squares slope of y over x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
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

pub fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server's `/stats` counters.
pub async fn server_stats(ws_url: &str) -> serde_json::Value {
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

/// The next 20 ms of `audio` from `pos` (looped), as PCM16 LE bytes.
pub fn frame_bytes(audio: &[i16], pos: &mut usize) -> Vec<u8> {
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

/// Upper bounds (ms) of the lateness histogram's buckets; the last one
/// takes the rest.
pub const BUCKETS_MS: [f64; 9] = [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 60.0, 100.0];

/// Counts of lateness values per bucket of [`BUCKETS_MS`].
#[derive(Default, Debug, Clone, Copy)]
pub struct Histogram {
    pub counts: [u64; 10],
    pub max_ms: f64,
}

impl Histogram {
    pub fn add(&mut self, ms: f64) {
        let i = BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(BUCKETS_MS.len());
        self.counts[i] += 1;
        self.max_ms = self.max_ms.max(ms);
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.max_ms = self.max_ms.max(o.max_ms);
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Values above `ms` (a bucket bound).
    pub fn above(&self, ms: f64) -> u64 {
        let i = BUCKETS_MS
            .iter()
            .position(|&b| b >= ms)
            .map_or(9, |i| i + 1);
        self.counts[i..].iter().sum()
    }

    /// The histogram as one line: `≤0: n, ≤1: n, …, >100: n`.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        for (i, c) in self.counts.iter().enumerate() {
            let label = match BUCKETS_MS.get(i) {
                Some(b) => format!("≤{b}"),
                None => format!(">{}", BUCKETS_MS[BUCKETS_MS.len() - 1]),
            };
            parts.push(format!("{label}: {c}"));
        }
        parts.join(", ")
    }
}

/// One reply being received.
struct Reply {
    t0: Instant,
    /// Samples of the reply received so far.
    samples: u64,
    /// The page model: playing since (instant, sample of the reply played
    /// then), or waiting for its start buffer from `buffer_from`.
    playing: Option<(Instant, u64)>,
    buffer_from: u64,
}

/// Times one client's bot audio frames (see the module doc).
#[derive(Default)]
pub struct FrameClock {
    reply: Option<Reply>,
    new_reply: bool,
    pub frames: u64,
    pub replies: u64,
    /// Send lateness of every frame.
    pub send_late: Histogram,
    /// Frames that arrived after the page needed them (heard as a gap).
    pub gaps: u64,
    /// Largest lateness against playout of a gap frame (ms).
    pub max_gap_ms: f64,
    /// Smallest playout margin (ms; playout time − arrival) of the frames
    /// that arrived in time.
    pub min_margin_ms: Option<f64>,
}

impl FrameClock {
    /// A `bot_started_speaking` or `clear_playback` event: the next frame
    /// starts a reply.
    pub fn reply_starts(&mut self) {
        self.new_reply = true;
    }

    /// A frame of `samples` samples arrived at `now`; returns its send
    /// lateness (ms).
    pub fn frame(&mut self, now: Instant, samples: u64) -> f64 {
        self.frames += 1;
        if self.new_reply || self.reply.is_none() {
            self.new_reply = false;
            self.replies += 1;
            self.reply = Some(Reply {
                t0: now,
                samples: 0,
                playing: None,
                buffer_from: 0,
            });
        }
        let Some(r) = self.reply.as_mut() else {
            return 0.0;
        };
        let start = Duration::from_micros(r.samples * 1_000_000 / RATE);
        let due = r.t0 + start.saturating_sub(LEAD);
        let late = if now >= due {
            now.duration_since(due).as_secs_f64() * 1e3
        } else {
            -due.duration_since(now).as_secs_f64() * 1e3
        };
        self.send_late.add(late);
        // The page (invariant 2).
        if let Some((since, from)) = r.playing {
            let needed = since + Duration::from_micros((r.samples - from) * 1_000_000 / RATE);
            if now > needed {
                self.gaps += 1;
                self.max_gap_ms = self
                    .max_gap_ms
                    .max(now.duration_since(needed).as_secs_f64() * 1e3);
                r.playing = None;
                r.buffer_from = r.samples;
            } else {
                let margin = needed.duration_since(now).as_secs_f64() * 1e3;
                self.min_margin_ms = Some(self.min_margin_ms.map_or(margin, |m| m.min(margin)));
            }
        }
        r.samples += samples;
        if r.playing.is_none()
            && r.samples - r.buffer_from >= PAGE_START.as_millis() as u64 * RATE / 1000
        {
            r.playing = Some((now, r.buffer_from));
        }
        late
    }

    pub fn merge_into(&self, t: &mut ClockTotals) {
        t.frames += self.frames;
        t.replies += self.replies;
        t.send_late.merge(&self.send_late);
        t.gaps += self.gaps;
        t.max_gap_ms = t.max_gap_ms.max(self.max_gap_ms);
        if let Some(m) = self.min_margin_ms {
            t.min_margin_ms = Some(t.min_margin_ms.map_or(m, |x: f64| x.min(m)));
        }
    }
}

/// [`FrameClock`]s of many clients added up.
#[derive(Default, Debug, Clone)]
pub struct ClockTotals {
    pub frames: u64,
    pub replies: u64,
    pub send_late: Histogram,
    pub gaps: u64,
    pub max_gap_ms: f64,
    pub min_margin_ms: Option<f64>,
}

/// How late this client's own runtime wakes up.
#[derive(Default, Debug, Clone)]
pub struct Lag {
    /// Oversleep of every 20 ms sleep (ms).
    pub hist: Histogram,
    /// Wake-ups more than a second late: the processes were stopped (a
    /// shared machine can pause niced jobs), and their total length (s).
    pub pauses: u64,
    pub paused_secs: f64,
}

/// A task that sleeps 20 ms again and again records its oversleep, so
/// lateness the client adds is told apart from the server's. Runs until
/// `end`.
pub async fn client_lag(end: Instant) -> Lag {
    let mut lag = Lag::default();
    loop {
        let due = Instant::now() + Duration::from_millis(20);
        if due >= end {
            return lag;
        }
        tokio::time::sleep_until(due).await;
        let over = Instant::now().saturating_duration_since(due).as_secs_f64();
        lag.hist.add(over * 1e3);
        if over > 1.0 {
            lag.pauses += 1;
            lag.paused_secs += over;
        }
    }
}

/// Whether a client's 20 ms tick at `deadline` is part of a backlog left by
/// a pause (more than a second behind): such ticks send nothing, as a
/// microphone stopped with its process would not.
pub fn stale_tick(deadline: Instant) -> bool {
    Instant::now().saturating_duration_since(deadline) > Duration::from_secs(1)
}
