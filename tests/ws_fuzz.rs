//! Protocol fuzzing of `colloquy serve` (issue 18): at least 100 000 random
//! client messages and message sequences against a live in-process server,
//! paced under its rate limits so that every one is parsed, not dropped.
//!
//! Eight clients run in parallel, each a stream of *sequences*: connect,
//! send random batches (text garbage, random JSON, `hello`/`ping`/`played`
//! variants valid and not, audio of even and odd length, oversized
//! messages, WebSocket pings), sometimes end with `bye`, reconnect. Each
//! message's documented answer is predicted by a model of the protocol
//! written here from `docs/protocol.md` (not by calling the server's
//! parser): an error code, a `pong`, or nothing. After each batch the client
//! sends a `ping` with a fresh id and compares the errors and pongs that
//! came back before its `pong` with the prediction, in order.
//!
//! Meanwhile a well-behaved client on the same server talks to the parrot
//! again and again and pings every 100 ms. Required, and checked:
//! 1. no panic (a panic hook counts them; a dead connection fails its client);
//! 2. every bad message answered by its documented error, every other by
//!    its documented answer (none, or `pong`), nothing else;
//! 3. the server's memory flat: the RSS growth from the first 10 % of the
//!    run to its end stays under a bound (printed);
//! 4. the well-behaved session gets every reply and every pong, each within
//!    a bound (the largest wait is printed).
//!
//! `COLLOQUY_FUZZ_MESSAGES` sets the number of messages (default 100 000);
//! the seed is fixed (`COLLOQUY_FUZZ_SEED` to change it). Runs in about
//! 20–40 s on 2 cores.

mod common;
use colloquy::agent::{parrot::ParrotAgent, Agent};
use colloquy::transport::websocket::{AgentFactory, RateLimit, ServeConfig};
use common::ws::{Running, Ws, WAIT};
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const WORKERS: u64 = 8;
const MAX_MESSAGE: usize = 8 * 1024;
/// The server's hard cap: 4x the limit (over it the socket closes).
const HARD_CAP: usize = 4 * MAX_MESSAGE;
/// Messages per second per client (the server allows 2000).
const PACE_PER_SEC: f64 = 800.0;
/// Ids of the sync pings (fuzzed pings use ids below this).
const SYNC_BASE: u64 = 1 << 62;

static PANICS: AtomicU64 = AtomicU64::new(0);

/// What the server must answer to one message (docs/protocol.md).
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    Nothing,
    Pong(Option<u64>),
    Error(String),
}

/// One connection's protocol state, as a client sees it.
#[derive(Default)]
struct Model {
    /// The session's input rate once started (by `hello` or audio).
    rate: Option<u32>,
    /// Seconds of audio sent (the server accepts 2x real time + 5 s).
    audio_secs: f64,
}

/// A generated message and its predicted answer.
struct Case {
    msg: Message,
    answer: Answer,
    bye: bool,
}

fn random_text(rng: &mut StdRng, max: usize) -> String {
    let n = rng.gen_range(0..max);
    (0..n)
        .map(|_| match rng.gen_range(0..10) {
            0 => char::from_u32(rng.gen_range(0x80..0x2FFF)).unwrap_or('?'),
            1 => ['{', '}', '[', ']', '"', ':', ',', '\\'][rng.gen_range(0..8)],
            2 => char::from(rng.gen_range(0u8..32)),
            _ => char::from(rng.gen_range(32u8..127)),
        })
        .collect()
}

