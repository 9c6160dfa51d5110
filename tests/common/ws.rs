//! WebSocket test helpers: an in-process `colloquy serve` on 127.0.0.1 port
//! 0, and bounded waits for what it sends (never sleeps).

use colloquy::transport::websocket::{AgentFactory, ServeConfig, Server, ServerStats};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The longest wait for any expected message.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running on its own task until [`Running::stop`].
pub struct Running {
    /// `ws://127.0.0.1:PORT/ws`
    pub base: String,
    pub token: String,
    /// The server's counters.
    pub stats: Arc<ServerStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Binds and runs a server with `config` and `agents`.
    pub async fn start(config: ServeConfig, agents: AgentFactory) -> Self {
        let token = config.token.clone();
        let server = Server::bind(config, agents).await.expect("bind");
        let base = format!("ws://{}/ws", server.local_addr());
        let stats = server.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("server run");
        });
        Self {
            base,
            token,
            stats,
            stop: Some(tx),
            task,
        }
    }

    /// Stops the server and waits for it (bounded).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

/// Next JSON text message, skipping audio; None when the socket closed.
pub async fn next_json(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the wait")?;
        match msg {
            Ok(Message::Text(t)) => {
                return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"))
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads until the server closes; returns the close code.
pub async fn expect_close(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close within the wait")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Says the question `speech/q-france.wav` at 16 kHz: a `hello`, then the
/// audio and a second of silence in 100 ms messages, faster than real time.
pub async fn say_question(ws: &mut Ws) {
    use futures::SinkExt;
    ws.send(Message::text(
        r#"{"type":"hello","version":1,"sample_rate":16000}"#,
    ))
    .await
    .expect("hello");
    let mut samples = super::load16k("speech/q-france.wav");
    samples.extend(std::iter::repeat_n(0i16, 16_000));
    for chunk in samples.chunks(1600) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        ws.send(Message::binary(bytes)).await.expect("send audio");
    }
}
