//! [`FakeOpenAi`]: an OpenAI-compatible test server with scripted replies
//! (see the testkit invariants).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The scripted behaviour of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// Answer with this HTTP status and error body instead of a stream.
    pub status: Option<u16>,
    /// `Retry-After` seconds sent with an error status.
    pub retry_after_s: Option<f64>,
    /// Error body `type`/`code` (e.g. `insufficient_quota`).
    pub error_code: Option<String>,
    /// Delay before the first token (or before the error status).
    pub first_token_delay: Duration,
    pub tokens: Vec<String>,
    /// Delay between tokens.
    pub token_interval: Duration,
    /// After this many tokens, pause this long.
    pub stall: Option<(usize, Duration)>,
    /// After this many tokens, break the connection.
    pub reset_after: Option<usize>,
    /// After this many tokens, send an event that is not JSON.
    pub malformed_after: Option<usize>,
    /// Send `[DONE]` without any chunk.
    pub empty: bool,
    pub finish_reason: String,
    /// (prompt, completion) tokens in a final usage chunk.
    pub usage: Option<(u32, u32)>,
    /// A tool call (name, JSON arguments) streamed after the tokens, in two
    /// pieces as real servers do; `finish_reason` becomes `tool_calls`.
    pub tool_call: Option<(String, String)>,
}

impl Default for Reply {
    fn default() -> Self {
        Self::tokens(["Hello", " there", "."])
    }
}

impl Reply {
    /// A streamed reply of these tokens, 10 ms apart, 50 ms to the first.
    pub fn tokens<S: Into<String>>(tokens: impl IntoIterator<Item = S>) -> Self {
        let tokens: Vec<String> = tokens.into_iter().map(Into::into).collect();
        Self {
            status: None,
            retry_after_s: None,
            error_code: None,
            first_token_delay: Duration::from_millis(50),
            usage: Some((12, tokens.len() as u32)),
            tokens,
            token_interval: Duration::from_millis(10),
            stall: None,
            reset_after: None,
            malformed_after: None,
            empty: false,
            finish_reason: "stop".into(),
            tool_call: None,
        }
    }

    /// A reply that calls the tool `name` with `arguments` (JSON text).
    pub fn tool_call(name: &str, arguments: &str) -> Self {
        Self {
            tool_call: Some((name.into(), arguments.into())),
            finish_reason: "tool_calls".into(),
            ..Self::tokens(Vec::<String>::new())
        }
    }

    /// An error status (after `first_token_delay`).
    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::tokens(Vec::<String>::new())
        }
    }

    /// A 429 with `Retry-After`.
    pub fn rate_limited(retry_after_s: f64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::status(429)
        }
    }

    /// `[DONE]` and nothing else.
    pub fn empty() -> Self {
        Self {
            empty: true,
            ..Self::tokens(Vec::<String>::new())
        }
    }

    pub fn first_token_after(mut self, d: Duration) -> Self {
        self.first_token_delay = d;
        self
    }

    pub fn every(mut self, d: Duration) -> Self {
        self.token_interval = d;
        self
    }

    pub fn stall_after(mut self, tokens: usize, d: Duration) -> Self {
        self.stall = Some((tokens, d));
        self
    }

    pub fn reset_after(mut self, tokens: usize) -> Self {
        self.reset_after = Some(tokens);
        self
    }

    pub fn malformed_after(mut self, tokens: usize) -> Self {
        self.malformed_after = Some(tokens);
        self
    }

    pub fn code(mut self, code: &str) -> Self {
        self.error_code = Some(code.into());
        self
    }
}

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub route: &'static str,
    /// The request's JSON body (chat and speech), or `Null`.
    pub body: serde_json::Value,
    pub body_len: usize,
    /// The `Authorization` header was present.
    pub authorized: bool,
    /// Tokens written to the client.
    pub tokens_sent: usize,
    /// The body stream was dropped before its end: the client went away.
    pub disconnected: bool,
    /// The reply ran to its scripted end.
    pub finished: bool,
}