fn random_json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::Value;
    match rng.gen_range(0..if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.gen()),
        2 => Value::from(rng.gen::<i64>()),
        3 => Value::from(rng.gen::<f64>() * 1e6),
        4 => Value::String(random_text(rng, 20)),
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..4) {
                m.insert(random_text(rng, 8), random_json(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// A field value for a `u32`/`u64` field: (JSON, Some(n) if it decodes).
fn int_field(
    rng: &mut StdRng,
    valid: &[u64],
    max: u64,
) -> (serde_json::Value, Option<Option<u64>>) {
    use serde_json::Value;
    match rng.gen_range(0..10) {
        0 => (Value::Null, Some(None)),
        1 => (Value::from(-1 - rng.gen_range(0..1000) as i64), None),
        2 => (Value::from(1.5), None),
        3 => (Value::String("fast".into()), None),
        4 if max < u64::MAX => (Value::from(max + 1 + rng.gen_range(0..1000)), None),
        4 => (Value::from(1e20), None),
        5 | 6 => {
            let n = rng.gen_range(0..=max.min(1 << 40));
            (Value::from(n), Some(Some(n)))
        }
        _ => {
            let n = valid[rng.gen_range(0..valid.len())];
            (Value::from(n), Some(Some(n)))
        }
    }
}

fn hello(rng: &mut StdRng, model: &mut Model) -> (String, Answer) {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), "hello".into());
    let mut decodes = true;
    let mut version = None;
    let mut rate = None;
    if rng.gen_bool(0.8) {
        let (v, d) = int_field(rng, &[1, 1, 1, 2, 0], u32::MAX as u64);
        m.insert("version".into(), v);
        match d {
            Some(n) => version = n,
            None => decodes = false,
        }
    }
    if rng.gen_bool(0.8) {
        let (v, d) = int_field(
            rng,
            &[
                8_000, 16_000, 22_050, 44_100, 48_000, 96_000, 7_999, 96_001, 0,
            ],
            u32::MAX as u64,
        );
        m.insert("sample_rate".into(), v);
        match d {
            Some(n) => rate = n,
            None => decodes = false,
        }
    }
    if rng.gen_bool(0.1) {
        m.insert("extra".into(), random_json(rng, 1));
    }
    let text = serde_json::Value::Object(m).to_string();
    if !decodes {
        return (text, Answer::Error("bad_message".into()));
    }
    if version.is_some_and(|v| v != 1) {
        return (text, Answer::Error("bad_hello".into()));
    }
    let r = rate.unwrap_or(16_000);
    if !(8_000..=96_000).contains(&r) {
        return (text, Answer::Error("bad_hello".into()));
    }
    match model.rate {
        None => {
            model.rate = Some(r as u32);
            (text, Answer::Nothing)
        }
        Some(live) if live == r as u32 => (text, Answer::Nothing),
        Some(_) => (text, Answer::Error("bad_hello".into())),
    }
}

fn ping(rng: &mut StdRng) -> (String, Answer) {
    if rng.gen_bool(0.2) {
        return (r#"{"type":"ping"}"#.into(), Answer::Pong(None));
    }
    let (v, d) = int_field(rng, &[0, 7, 1 << 40], u64::MAX);
    let text = serde_json::json!({"type": "ping", "id": v}).to_string();
    match d {
        Some(id) => (text, Answer::Pong(id)),
        None => (text, Answer::Error("bad_message".into())),
    }
}

fn played(rng: &mut StdRng) -> (String, Answer) {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), "played".into());
    let mut ok = true;
    if rng.gen_bool(0.9) {
        let (v, d) = int_field(rng, &[0, 320, 16_000], u64::MAX);
        // `samples` is required: null does not decode.
        ok &= matches!(d, Some(Some(_)));
        m.insert("samples".into(), v);
    } else {
        ok = false;
    }
    if rng.gen_bool(0.5) {
        let (v, d) = int_field(rng, &[1, 2, 3], u64::MAX);
        ok &= d.is_some();
        m.insert("clear".into(), v);
    }
    let text = serde_json::Value::Object(m).to_string();
    (
        text,
        if ok {
            Answer::Nothing
        } else {
            Answer::Error("bad_message".into())
        },
    )
}

