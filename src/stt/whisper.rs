//! Embedded speech to text: Whisper tiny.en through whisper.cpp, run in a
//! worker process (`colloquy-whisper`, crates/whisper-worker) because
//! whisper.cpp's ggml and llama.cpp's ggml cannot be linked into one binary.
//! The model is the ggml file the model store converts
//! (`models::ModelId::WhisperTinyEn`).
//!
//! # Invariants
//! 1. One worker per backend, started on first use and kept warm; requests
//!    are serialised (one encoder at a time): a request holds the reply pipe
//!    from sending to reading its reply.
//! 2. Cancelling a transcription returns `SttError::Cancelled` at once and
//!    sends the worker a cancel for that request's id: a running decode
//!    stops at its next abort check (one ggml graph node, a few ms) and a
//!    queued one is skipped, so the next request never waits behind a
//!    cancelled one. The worker stays warm (holds invariant 3 of `stt`).
//!    Killing it instead cost a respawn and a cold first decode (≈ 3×
//!    slower), and letting the decode run out held the worker for up to a
//!    second while the confirmed turn's decode waited behind it.
//!    Dropping the transcription's future before it finished counts as a
//!    cancel too ([`CancelOnDrop`]): a router or a `select!` that stops
//!    polling a losing or dead request must not leave it running in the
//!    worker (it did: a speculative turn's decode ran out in full and the
//!    confirmed turn's decode waited ≈ 180 ms for the reply pipe).
//! 3. Cancels never wait for the reply pipe: they go through the request
//!    pipe's own short lock.
//! 4. Blocking pipe I/O runs on `spawn_blocking`, never on the runtime's workers.

use super::{SpeechToText, SttError, Transcript};
use crate::models::{ModelId, ModelStore};
use async_trait::async_trait;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SAMPLE_RATE: usize = 16_000;
/// Name of the worker executable.
pub const WORKER_BIN: &str = "colloquy-whisper";
/// Message tags of the worker protocol (crates/whisper-worker/src/main.rs).
const TAG_REQUEST: u8 = 1;
const TAG_CANCEL: u8 = 2;

/// How much audio the encoder sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioCtx {
    /// The full 30 s window (whisper.cpp's default; cost independent of length).
    Full,
    /// The utterance plus `margin_ms`, at least `min_frames` encoder frames,
    /// falling back to the full window when the output looks like a loop.
    Fit { margin_ms: u32, min_frames: u32 },
}

impl AudioCtx {
    /// The pipeline's window: the utterance plus 1 s, at least 500 encoder
    /// frames (10 s), with the worker's ladder behind it
    /// (crates/whisper-worker/src/window.rs). A 250-frame (5 s) minimum was
    /// as good on the 10 real recordings but misheard the synthetic
    /// caller's "book a table" as "work at a roll" (the browser flow test
    /// failed on it). See README "Voice-to-voice latency".
    pub const FIT_DEFAULT: AudioCtx = AudioCtx::Fit {
        margin_ms: 1000,
        min_frames: 500,
    };
}

/// Settings of the Whisper backend.
#[derive(Clone, Debug)]
pub struct WhisperConfig {
    /// Threads for whisper.cpp (default 2).
    pub threads: usize,
    /// Encoder window policy (default full; see [`AudioCtx::FIT_DEFAULT`]).
    pub audio_ctx: AudioCtx,
    /// Longest utterance accepted, in seconds (at most 30).
    pub max_seconds: f32,
    /// The worker executable (default: next to the running program).
    pub worker: Option<PathBuf>,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            audio_ctx: AudioCtx::Full,
            max_seconds: 30.0,
            worker: None,
        }
    }
}

/// What one inference did.
#[derive(Clone, Debug, PartialEq)]
pub struct Decode {
    pub text: String,
    /// Encoder frames used (1500 = full window).
    pub frames: usize,
    /// The fitted window was rejected and a wider one (`frames`) rerun.
    pub fell_back: bool,
    /// Time inside the worker.
    pub elapsed: Duration,
    /// Abort checks (graph nodes) of other requests that ran while this one
    /// waited in the worker's queue.
    pub waited_checks: u64,
}

