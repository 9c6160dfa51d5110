//! Embedded speech to text: Whisper tiny.en through whisper.cpp, run in a
//! worker process (`colloquy-whisper`, crates/whisper-worker) because
//! whisper.cpp's ggml and llama.cpp's ggml cannot be linked into one binary.
//! The model is the ggml file the model store converts
//! (`models::ModelId::WhisperTinyEn`).
//!
//! # Invariants
//! 1. One worker per backend, started on first use and kept warm; requests
//!    are serialised (one encoder at a time).
//! 2. Cancelling a transcription returns `SttError::Cancelled` at once; the
//!    decode already sent to the worker runs to its end (≤ one decode, well
//!    under a second) and is discarded, and the worker stays warm (holds
//!    invariant 3 of `stt`). Killing it instead cost a respawn and a cold
//!    first decode (≈ 3× slower) on the next turn — and speculative turns
//!    (cancelled whenever the user goes on after a pause) made that common.
//! 3. Blocking pipe I/O runs on `spawn_blocking`, never on the runtime's workers.

use super::{SpeechToText, SttError, Transcript};
use crate::models::{ModelId, ModelStore};
use async_trait::async_trait;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SAMPLE_RATE: usize = 16_000;
/// Name of the worker executable.
pub const WORKER_BIN: &str = "colloquy-whisper";

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
    /// Measured best reduced window on the real recordings (10 clips, 1
    /// thread): 0.75 s CPU per utterance against 2.0 s for the full window,
    /// at WER 8.7 % against 6.5 % — opt-in because of the WER cost.
    pub const FIT_DEFAULT: AudioCtx = AudioCtx::Fit {
        margin_ms: 3000,
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
    /// A reduced window was rejected and the full window rerun.
    pub fell_back: bool,
    /// Time inside the worker.
    pub elapsed: Duration,
}

struct Pipes {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Whisper tiny.en in a worker process.
pub struct WhisperStt {
    model: PathBuf,
    worker: PathBuf,
    config: WhisperConfig,
    /// The running worker's handle (killed on cancel, invariant 2).
    child: Arc<Mutex<Option<Child>>>,
    pipes: Arc<Mutex<Option<Pipes>>>,
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
            model: path.to_path_buf(),
            worker,
            config,
            child: Arc::new(Mutex::new(None)),
            pipes: Arc::new(Mutex::new(None)),
        };
        let mut pipes = stt
            .pipes
            .lock()
            .map_err(|_| backend("worker lock poisoned"))?;
        *pipes = Some(stt.spawn()?);
        drop(pipes);
        // The first decode of a fresh whisper.cpp context is about three
        // times slower than the next ones (buffers, first graph): pay it
        // here, at start, not in the caller's first turn.
        let warm: Vec<i16> = (0..SAMPLE_RATE)
            .map(|i| ((i * 7919 % 61) as i16) - 30)
            .collect();
        request(&stt, &warm, stt.config.audio_ctx)?;
        Ok(stt)
    }

    /// Loads the model from the store (its error names the fix).
    pub fn from_store(store: &ModelStore, config: WhisperConfig) -> Result<Self, SttError> {
        let path = store
            .require(ModelId::WhisperTinyEn)
            .map_err(|e| model_err(Path::new("whisper-tiny.en"), e.to_string()))?;
        Self::load(&path, config)
    }

    fn spawn(&self) -> Result<Pipes, SttError> {
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
        if let Ok(mut c) = self.child.lock() {
            *c = Some(child);
        }
        Ok(Pipes { stdin, stdout })
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

    /// One request on the calling thread (blocking).
    pub fn decode_blocking(&self, audio: &[i16], audio_ctx: AudioCtx) -> Result<Decode, SttError> {
        self.check_input(audio)?;
        request(self, audio, audio_ctx)
    }
}

fn request(stt: &WhisperStt, audio: &[i16], ctx: AudioCtx) -> Result<Decode, SttError> {
    let mut guard = stt
        .pipes
        .lock()
        .map_err(|_| backend("worker lock poisoned"))?;
    if guard.is_none() {
        *guard = Some(stt.spawn()?);
    }
    let Some(pipes) = guard.as_mut() else {
        return Err(backend("worker not running"));
    };
    let (fit, margin, min_frames) = match ctx {
        AudioCtx::Full => (0u8, 0u32, 0u32),
        AudioCtx::Fit {
            margin_ms,
            min_frames,
        } => (1, margin_ms, min_frames),
    };
    let mut msg = Vec::with_capacity(13 + audio.len() * 2);
    msg.extend_from_slice(&(audio.len() as u32).to_le_bytes());
    msg.push(fit);
    msg.extend_from_slice(&margin.to_le_bytes());
    msg.extend_from_slice(&min_frames.to_le_bytes());
    for s in audio {
        msg.extend_from_slice(&s.to_le_bytes());
    }
    let mut line = String::new();
    let io = pipes
        .stdin
        .write_all(&msg)
        .and_then(|_| pipes.stdin.flush())
        .and_then(|_| pipes.stdout.read_line(&mut line));
    match io {
        Ok(n) if n > 0 => {}
        // The worker died (killed on cancel, or crashed): start anew next time.
        _ => {
            *guard = None;
            return Err(backend("the worker stopped"));
        }
    }
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| backend(format!("bad reply from the worker: {e}")))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(backend(err.to_string()));
    }
    Ok(Decode {
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
        elapsed: Duration::from_millis(v.get("ms").and_then(|m| m.as_u64()).unwrap_or(0)),
    })
}

impl Drop for WhisperStt {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            if let Some(mut child) = c.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
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
        self.check_input(audio)?;
        let job = WhisperStt {
            model: self.model.clone(),
            worker: self.worker.clone(),
            config: self.config.clone(),
            child: self.child.clone(),
            pipes: self.pipes.clone(),
        };
        let audio = audio.to_vec();
        let ctx = self.config.audio_ctx;
        // Holds invariant 3.
        let mut handle = tokio::task::spawn_blocking(move || {
            let r = request(&job, &audio, ctx);
            // `job` shares the worker; don't let its Drop kill it.
            std::mem::forget(job);
            r
        });
        let decode = tokio::select! {
            r = &mut handle => r.map_err(|e| backend(format!("inference thread failed: {e}")))??,
            _ = cancel.cancelled() => {
                // Holds invariant 2: the decode in progress finishes on its
                // blocking thread and its result is dropped; the warm worker
                // stays (the next request waits for it, if it comes that soon).
                drop(handle);
                return Err(SttError::Cancelled);
            }
        };
        tracing::debug!(
            frames = decode.frames,
            fell_back = decode.fell_back,
            ms = decode.elapsed.as_millis() as u64,
            "whisper: transcribed"
        );
        Ok(Transcript { text: decode.text })
    }
}