/// Text that is certainly not a known message.
fn garbage(rng: &mut StdRng) -> String {
    loop {
        let text = match rng.gen_range(0..4) {
            0 => random_text(rng, 200),
            1 => random_json(rng, 0).to_string(),
            2 => {
                // An object with a type that is not a known one.
                let t: serde_json::Value = match rng.gen_range(0..3) {
                    0 => random_text(rng, 12).into(),
                    1 => rng.gen::<i32>().into(),
                    _ => serde_json::Value::Null,
                };
                serde_json::json!({"type": t, "data": random_json(rng, 1)}).to_string()
            }
            _ => {
                // A valid message with bytes flipped.
                let mut b = br#"{"type":"hello","version":1,"sample_rate":16000}"#.to_vec();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.gen_range(32..127);
                }
                String::from_utf8_lossy(&b).into_owned()
            }
        };
        // The model's view of "not a known message": not JSON, not an
        // object, no string type, or a type other than the four.
        let known = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
            .is_some_and(|t| matches!(t.as_str(), "hello" | "ping" | "played" | "bye"));
        if !known {
            return text;
        }
    }
}

/// Audio of `samples` samples (noise with speech-like bursts).
fn audio(rng: &mut StdRng, samples: usize, odd: bool) -> Vec<u8> {
    let loud = rng.gen_bool(0.3);
    let mut bytes: Vec<u8> = (0..samples)
        .flat_map(|i| {
            let s: i16 = if loud {
                (((i % 37) as i32 - 18) * 900 + rng.gen_range(-500..500)) as i16
            } else {
                rng.gen_range(-60..60)
            };
            s.to_le_bytes()
        })
        .collect();
    if odd {
        bytes.push(rng.gen());
    }
    bytes
}