/// How a request ended in the worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Transcribed.
    Text(Decode),
    /// Stopped by a cancel: `running` when it had started (then
    /// `checks_after_cancel` abort checks ran after the cancel arrived;
    /// 1 = it stopped at the first one), else skipped in the queue.
    Cancelled {
        running: bool,
        checks_after_cancel: u64,
        elapsed: Duration,
    },
}

/// Whisper tiny.en in a worker process.
pub struct WhisperStt {
    inner: Arc<Inner>,
}

struct Inner {
    model: PathBuf,
    worker: PathBuf,
    config: WhisperConfig,
    /// The running worker (killed on drop).
    child: Mutex<Option<Child>>,
    /// The reply pipe; holding it serialises requests (invariant 1).
    stdout: Mutex<Option<BufReader<ChildStdout>>>,
    /// The request pipe, shared by requests and cancels (invariant 3).
    stdin: Mutex<Option<ChildStdin>>,
    next_id: AtomicU32,
    /// Requests cancelled before they were sent: never sent (invariant 2).
    cancelled: Mutex<std::collections::BTreeSet<u32>>,
    /// Whether the worker aborts between graph nodes (else only after the
    /// encoder and between decoder steps).
    per_node_abort: AtomicBool,
    /// What the worker's replies said, for [`WhisperStt::replies`].
    replies: Mutex<Replies>,
}

/// How requests ended since load (the warm-up included), from the worker's
/// replies: `cancelled_queued` also counts requests cancelled before they
/// were sent; `max_checks_after_cancel` is the most graph nodes a cancelled
/// decode ran after its cancel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replies {
    pub transcribed: u64,
    pub cancelled_running: u64,
    pub cancelled_queued: u64,
    pub max_checks_after_cancel: u64,
}

impl Replies {
    fn record(&mut self, outcome: &Outcome) {
        match *outcome {
            Outcome::Text(_) => self.transcribed += 1,
            Outcome::Cancelled {
                running,
                checks_after_cancel,
                ..
            } => {
                if running {
                    self.cancelled_running += 1;
                } else {
                    self.cancelled_queued += 1;
                }
                self.max_checks_after_cancel =
                    self.max_checks_after_cancel.max(checks_after_cancel);
            }
        }
    }
}

fn model_err(path: &Path, reason: impl Into<String>) -> SttError {
    SttError::Model {
        model: format!("whisper-tiny.en ({})", path.display()),
        reason: reason.into(),
        hint: "run `colloquy models fetch`".into(),
    }
}

fn backend(message: impl Into<String>) -> SttError {
    SttError::Backend {
        backend: "whisper-tiny.en".into(),
        message: message.into(),
    }
}

/// Finds the worker: `COLLOQUY_WHISPER_BIN`, else next to the running
/// program or one directory up (test binaries live in `deps/`).
pub fn find_worker() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COLLOQUY_WHISPER_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(WORKER_BIN), dir.parent()?.join(WORKER_BIN)]
        .into_iter()
        .find(|p| p.is_file())
}

