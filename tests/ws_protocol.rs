//! The WebSocket protocol's defences (`colloquy serve`): every kind of bad
//! client gets its own error and nothing else breaks. Invariant checked
//! (server invariant 2): no client message can stop the server or disturb
//! another session — after each abuse, a healthy session still gets a reply
//! from the parrot agent.
//!
//! Each test runs a server in-process on 127.0.0.1 port 0 and talks to it
//! with tokio-tungstenite. Waits are bounded by timeouts on expected
//! messages, never sleeps.

mod common;
use colloquy::agent::{parrot::ParrotAgent, Agent};
use colloquy::transport::websocket::{AgentFactory, ServeConfig};
use common::ws::{expect_close, next_json, Running, Ws, WAIT};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

struct TestServer {
    running: Running,
    base: String,
    token: String,
}

impl TestServer {
    async fn start(tune: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
        tune(&mut config);
        let agents: AgentFactory = Arc::new(|| Arc::new(ParrotAgent) as Arc<dyn Agent>);
        let running = Running::start(config, agents).await;
        Self {
            base: running.base.clone(),
            token: running.token.clone(),
            running,
        }
    }

    fn url(&self) -> String {
        format!("{}?token={}", self.base, self.token)
    }

    async fn connect(&self) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(self.url())
            .await
            .expect("connect");
        ws
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// Reads until an error event with `code`; panics if the socket closes first.
async fn expect_error(ws: &mut Ws, code: &str) -> serde_json::Value {
    loop {
        let Some(v) = next_json(ws).await else {
            panic!("socket closed before an error with code {code}");
        };
        if v["type"] == "error" {
            assert_eq!(v["code"], code, "unexpected error: {v}");
            assert_eq!(v["source"], "protocol", "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            return v;
        }
    }
}

/// Sends a ping and expects its pong: the session is alive.
async fn assert_alive(ws: &mut Ws) {
    ws.send(Message::text(r#"{"type":"ping","id":7}"#))
        .await
        .expect("send ping");
    loop {
        let v = next_json(ws).await.expect("session still open");
        if v["type"] == "pong" {
            assert_eq!(v["id"], 7);
            return;
        }
        assert_ne!(v["type"], "error", "unexpected error: {v}");
    }
}

/// A healthy session: says a question (faster than real time, in 100 ms
/// messages) and must hear the parrot start answering with audio.
async fn healthy_session_gets_a_reply(server: &TestServer) {
    let mut ws = server.connect().await;
    common::ws::say_question(&mut ws).await;
    let mut started = false;
    let mut audio_bytes = 0usize;
    while !(started && audio_bytes >= 640) {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the parrot answers within the wait")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                assert_ne!(v["type"], "error", "healthy session got an error: {v}");
                if v["type"] == "bot_started_speaking" {
                    started = true;
                }
            }
            Message::Binary(b) => {
                assert_eq!(b.len() % 2, 0, "bot audio is whole PCM16 samples");
                assert!(b.len() <= 640, "bot audio comes in 20 ms frames");
                audio_bytes += b.len();
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
}

#[tokio::test]
async fn the_server_greets_with_its_version_and_a_healthy_session_gets_a_reply() {
    let server = TestServer::start(|_| {}).await;
    let mut ws = server.connect().await;
    let hello = next_json(&mut ws).await.expect("hello");
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["version"], 1);
    assert_eq!(hello["output_rate"], 16000);
    assert_eq!(hello["agent"], "parrot");
    drop(ws);
    healthy_session_gets_a_reply(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_before_the_upgrade() {
    let server = TestServer::start(|_| {}).await;
    for url in [
        format!("{}?token=wrong", server.base),
        server.base.clone(),
        format!("{}?token=", server.base),
    ] {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{url}");
                let body =
                    String::from_utf8(resp.body().clone().unwrap_or_default()).expect("utf-8 body");
                assert!(body.contains(r#""code":"unauthorized""#), "{body}");
            }
            other => panic!("{url}: expected HTTP 401, got {other:?}"),
        }
    }
    healthy_session_gets_a_reply(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_is_refused_and_the_own_origin_is_accepted() {
    let server = TestServer::start(|_| {}).await;
    let mut req = server.url().into_client_request().expect("request");
    req.headers_mut()
        .insert("Origin", HeaderValue::from_static("http://evil.example"));
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).expect("utf-8");
            assert!(body.contains(r#""code":"bad_origin""#), "{body}");
        }
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    let own = server.base.replace("ws://", "http://").replace("/ws", "");
    let mut req = server.url().into_client_request().expect("request");
    req.headers_mut()
        .insert("Origin", HeaderValue::from_str(&own).expect("origin"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("own origin is accepted");
    assert_alive(&mut ws).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_get_an_error_and_huge_ones_close_cleanly() {
    let server = TestServer::start(|c| c.max_message_bytes = 8 * 1024).await;
    let mut ws = server.connect().await;
    // Over the limit, under the hard cap: dropped with an error, session lives.
    ws.send(Message::binary(vec![0u8; 16 * 1024]))
        .await
        .expect("send");
    expect_error(&mut ws, "message_too_large").await;
    assert_alive(&mut ws).await;
    // Over the hard cap (4x): error, then a close frame 1009.
    ws.send(Message::binary(vec![0u8; 64 * 1024]))
        .await
        .expect("send");
    expect_error(&mut ws, "message_too_large").await;
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::Size));
    healthy_session_gets_a_reply(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn text_garbage_gets_a_bad_message_error_and_the_session_goes_on() {
    let server = TestServer::start(|_| {}).await;
    let mut ws = server.connect().await;
    for garbage in [
        "not json at all",
        "{\"type\":",
        "[1,2,3]",
        r#"{"no_type":true}"#,
        r#"{"type":"launch"}"#,
        r#"{"type":"hello","sample_rate":"fast"}"#,
    ] {
        ws.send(Message::text(garbage)).await.expect("send");
        expect_error(&mut ws, "bad_message").await;
        assert_alive(&mut ws).await;
    }
    ws.send(Message::text(r#"{"type":"hello","version":9}"#))
        .await
        .expect("send");
    expect_error(&mut ws, "bad_hello").await;
    assert_alive(&mut ws).await;
    healthy_session_gets_a_reply(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn binary_of_odd_length_gets_a_bad_audio_error_and_the_session_goes_on() {
    let server = TestServer::start(|_| {}).await;
    let mut ws = server.connect().await;
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    expect_error(&mut ws, "bad_audio").await;
    assert_alive(&mut ws).await;
    // Whole samples are accepted afterwards.
    ws.send(Message::binary(vec![0u8; 640]))
        .await
        .expect("send");
    assert_alive(&mut ws).await;
    healthy_session_gets_a_reply(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_while_another_session_keeps_working() {
    let server = TestServer::start(|_| {}).await;
    let mut flood = server.connect().await;
    let flooder = tokio::spawn(async move {
        let frame = vec![0u8; 640];
        for _ in 0..3000 {
            if flood.send(Message::binary(frame.clone())).await.is_err() {
                break;
            }
        }
        let v = expect_error(&mut flood, "rate_limited").await;
        assert!(v["message"].as_str().unwrap_or("").contains("limit"), "{v}");
        expect_close(&mut flood).await
    });
    healthy_session_gets_a_reply(&server).await;
    let code = flooder.await.expect("flood task");
    assert_eq!(
        code,
        Some(CloseCode::Policy),
        "a flood ends in a policy close"
    );
    healthy_session_gets_a_reply(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn sessions_beyond_the_maximum_are_refused_with_503() {
    let server = TestServer::start(|c| c.max_sessions = 2).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert_alive(&mut a).await;
    assert_alive(&mut b).await;
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).expect("utf-8");
            assert!(body.contains(r#""code":"too_many_sessions""#), "{body}");
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    // A slot frees when a session ends.
    a.close(None).await.expect("close");
    while next_json(&mut a).await.is_some() {}
    drop(a);
    let mut tries = 0;
    let mut c = loop {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok((ws, _)) => break ws,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("slot not released: {e}"),
        }
    };
    assert_alive(&mut c).await;
    assert_alive(&mut b).await;
    server.stop().await;
}

#[tokio::test]
async fn an_idle_connection_gets_an_error_and_a_clean_close() {
    let server = TestServer::start(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut ws = server.connect().await;
    expect_error(&mut ws, "idle_timeout").await;
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::Normal));
    server.stop().await;
}

/// The body of a refused upgrade: `status` and an error with `code`.
fn assert_refused(result: Result<(Ws, impl std::fmt::Debug), WsError>, status: u16, code: &str) {
    match result {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), status);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).expect("utf-8");
            assert!(body.contains(&format!(r#""code":"{code}""#)), "{body}");
        }
        Ok(_) => panic!("expected HTTP {status}, got an upgrade"),
        Err(e) => panic!("expected HTTP {status}, got {e:?}"),
    }
}

/// DNS rebinding: a page of `evil.example`, whose name now points at this
/// machine, sends `Host` and `Origin` that agree with each other. Bound to
/// every interface, the server must still refuse it (the request's `Host`
/// is never an allowed origin), and keep accepting its loopback origin.
#[tokio::test]
async fn a_rebound_host_and_origin_are_refused_on_every_interface() {
    let server = TestServer::start(|c| c.bind = "0.0.0.0:0".parse().expect("addr")).await;
    let port = server
        .base
        .rsplit(':')
        .next()
        .expect("port")
        .trim_end_matches("/ws");
    let url = format!("ws://127.0.0.1:{port}/ws?token={}", server.token);
    let mut req = url.as_str().into_client_request().expect("request");
    let evil = format!("evil.example:{port}");
    req.headers_mut()
        .insert("Host", HeaderValue::from_str(&evil).expect("host"));
    req.headers_mut().insert(
        "Origin",
        HeaderValue::from_str(&format!("http://{evil}")).expect("origin"),
    );
    assert_refused(
        tokio_tungstenite::connect_async(req).await,
        403,
        "bad_origin",
    );
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut().insert(
        "Origin",
        HeaderValue::from_str(&format!("http://127.0.0.1:{port}")).expect("origin"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the loopback origin is accepted");
    assert_alive(&mut ws).await;
    server.stop().await;
}

/// WebSocket pings are messages like any other: a flood of them gets the
/// rate-limit error and the policy close, like a flood of audio.
#[tokio::test]
async fn a_ping_flood_is_rate_limited_then_closed() {
    let server = TestServer::start(|_| {}).await;
    let mut flood = server.connect().await;
    for i in 0..3000u32 {
        if flood
            .send(Message::Ping(i.to_le_bytes().to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let v = expect_error(&mut flood, "rate_limited").await;
    assert!(v["message"].as_str().unwrap_or("").contains("ping"), "{v}");
    assert_eq!(expect_close(&mut flood).await, Some(CloseCode::Policy));
    healthy_session_gets_a_reply(&server).await;
    server.stop().await;
}

/// Pings keep nothing alive: a client that only pings is closed at the
/// idle timeout all the same.
#[tokio::test]
async fn pings_do_not_reset_the_idle_timer() {
    let server = TestServer::start(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut ws = server.connect().await;
    let outcome = tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if ws.send(Message::Ping(vec![1].into())).await.is_err() {
                        return None;
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                        if v["type"] == "error" {
                            return Some(v);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return None,
                },
            }
        }
    })
    .await
    .expect("pinging did not keep the connection open past the idle timeout");
    let v = outcome.expect("an error before the close");
    assert_eq!(v["code"], "idle_timeout", "{v}");
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::Normal));
    server.stop().await;
}

/// Audio is capped in seconds of audio, not bytes: an 8 kHz client sending
/// 200 ms messages at 10x real time stays under the message and byte limits
/// but gets `rate_limited` once its burst of audio is spent.
#[tokio::test]
async fn audio_at_ten_times_real_time_is_rate_limited_at_8_khz() {
    let server = TestServer::start(|_| {}).await;
    let mut ws = server.connect().await;
    ws.send(Message::text(
        r#"{"type":"hello","version":1,"sample_rate":8000}"#,
    ))
    .await
    .expect("hello");
    let frame = vec![0u8; 1600 * 2]; // 200 ms at 8 kHz
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0u32;
    let err = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    ws.send(Message::binary(frame.clone())).await.expect("send audio");
                    sent += 1;
                }
                msg = ws.next() => {
                    let Some(Ok(Message::Text(t))) = msg else { continue };
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                    if v["type"] == "error" {
                        return v;
                    }
                }
            }
        }
    })
    .await
    .expect("10x real time is refused within the wait");
    assert_eq!(err["code"], "rate_limited", "{err}");
    assert!(
        err["message"].as_str().unwrap_or("").contains("real time"),
        "{err}"
    );
    // The burst (5 s of audio) and 2x real time let through at least 25
    // messages before the first drop.
    assert!(sent >= 25, "refused after only {sent} messages");
    assert_alive(&mut ws).await;
    server.stop().await;
}

/// At most `max_per_address` live connections from one address: the next
/// is refused with 429 until one ends.
#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_refused_with_429() {
    let server = TestServer::start(|c| {
        c.max_per_address = 2;
        c.per_address_loopback = true;
    })
    .await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert_alive(&mut a).await;
    assert_alive(&mut b).await;
    assert_refused(
        tokio_tungstenite::connect_async(server.url()).await,
        429,
        "too_many_connections",
    );
    a.close(None).await.expect("close");
    while next_json(&mut a).await.is_some() {}
    drop(a);
    let mut tries = 0;
    let mut c = loop {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok((ws, _)) => break ws,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("address slot not released: {e}"),
        }
    };
    assert_alive(&mut c).await;
    assert_alive(&mut b).await;
    server.stop().await;
}