fn case(rng: &mut StdRng, model: &mut Model, elapsed: f64) -> Case {
    let text = |t: String, answer: Answer| Case {
        msg: Message::text(t),
        answer,
        bye: false,
    };
    match rng.gen_range(0..100) {
        0..=14 => {
            let (t, a) = hello(rng, model);
            text(t, a)
        }
        15..=29 => {
            let (t, a) = ping(rng);
            text(t, a)
        }
        30..=44 => {
            let (t, a) = played(rng);
            text(t, a)
        }
        45..=74 => text(garbage(rng), Answer::Error("bad_message".into())),
        75..=84 => {
            let odd = rng.gen_bool(0.3);
            let rate = model.rate.unwrap_or(16_000);
            let mut samples = rng.gen_range(0..=(rate as usize / 50));
            let secs = samples as f64 / f64::from(rate);
            // Stay under the audio budget (2x real time + 5 s burst).
            if odd || model.audio_secs + secs > 3.0 + 1.5 * elapsed {
                samples = 0;
            }
            if !odd {
                model.rate.get_or_insert(16_000);
                model.audio_secs += samples as f64 / f64::from(rate);
            }
            Case {
                msg: Message::binary(audio(rng, samples, odd)),
                answer: if odd {
                    Answer::Error("bad_audio".into())
                } else {
                    Answer::Nothing
                },
                bye: false,
            }
        }
        85..=89 => {
            let n = rng.gen_range(MAX_MESSAGE + 1..HARD_CAP);
            let msg = if rng.gen_bool(0.5) {
                Message::binary(vec![0u8; n])
            } else {
                Message::text("x".repeat(n))
            };
            Case {
                msg,
                answer: Answer::Error("message_too_large".into()),
                bye: false,
            }
        }
        90..=97 => {
            let n = rng.gen_range(0..60);
            Case {
                msg: Message::Ping(audio(rng, n, false).into()),
                answer: Answer::Nothing,
                bye: false,
            }
        }
        _ => Case {
            msg: Message::text(r#"{"type":"bye"}"#),
            answer: Answer::Nothing,
            bye: true,
        },
    }
}

#[derive(Default, Debug)]
struct WorkerReport {
    messages: u64,
    sequences: u64,
    mismatches: Vec<String>,
}

/// Reads until the pong `id` (or the close after a `bye`), collecting the
/// answers that matter: protocol errors and pongs.
async fn collect(ws: &mut Ws, until: Option<u64>) -> Result<Vec<Answer>, String> {
    let mut got = Vec::new();
    loop {
        let msg = match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return Err(format!("no answer within {WAIT:?} (waiting for {until:?})")),
            Ok(None) => return Err("socket ended".into()),
            Ok(Some(Err(e))) => return Err(format!("socket error: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value =
                    serde_json::from_str(t.as_str()).map_err(|e| format!("not JSON: {e}"))?;
                match v["type"].as_str() {
                    Some("pong") => {
                        let id = v["id"].as_u64();
                        if until.is_some() && id == until {
                            return Ok(got);
                        }
                        got.push(Answer::Pong(id));
                    }
                    Some("error") => {
                        let code = v["code"].as_str().unwrap_or("?").to_string();
                        if v["source"] != "protocol"
                            || v["message"].as_str().is_none_or(str::is_empty)
                        {
                            return Err(format!("unexpected error event {v}"));
                        }
                        got.push(Answer::Error(code));
                    }
                    _ => {}
                }
            }
            Message::Close(frame) => {
                if until.is_none() && frame.as_ref().is_some_and(|f| f.code == CloseCode::Normal) {
                    return Ok(got);
                }
                return Err(format!("closed: {frame:?}"));
            }
            _ => {}
        }
    }
}

async fn worker(running: Arc<Running>, seed: u64, quota: u64) -> WorkerReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = WorkerReport::default();
    let url = format!("{}?token={}", running.base, running.token);
    let started = Instant::now();
    let mut sync = SYNC_BASE + seed * 1_000_000;
    while report.messages < quota && report.mismatches.len() < 5 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        report.sequences += 1;
        let opened = Instant::now();
        let mut model = Model::default();
        let length = rng.gen_range(20..600);
        let mut sent = 0;
        'sequence: while sent < length && report.messages < quota {
            let batch = rng.gen_range(1..25);
            let mut expected = Vec::new();
            let mut bye = false;
            for _ in 0..batch {
                let c = case(&mut rng, &mut model, opened.elapsed().as_secs_f64());
                // Pace: at most PACE_PER_SEC messages a second.
                let due = started + Duration::from_secs_f64(report.messages as f64 / PACE_PER_SEC);
                tokio::time::sleep_until(due.into()).await;
                if let Err(e) = ws.send(c.msg).await {
                    report.mismatches.push(format!("send failed: {e}"));
                    break 'sequence;
                }
                report.messages += 1;
                sent += 1;
                if c.answer != Answer::Nothing {
                    expected.push(c.answer);
                }
                if c.bye {
                    bye = true;
                    break;
                }
            }
            let until = if bye {
                None
            } else {
                sync += 1;
                let ping = format!(r#"{{"type":"ping","id":{sync}}}"#);
                if ws.send(Message::text(ping)).await.is_err() {
                    report.mismatches.push("sync ping failed".into());
                    break;
                }
                report.messages += 1;
                Some(sync)
            };
            match collect(&mut ws, until).await {
                Ok(got) if got == expected => {}
                Ok(got) => {
                    report
                        .mismatches
                        .push(format!("expected {expected:?}, got {got:?}"));
                }
                Err(e) => report
                    .mismatches
                    .push(format!("{e} (expected {expected:?})")),
            }
            if bye {
                break;
            }
        }
        let _ = ws.close(None).await;
    }
    report
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The well-behaved session: says a question, waits for the reply to be
/// committed, pings every 100 ms; returns the turns and the longest waits.
async fn well_behaved(running: Arc<Running>, stop: Arc<AtomicU64>) -> (u64, Duration, Duration) {
    let url = format!("{}?token={}", running.base, running.token);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let (mut turns, mut max_pong, mut max_reply) = (0, Duration::ZERO, Duration::ZERO);
    let mut id = 0u64;
    while stop.load(Ordering::Relaxed) == 0 {
        let said = Instant::now();
        common::ws::say_question(&mut ws).await;
        let mut ping_at: Option<(u64, Instant)> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some((_, at)) = ping_at {
                        assert!(at.elapsed() < WAIT, "the well-behaved session's pong is {:?} late", at.elapsed());
                        continue;
                    }
                    id += 1;
                    ws.send(Message::text(format!(r#"{{"type":"ping","id":{id}}}"#))).await.expect("ping");
                    ping_at = Some((id, Instant::now()));
                }
                msg = ws.next() => {
                    let msg = msg.expect("open").expect("no socket error");
                    let Message::Text(t) = msg else { continue };
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                    assert_ne!(v["type"], "error", "the well-behaved session got an error: {v}");
                    if v["type"] == "pong" {
                        if let Some((want, at)) = ping_at {
                            if v["id"].as_u64() == Some(want) {
                                max_pong = max_pong.max(at.elapsed());
                                ping_at = None;
                            }
                        }
                    }
                    if v["type"] == "committed" {
                        max_reply = max_reply.max(said.elapsed());
                        turns += 1;
                        break;
                    }
                }
            }
            assert!(said.elapsed() < WAIT * 2, "no reply within {:?}", WAIT * 2);
        }
    }
    let _ = ws.close(None).await;
    (turns, max_pong, max_reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_random_messages_get_their_documented_answers() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        eprintln!("panic: {info}");
    }));
    let total: u64 = std::env::var("COLLOQUY_FUZZ_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("COLLOQUY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(18);
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.max_message_bytes = MAX_MESSAGE;
    config.rate_limit = RateLimit {
        messages_per_sec: 2000.0,
        message_burst: 4000.0,
        bytes_per_sec: 8.0 * 1024.0 * 1024.0,
        byte_burst: 16.0 * 1024.0 * 1024.0,
        ..RateLimit::default()
    };
    let agents: AgentFactory = Arc::new(|| Arc::new(ParrotAgent) as Arc<dyn Agent>);
    let running = Arc::new(Running::start(config, agents).await);
    let stats = running.stats.clone();

    let stop = Arc::new(AtomicU64::new(0));
    let healthy = tokio::spawn(well_behaved(running.clone(), stop.clone()));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(running.clone(), seed * 100 + w, total / WORKERS)))
        .collect();
    // Memory: sampled every 250 ms; compared from 10 % into the run
    // (allocator and sessions warm) to its end.
    let samples = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while stop.load(Ordering::Relaxed) == 0 {
                samples.push((t0.elapsed().as_secs_f64(), rss_kib()));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            samples
        })
    };
    let mut reports = Vec::new();
    for w in workers {
        reports.push(w.await.expect("worker"));
    }
    let elapsed = t0.elapsed();
    let rss_end = rss_kib();
    stop.store(1, Ordering::Relaxed);
    let samples = samples.await.expect("sampler");
    let rss_early = samples
        .iter()
        .find(|(t, _)| *t >= elapsed.as_secs_f64() * 0.1)
        .map_or(rss_end, |s| s.1);
    let (turns, max_pong, max_reply) = healthy.await.expect("the well-behaved session");

    let messages: u64 = reports.iter().map(|r| r.messages).sum();
    let sequences: u64 = reports.iter().map(|r| r.sequences).sum();
    let mismatches: Vec<&String> = reports.iter().flat_map(|r| &r.mismatches).collect();
    let growth = rss_end.saturating_sub(rss_early);
    println!(
        "fuzz: {messages} messages in {sequences} sequences, {:.1} s, {} mismatches, {} panics; \
         rejected with an error: {}; RSS {} -> {} KiB (+{} KiB); well-behaved: {turns} turns, \
         longest pong {:?}, longest reply {:?}",
        elapsed.as_secs_f64(),
        mismatches.len(),
        PANICS.load(Ordering::Relaxed),
        stats.messages_rejected.load(Ordering::Relaxed),
        rss_early,
        rss_end,
        growth,
        max_pong,
        max_reply,
    );
    assert_eq!(PANICS.load(Ordering::Relaxed), 0, "no panics");
    assert!(
        mismatches.is_empty(),
        "answers differ from the protocol: {mismatches:#?}"
    );
    assert!(messages >= total, "{messages} of {total} messages sent");
    assert!(turns >= 1, "the well-behaved session was answered");
    assert!(
        growth < 64 * 1024,
        "RSS grew by {growth} KiB during the fuzz"
    );
    Arc::try_unwrap(running)
        .unwrap_or_else(|_| panic!("tasks still hold the server"))
        .stop()
        .await;
}