impl WhisperStt {
    /// Prepares the backend for the ggml model at `path`, starts the worker
    /// and warms it with one decode of near-silence (≈ 0.5–1 s in all), so a
    /// bad model fails here, not mid-conversation, and the first turn is as
    /// fast as the next.
    pub fn load(path: &Path, config: WhisperConfig) -> Result<Self, SttError> {
        if !path.is_file() {
            return Err(model_err(path, "file not found"));
        }
        let worker = config.worker.clone().or_else(find_worker).ok_or_else(|| {
            backend(format!(
                "the worker program `{WORKER_BIN}` was not found next to this program \
                 (fix: build it with `cargo build --release --workspace`, or set COLLOQUY_WHISPER_BIN)"
            ))
        })?;
        let stt = Self {
            inner: Arc::new(Inner {
                model: path.to_path_buf(),
                worker,
                config,
                child: Mutex::new(None),
                stdout: Mutex::new(None),
                stdin: Mutex::new(None),
                next_id: AtomicU32::new(1),
                cancelled: Mutex::new(std::collections::BTreeSet::new()),
                per_node_abort: AtomicBool::new(false),
                replies: Mutex::new(Replies::default()),
            }),
        };
        {
            let mut stdout = stt
                .inner
                .stdout
                .lock()
                .map_err(|_| backend("worker lock poisoned"))?;
            *stdout = Some(stt.inner.spawn()?);
        }
        // The first decode of a fresh whisper.cpp context is about three
        // times slower than the next ones (buffers, first graph): pay it
        // here, at start, not in the caller's first turn.
        let warm: Vec<i16> = (0..SAMPLE_RATE)
            .map(|i| ((i * 7919 % 61) as i16) - 30)
            .collect();
        let id = stt.next_id();
        stt.inner.request(id, &warm, stt.inner.config.audio_ctx)?;
        Ok(stt)
    }

    /// Loads the model from the store (its error names the fix).
    pub fn from_store(store: &ModelStore, config: WhisperConfig) -> Result<Self, SttError> {
        let path = store
            .require(ModelId::WhisperTinyEn)
            .map_err(|e| model_err(Path::new("whisper-tiny.en"), e.to_string()))?;
        Self::load(&path, config)
    }

    /// Whether a cancel stops the worker between encoder graph nodes (Linux
    /// builds) rather than only after the encoder.
    pub fn aborts_per_node(&self) -> bool {
        self.inner.per_node_abort.load(Ordering::Relaxed)
    }

    /// How the worker's requests ended so far (invariant 2 made visible:
    /// a cancelled or dropped transcription shows as cancelled, not
    /// transcribed).
    pub fn replies(&self) -> Replies {
        self.inner.replies.lock().map(|r| *r).unwrap_or_default()
    }

    /// A fresh request id for [`WhisperStt::decode_id`] and [`WhisperStt::cancel`].
    pub fn next_id(&self) -> u32 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// One request on the calling thread (blocking).
    pub fn decode_blocking(&self, audio: &[i16], audio_ctx: AudioCtx) -> Result<Decode, SttError> {
        match self.decode_id(self.next_id(), audio, audio_ctx)? {
            Outcome::Text(d) => Ok(d),
            Outcome::Cancelled { .. } => Err(SttError::Cancelled),
        }
    }

    /// Request `id` on the calling thread (blocking): waits for the worker,
    /// then for this request's reply. [`WhisperStt::cancel`] from another
    /// thread stops it.
    pub fn decode_id(
        &self,
        id: u32,
        audio: &[i16],
        audio_ctx: AudioCtx,
    ) -> Result<Outcome, SttError> {
        self.inner.check_input(audio)?;
        self.inner.request(id, audio, audio_ctx)
    }

    /// Cancels request `id` (running or not yet started) without waiting
    /// for anything (invariant 3). A cancel for a finished request is ignored.
    pub fn cancel(&self, id: u32) {
        self.inner.cancel(id);
    }
}