#[derive(Default)]
struct Shared {
    chat: Mutex<VecDeque<Reply>>,
    transcriptions: Mutex<VecDeque<Reply>>,
    speech: Mutex<VecDeque<Reply>>,
    default_reply: Mutex<Reply>,
    log: Mutex<Vec<Recorded>>,
    changed: Notify,
    count: AtomicUsize,
}

impl Shared {
    fn next(&self, queue: &Mutex<VecDeque<Reply>>) -> Reply {
        let popped = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        popped.unwrap_or_else(|| {
            self.default_reply
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    fn record(&self, r: Recorded) -> usize {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push(r);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        log.len() - 1
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut Recorded)) {
        if let Some(r) = self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            f(r);
        }
        self.changed.notify_waiters();
    }
}

/// An in-process OpenAI-compatible server on 127.0.0.1.
pub struct FakeOpenAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOpenAi {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        *shared
            .default_reply
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Reply::default();
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/audio/transcriptions", post(transcriptions))
            .route("/v1/audio/speech", post(speech))
            .with_state(shared.clone());
        // No Nagle delay: on a paused clock, bytes held back in real time
        // would let the clock jump ahead (invariant 1).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues replies for the next chat requests, in order.
    pub fn push_chat(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .chat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(replies);
    }

    /// Queues replies for transcriptions (`tokens` joined is the text).
    pub fn push_transcription(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .transcriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(replies);
    }

    /// Queues replies for speech (`tokens.len()` × 10 ms of audio).
    pub fn push_speech(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .speech
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(replies);
    }

