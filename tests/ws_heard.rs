//! Heard means heard (`docs/protocol.md`): over the WebSocket, an
//! interrupted reply is committed as far as the client *played* it (its
//! `played` reports), not as far as the server *sent* it.
//!
//! A scripted agent answers every turn with ten chunks of two words, 250 ms
//! of audio each, so the committed text says exactly how many samples were
//! counted as heard. A scripted client says a question, reads the reply,
//! and plays it "late" (its reported position trails what it received by
//! 400 ms, a deep jitter buffer); then a second utterance cuts in.
//!
//! # Invariants
//! 1. No sleeps: every wait is for an expected message, bounded by
//!    `common::ws::WAIT`. The client's positions are chosen by the test, so
//!    the expected text is exact whatever the machine's speed.

mod common;
use colloquy::agent::{Agent, Payload, Reporter, TurnJob};
use colloquy::transport::websocket::{AgentFactory, ServeConfig};
use colloquy::turn::playout::spoken_prefix;
use colloquy::turn::SpokenChunk;
use common::ws::{Running, Ws, WAIT};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

const WORDS: [&str; 20] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
];
/// Samples per chunk (250 ms at 16 kHz).
const CHUNK: usize = 4000;
/// How far the client's playback trails what it received (400 ms).
const BEHIND: u64 = 6400;

fn chunk_text(i: usize) -> String {
    format!("{} {}", WORDS[2 * i], WORDS[2 * i + 1])
}

fn chunks() -> Vec<SpokenChunk> {
    (0..10)
        .map(|i| SpokenChunk {
            text: chunk_text(i),
            samples: CHUNK as u64,
        })
        .collect()
}

/// Says ten two-word chunks, 250 ms of tone each.
struct Teller;

impl Agent for Teller {
    fn name(&self) -> &str {
        "teller"
    }

    fn start(&self, job: TurnJob, reporter: Reporter) {
        if job.cancel.is_cancelled() {
            return;
        }
        for i in 0..10 {
            let tone: Vec<i16> = (0..CHUNK).map(|k| ((k % 40) as i16 - 20) * 300).collect();
            if !reporter.send(Payload::Speech {
                text: chunk_text(i),
                audio: tone.into(),
            }) {
                return;
            }
        }
        reporter.send(Payload::Done);
    }

    fn transcribes(&self) -> bool {
        false
    }
}

/// A client that counts the bot audio it receives.
struct Client {
    ws: Ws,
    received: u64,
}

impl Client {
    async fn connect(running: &Running) -> Self {
        let url = format!("{}?token={}", running.base, running.token);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Self { ws, received: 0 }
    }

    /// The next JSON message, counting audio on the way.
    async fn next_json(&mut self) -> serde_json::Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message within the wait")
                .expect("socket open")
                .expect("no socket error");
            match msg {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                    assert_ne!(v["type"], "error", "unexpected error: {v}");
                    return v;
                }
                Message::Binary(b) => self.received += b.len() as u64 / 2,
                _ => {}
            }
        }
    }

    async fn until(&mut self, kind: &str) -> serde_json::Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    async fn played(&mut self, samples: u64, clear: Option<u64>) {
        let msg = match clear {
            Some(e) => format!(r#"{{"type":"played","samples":{samples},"clear":{e}}}"#),
            None => format!(r#"{{"type":"played","samples":{samples}}}"#),
        };
        self.ws.send(Message::text(msg)).await.expect("send played");
    }

    /// Reads audio until at least `samples` arrived, reporting the position
    /// `BEHIND` the received count every 100 ms of audio when `report`;
    /// returns the last position reported.
    async fn receive(&mut self, samples: u64, report: bool) -> u64 {
        let mut last = 0;
        let mut reported = 0;
        while self.received < samples {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("bot audio within the wait")
                .expect("socket open")
                .expect("no socket error");
            if let Message::Binary(b) = msg {
                self.received += b.len() as u64 / 2;
                if report && self.received >= last + 1600 {
                    last = self.received;
                    reported = self.received.saturating_sub(BEHIND);
                    self.played(reported, None).await;
                }
            }
        }
        reported
    }

    /// Sends the interrupting utterance's speech (no trailing silence:
    /// the server's own silence feed ends it, after the client's report).
    async fn cut_in(&mut self) {
        let speech = common::load16k("speech/q-germany-f3.wav");
        for chunk in speech.chunks(320) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            self.ws
                .send(Message::binary(bytes))
                .await
                .expect("send audio");
        }
    }
}

async fn start() -> Running {
    let config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    let agents: AgentFactory = Arc::new(|| Arc::new(Teller) as Arc<dyn Agent>);
    Running::start(config, agents).await
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// The client reports where it is, and at the clear where it stopped: the
/// committed reply is exactly the prefix up to that position, shorter than
/// what the server had sent.
#[tokio::test]
async fn an_interrupted_reply_is_committed_as_far_as_the_client_played_it() {
    let running = start().await;
    let mut c = Client::connect(&running).await;
    common::ws::say_question(&mut c.ws).await;
    c.until("bot_started_speaking").await;
    c.receive(16_000, true).await;
    c.cut_in().await;
    let clear = c.until("clear_playback").await;
    let epoch = clear["epoch"].as_u64().expect("epoch");
    // Everything sent before the clear has arrived (it follows the audio).
    let sent = c.received;
    let heard = sent.saturating_sub(BEHIND);
    c.played(heard, Some(epoch)).await;
    let committed = loop {
        let v = c.until("committed").await;
        if v["interrupted"] == true {
            break v;
        }
    };
    let got = committed["assistant"].as_str().expect("assistant text");
    let want = spoken_prefix(&chunks(), heard);
    assert_eq!(got, want, "heard {heard} of {sent} sent samples");
    let sent_text = spoken_prefix(&chunks(), sent);
    assert!(
        words(got) + 2 <= words(&sent_text),
        "the committed text ({got:?}) must stop where the client stopped, not at what was sent ({sent_text:?})"
    );
    running.stop().await;
}

/// A client that reports its position but misses the clear report: the
/// reply is committed up to its last report (never more than it played).
#[tokio::test]
async fn without_a_clear_report_the_last_reported_position_is_committed() {
    let running = start().await;
    let mut c = Client::connect(&running).await;
    common::ws::say_question(&mut c.ws).await;
    c.until("bot_started_speaking").await;
    let reported = c.receive(16_000, true).await;
    c.cut_in().await;
    let committed = loop {
        let v = c.until("committed").await;
        if v["interrupted"] == true {
            break v;
        }
    };
    let got = committed["assistant"].as_str().expect("assistant text");
    assert!(reported > 0, "the client reported");
    let want = spoken_prefix(&chunks(), reported);
    assert_eq!(got, want, "last report: {reported} samples played");
    running.stop().await;
}

/// A client that never reports gets what was sent: the prefix up to the
/// audio that arrived before the clear.
#[tokio::test]
async fn a_client_that_never_reports_gets_what_was_sent() {
    let running = start().await;
    let mut c = Client::connect(&running).await;
    common::ws::say_question(&mut c.ws).await;
    c.until("bot_started_speaking").await;
    c.receive(16_000, false).await;
    c.cut_in().await;
    c.until("clear_playback").await;
    let sent = c.received;
    let committed = loop {
        let v = c.until("committed").await;
        if v["interrupted"] == true {
            break v;
        }
    };
    let got = committed["assistant"].as_str().expect("assistant text");
    assert_eq!(got, spoken_prefix(&chunks(), sent), "{sent} samples sent");
    running.stop().await;
}