impl Inner {
    fn spawn(&self) -> Result<BufReader<ChildStdout>, SttError> {
        let mut child = Command::new(&self.worker)
            .arg("--model")
            .arg(&self.model)
            .arg("--threads")
            .arg(self.config.threads.max(1).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| backend(format!("starting {}: {e}", self.worker.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(backend("worker pipes missing"));
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| backend(format!("worker did not start: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
            let _ = child.wait();
            return Err(model_err(&self.model, err.to_string()));
        }
        if v.get("ready").and_then(|r| r.as_bool()) != Some(true) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(backend(format!("worker said {line:?} instead of ready")));
        }
        self.per_node_abort.store(
            v.get("per_node_abort")
                .and_then(|r| r.as_bool())
                .unwrap_or(false),
            Ordering::Relaxed,
        );
        if let Ok(mut c) = self.child.lock() {
            if let Some(mut old) = c.replace(child) {
                let _ = old.kill();
                let _ = old.wait();
            }
        }
        if let Ok(mut s) = self.stdin.lock() {
            *s = Some(stdin);
        }
        Ok(stdout)
    }

    fn check_input(&self, audio: &[i16]) -> Result<(), SttError> {
        if audio.is_empty() {
            return Err(SttError::Input("empty utterance".into()));
        }
        let secs = audio.len() as f32 / SAMPLE_RATE as f32;
        if secs > self.config.max_seconds.min(30.0) {
            return Err(SttError::Input(format!(
                "utterance of {secs:.1} s is longer than the {:.0} s limit",
                self.config.max_seconds.min(30.0)
            )));
        }
        Ok(())
    }

    fn cancel(&self, id: u32) {
        if let Ok(mut c) = self.cancelled.lock() {
            c.insert(id);
            // A cancel that raced its request's end stays behind: bounded.
            while c.len() > 64 {
                c.pop_first();
            }
        }
        let mut msg = [0u8; 5];
        msg[0] = TAG_CANCEL;
        msg[1..].copy_from_slice(&id.to_le_bytes());
        if let Ok(mut stdin) = self.stdin.lock() {
            if let Some(pipe) = stdin.as_mut() {
                // A dead worker is noticed by the request that reads its reply.
                let _ = pipe.write_all(&msg).and_then(|_| pipe.flush());
            }
        }
    }

    fn request(&self, id: u32, audio: &[i16], ctx: AudioCtx) -> Result<Outcome, SttError> {
        // Holds invariant 1: the reply pipe is ours until our reply is read.
        let mut guard = self
            .stdout
            .lock()
            .map_err(|_| backend("worker lock poisoned"))?;
        let outcome = self.exchange(&mut guard, id, audio, ctx)?;
        // Counted before the reply pipe is released, so a request that
        // waited for the pipe sees every earlier request counted.
        if let Ok(mut r) = self.replies.lock() {
            r.record(&outcome);
        }
        Ok(outcome)
    }

    /// Sends request `id` on the worker in `worker` (started if needed) and
    /// reads its reply; a dead or out-of-step worker is cleared.
    fn exchange(
        &self,
        worker: &mut Option<BufReader<ChildStdout>>,
        id: u32,
        audio: &[i16],
        ctx: AudioCtx,
    ) -> Result<Outcome, SttError> {
        if worker.is_none() {
            *worker = Some(self.spawn()?);
        }
        let Some(stdout) = worker.as_mut() else {
            return Err(backend("worker not running"));
        };
        if self.cancelled.lock().is_ok_and(|mut c| c.remove(&id)) {
            // Cancelled while it waited for the worker: never sent.
            return Ok(Outcome::Cancelled {
                running: false,
                checks_after_cancel: 0,
                elapsed: Duration::ZERO,
            });
        }
        let (fit, margin, min_frames) = match ctx {
            AudioCtx::Full => (0u8, 0u32, 0u32),
            AudioCtx::Fit {
                margin_ms,
                min_frames,
            } => (1, margin_ms, min_frames),
        };
        let mut msg = Vec::with_capacity(18 + audio.len() * 2);
        msg.push(TAG_REQUEST);
        msg.extend_from_slice(&id.to_le_bytes());
        msg.extend_from_slice(&(audio.len() as u32).to_le_bytes());
        msg.push(fit);
        msg.extend_from_slice(&margin.to_le_bytes());
        msg.extend_from_slice(&min_frames.to_le_bytes());
        for s in audio {
            msg.extend_from_slice(&s.to_le_bytes());
        }
        let sent = match self.stdin.lock() {
            Ok(mut stdin) => match stdin.as_mut() {
                Some(pipe) => pipe.write_all(&msg).and_then(|_| pipe.flush()).is_ok(),
                None => false,
            },
            Err(_) => false,
        };
        let mut line = String::new();
        let read = sent && matches!(stdout.read_line(&mut line), Ok(n) if n > 0);
        if !read {
            // The worker died (crashed, or killed): start anew next time.
            *worker = None;
            return Err(backend("the worker stopped"));
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| backend(format!("bad reply from the worker: {e}")))?;
        if v.get("id").and_then(|i| i.as_u64()) != Some(u64::from(id)) {
            // Out of step with the worker: restart it rather than misattribute.
            *worker = None;
            return Err(backend(format!("reply {line:?} is not for request {id}")));
        }
        if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
            return Err(backend(err.to_string()));
        }
        let ms = Duration::from_millis(v.get("ms").and_then(|m| m.as_u64()).unwrap_or(0));
        if v.get("cancelled").and_then(|c| c.as_bool()) == Some(true) {
            return Ok(Outcome::Cancelled {
                running: v.get("at").and_then(|a| a.as_str()) == Some("running"),
                checks_after_cancel: v
                    .get("checks_after_cancel")
                    .and_then(|c| c.as_u64())
                    .unwrap_or(0),
                elapsed: ms,
            });
        }
        Ok(Outcome::Text(Decode {
            text: v
                .get("text")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string(),
            frames: v.get("frames").and_then(|f| f.as_u64()).unwrap_or(0) as usize,
            fell_back: v
                .get("fell_back")
                .and_then(|f| f.as_bool())
                .unwrap_or(false),
            elapsed: ms,
            waited_checks: v.get("waited_checks").and_then(|w| w.as_u64()).unwrap_or(0),
        }))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            if let Some(mut child) = c.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends the worker a cancel for request `id` when dropped armed: the
/// transcription's future was cancelled, or dropped before its reply
/// (invariant 2). Disarmed (`inner = None`) once the reply is in.
struct CancelOnDrop {
    inner: Option<Arc<Inner>>,
    id: u32,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.cancel(self.id);
        }
    }
}

#[async_trait]
impl SpeechToText for WhisperStt {
    fn name(&self) -> &str {
        "whisper-tiny.en"
    }

    async fn transcribe(
        &self,
        audio: &[i16],
        cancel: &CancellationToken,
    ) -> Result<Transcript, SttError> {
        if cancel.is_cancelled() {
            return Err(SttError::Cancelled);
        }
        self.inner.check_input(audio)?;
        let inner = Arc::clone(&self.inner);
        let audio = audio.to_vec();
        let ctx = self.inner.config.audio_ctx;
        let id = self.next_id();
        // Holds invariant 2 when this future is dropped before the reply.
        let mut unanswered = CancelOnDrop {
            inner: Some(Arc::clone(&self.inner)),
            id,
        };
        // Holds invariant 4.
        let mut handle = tokio::task::spawn_blocking(move || inner.request(id, &audio, ctx));
        let outcome = tokio::select! {
            r = &mut handle => {
                unanswered.inner = None;
                r.map_err(|e| backend(format!("inference thread failed: {e}")))??
            }
            _ = cancel.cancelled() => {
                // Holds invariant 2: the worker stops this request at its
                // next abort check (or skips it); the blocking thread reads
                // that reply and frees the worker for the next request.
                drop(unanswered);
                drop(handle);
                return Err(SttError::Cancelled);
            }
        };
        let decode = match outcome {
            Outcome::Text(d) => d,
            Outcome::Cancelled { .. } => return Err(SttError::Cancelled),
        };
        tracing::debug!(
            frames = decode.frames,
            fell_back = decode.fell_back,
            ms = decode.elapsed.as_millis() as u64,
            waited_checks = decode.waited_checks,
            "whisper: transcribed"
        );
        Ok(Transcript { text: decode.text })
    }
}