    /// The reply used when a queue is empty.
    pub fn set_default(&self, reply: Reply) {
        *self
            .shared
            .default_reply
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = reply;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> usize {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Waits until request `i` has ended (finished or disconnected).
    pub async fn wait_ended(&self, i: usize) -> Recorded {
        loop {
            let notified = self.shared.changed.notified();
            if let Some(r) = self
                .requests()
                .get(i)
                .filter(|r| r.finished || r.disconnected)
            {
                return r.clone();
            }
            notified.await;
        }
    }
}

fn error_response(reply: &Reply) -> Response {
    let status = StatusCode::from_u16(reply.status.unwrap_or(500))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "error": {
            "message": format!("scripted {}", status.as_u16()),
            "type": reply.error_code.clone().unwrap_or_else(|| "scripted".into()),
            "code": reply.error_code,
        }
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(s) = reply.retry_after_s {
        if let Ok(v) = s.to_string().parse() {
            resp.headers_mut().insert("retry-after", v);
        }
    }
    resp
}

/// Marks the request disconnected when the body is dropped before its end.
struct EndGuard {
    shared: Arc<Shared>,
    index: usize,
    done: Arc<AtomicBool>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let done = self.done.load(Ordering::Acquire);
        self.shared.update(self.index, |r| {
            if done {
                r.finished = true;
            } else {
                r.disconnected = true;
            }
        });
    }
}

fn chunk(model: &str, content: Option<&str>, finish: Option<&str>) -> Bytes {
    let v = serde_json::json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{ "index": 0, "delta": { "content": content }, "finish_reason": finish }]
    });
    Bytes::from(format!("data: {v}\n\n"))
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = shared.next(&shared.chat);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let model = json["model"].as_str().unwrap_or("fake").to_string();
    let index = shared.record(Recorded {
        route: "chat",
        body: json,
        body_len: body.len(),
        authorized: headers.contains_key("authorization"),
        tokens_sent: 0,
        disconnected: false,
        finished: false,
    });
    if reply.status.is_some() {
        tokio::time::sleep(reply.first_token_delay).await;
        shared.update(index, |r| r.finished = true);
        return error_response(&reply);
    }
    let done = Arc::new(AtomicBool::new(false));
    let guard = EndGuard {
        shared: shared.clone(),
        index,
        done: done.clone(),
    };
    // Steps: 0..n tokens, then the end.
    let state = (0usize, reply, guard, model, false);
    let stream = futures::stream::unfold(
        state,
        move |(i, reply, guard, model, ended)| async move {
            if ended {
                return None;
            }
            let delay = if i == 0 {
                reply.first_token_delay
            } else {
                reply.token_interval
            };
            tokio::time::sleep(delay).await;
            if let Some((after, d)) = reply.stall {
                if i == after && i > 0 {
                    tokio::time::sleep(d).await;
                }
            }
            if reply.empty {
                guard.done.store(true, Ordering::Release);
                return Some((
                    Ok(Bytes::from("data: [DONE]\n\n")),
                    (i, reply, guard, model, true),
                ));
            }
            if reply.reset_after == Some(i) {
                let err: Result<Bytes, std::io::Error> = Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "scripted reset",
                ));
                guard.done.store(true, Ordering::Release);
                return Some((err, (i, reply, guard, model, true)));
            }
            if reply.malformed_after == Some(i) {
                guard.done.store(true, Ordering::Release);
                return Some((
                    Ok(Bytes::from("data: {this is not json\n\n")),
                    (i, reply, guard, model, true),
                ));
            }
            if i < reply.tokens.len() {
                let b = chunk(&model, Some(&reply.tokens[i]), None);
                guard.shared.update(guard.index, |r| r.tokens_sent += 1);
                return Some((Ok(b), (i + 1, reply, guard, model, false)));
            }
            let mut tail = Vec::new();
            if let Some((name, arguments)) = &reply.tool_call {
                let (head, rest) = arguments.split_at(arguments.len() / 2);
                for (i, (id, fname, args)) in [
                    (Some("call_fake_1"), Some(name.as_str()), head),
                    (None, None, rest),
                ]
                .into_iter()
                .enumerate()
                {
                    let mut call = serde_json::json!({"index": 0, "function": {"arguments": args}});
                    if i == 0 {
                        call["id"] = id.into();
                        call["type"] = "function".into();
                        call["function"]["name"] = fname.into();
                    }
                    let v = serde_json::json!({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                        "choices": [{ "index": 0, "delta": { "tool_calls": [call] }, "finish_reason": null }]
                    });
                    tail.extend_from_slice(format!("data: {v}\n\n").as_bytes());
                }
            }
            tail.extend_from_slice(&chunk(&model, None, Some(&reply.finish_reason)));
            if let Some((p, c)) = reply.usage {
                let u = serde_json::json!({
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [], "usage": { "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c }
                });
                tail.extend_from_slice(format!("data: {u}\n\n").as_bytes());
            }
            tail.extend_from_slice(b"data: [DONE]\n\n");
            guard.done.store(true, Ordering::Release);
            Some((Ok(Bytes::from(tail)), (i, reply, guard, model, true)))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn transcriptions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = shared.next(&shared.transcriptions);
    let index = shared.record(Recorded {
        route: "transcriptions",
        body: serde_json::Value::Null,
        body_len: body.len(),
        authorized: headers.contains_key("authorization"),
        tokens_sent: 0,
        disconnected: false,
        finished: false,
    });
    tokio::time::sleep(reply.first_token_delay).await;
    shared.update(index, |r| r.finished = true);
    if reply.status.is_some() {
        return error_response(&reply);
    }
    axum::Json(serde_json::json!({ "text": reply.tokens.concat() })).into_response()
}

async fn speech(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = shared.next(&shared.speech);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let index = shared.record(Recorded {
        route: "speech",
        body: json,
        body_len: body.len(),
        authorized: headers.contains_key("authorization"),
        tokens_sent: 0,
        disconnected: false,
        finished: false,
    });
    tokio::time::sleep(reply.first_token_delay).await;
    shared.update(index, |r| r.finished = true);
    if reply.status.is_some() {
        return error_response(&reply);
    }
    // 10 ms of a 24 kHz tone per token, as WAV.
    let samples: Vec<i16> = (0..reply.tokens.len().max(1) * 240)
        .map(|i| ((i as f32 * 0.1).sin() * 8000.0) as i16)
        .collect();
    let mut wav = Vec::new();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 24_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    if let Ok(mut w) = hound::WavWriter::new(std::io::Cursor::new(&mut wav), spec) {
        for s in &samples {
            let _ = w.write_sample(*s);
        }
        let _ = w.finalize();
    }
    Response::builder()
        .header("content-type", "audio/wav")
        .body(Body::from(wav))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
