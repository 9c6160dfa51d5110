//! Slow clients (issue 18): ten clients that speak and then never read
//! what the server sends must not hold up another session.
//!
//! Each connection is its own task with its own send queue: the queue is
//! drained on every step, and a client that does not take a batch within
//! the send timeout is dropped (conn invariant 3), so a stalled socket costs
//! its own task, never another's. The stalled clients here open their
//! socket with a 4 KiB receive buffer, and the server's send buffer is
//! 8 KiB (`ServeConfig::send_buffer`), so the server's writes to them block
//! within the first second of the parrot's five-second answers.
//!
//! Checked (deterministic): a well-behaved client on the same server gets
//! its whole reply — `bot_started_speaking`, its utterance said back in 20 ms
//! frames, then `committed` not interrupted — within the usual wait, while the
//! ten are stalled; and every stalled client is dropped by the server
//! (its slot freed). How late the well-behaved client's frames are is
//! printed, not asserted: `cargo bench --bench ws_slow_clients` reports it.

mod common;
use colloquy::agent::{parrot::ParrotAgent, Agent};
use colloquy::transport::websocket::{AgentFactory, ServeConfig};
use common::ws::{Running, Ws, WAIT};
use futures::{SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const STALLED: usize = 10;

/// Connects with a tiny receive buffer (the server's writes block soon).
async fn connect_small(running: &Running) -> Ws {
    let addr: std::net::SocketAddr = running
        .base
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .expect("server address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let url = format!("{}?token={}", running.base, running.token);
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clients_that_never_read_do_not_hold_up_a_well_behaved_one() {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.send_timeout = Duration::from_secs(2);
    // Without it Linux grows the send buffer to hold seconds of audio.
    config.send_buffer = Some(8 * 1024);
    let agents: AgentFactory = Arc::new(|| Arc::new(ParrotAgent) as Arc<dyn Agent>);
    let running = Running::start(config, agents).await;

    // The stalled clients: each says a long question (about 5 s of audio,
    // sent at 2x real time so it is all accepted), then never reads.
    let speech = common::load16k("speech/librivox-0890.wav");
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(connect_small(&running).await);
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut frames = speech
        .chunks(1600)
        .chain(std::iter::repeat_n(&[0i16; 1600][..], 10));
    for chunk in frames.by_ref() {
        tick.tick().await;
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        for ws in &mut stalled {
            ws.send(Message::binary(bytes.clone())).await.expect("send");
        }
    }
    assert_eq!(
        running.stats.active_sessions.load(Ordering::Relaxed),
        STALLED
    );

    // The well-behaved client, while the parrot answers the ten.
    let url = format!("{}?token={}", running.base, running.token);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    common::ws::say_question(&mut ws).await;
    let said = common::load16k("speech/q-france.wav").len();
    let (mut started_speaking, mut audio, mut late_frames, mut max_late) =
        (false, 0usize, 0u32, Duration::ZERO);
    let mut first: Option<Instant> = None;
    let mut index = 0u32;
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the well-behaved client is answered within the wait")
            .expect("open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                assert_ne!(v["type"], "error", "{v}");
                if v["type"] == "bot_started_speaking" {
                    started_speaking = true;
                }
                if v["type"] == "committed" {
                    // Committed once all of it left the ring, so all of its
                    // audio came before this event.
                    assert_eq!(v["interrupted"], false, "{v}");
                    break;
                }
            }
            Message::Binary(b) => {
                assert!(started_speaking, "audio before bot_started_speaking");
                assert!(b.len() <= 640 && b.len() % 2 == 0, "20 ms PCM16 frames");
                audio += b.len() / 2;
                // Due: the first frame's arrival + 20 ms each, less the
                // server's 100 ms lead (it sends that much ahead).
                let now = Instant::now();
                let t0 = *first.get_or_insert(now);
                let due = t0 + Duration::from_millis(20 * u64::from(index))
                    - Duration::from_millis(100).min(Duration::from_millis(20 * u64::from(index)));
                let late = now.saturating_duration_since(due);
                if late > Duration::from_millis(20) {
                    late_frames += 1;
                }
                max_late = max_late.max(late);
                index += 1;
            }
            _ => {}
        }
    }
    // The parrot says the utterance back (its voiced part, from 300 ms
    // before the speech started): most of the question's length.
    assert!(
        audio * 4 >= said * 3,
        "the whole reply arrived: {audio} samples for a question of {said}"
    );
    println!(
        "slow clients: {STALLED} stalled; the well-behaved reply: {index} frames, {late_frames} more than 20 ms late, latest {max_late:?} (loaded machine; timing is not asserted)"
    );
    let _ = ws.close(None).await;

    // The stalled ones are dropped by the server (their writes time out).
    let deadline = Instant::now() + WAIT;
    while running.stats.active_sessions.load(Ordering::Relaxed) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} stalled sessions still held {:?} after they stopped reading",
            running.stats.active_sessions.load(Ordering::Relaxed),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stalled);
    running.stop().await;
}
