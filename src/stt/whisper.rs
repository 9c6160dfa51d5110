//! Embedded speech to text: Whisper tiny.en through whisper.cpp (`whisper-rs`),
//! loaded from the ggml file the model store converts (`models::ModelId::WhisperTinyEn`).
//!
//! Decoding is greedy, English, without timestamps, as one segment, with
//! blank and non-speech tokens suppressed and no temperature fallback. The
//! encoder window is the main cost: whisper.cpp encodes 30 s of audio
//! (1500 frames) whatever the utterance length. [`AudioCtx::Fit`] encodes only
//! the utterance plus a margin, which is much faster but can make the decoder
//! loop; the output is then checked and, if it looks degenerate, decoded again
//! with the full window.
//!
//! # Invariants
//! 1. Inference runs on a blocking thread (`spawn_blocking`), never on the
//!    async runtime's workers.
//! 2. One whisper state is shared behind a mutex: concurrent calls are
//!    serialised, never run two encoders on the same state.
//! 3. Cancellation is checked before inference, by whisper.cpp's abort
//!    callback during it, and after it: a cancelled call returns
//!    `SttError::Cancelled` and the backend stays usable (holds invariant 3
//!    of `stt`).
//! 4. A reduced window's output is only returned if it passes
//!    [`looks_degenerate`]; otherwise the full window decides.
//! 5. whisper.cpp's and ggml's logs go to `tracing` (target `whisper_cpp`;
//!    load chatter at debug level), never to stderr.

use std::ffi::{c_char, c_void, CStr};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::{SpeechToText, SttError, Transcript};
use crate::models::{ModelId, ModelStore};

/// Samples per second of the input (invariant 1 of `stt`).
const SAMPLE_RATE: usize = 16_000;
/// Encoder frames per second of audio (1500 frames = 30 s).
const FRAMES_PER_SECOND: usize = 50;
/// whisper.cpp's full encoder window, in frames.
const FULL_CTX: usize = 1500;

/// How much audio the encoder sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioCtx {
    /// The full 30 s window (whisper.cpp's default; cost independent of length).
    Full,
    /// The utterance plus `margin_ms`, at least `min_frames` encoder frames,
    /// with a fall back to the full window on degenerate output (invariant 4).
    Fit { margin_ms: u32, min_frames: u32 },
}

impl AudioCtx {
    /// The reduced window measured best on the real recordings of Debian
    /// `pocketsphinx-testdata` (10 clips, 92 words, 1 thread): 3 s of margin
    /// and at least 10 s of context (500 frames) cost 0.75 s CPU per
    /// utterance against 2.0 s for the full window (one fallback in ten), at
    /// WER 8.7 % against 6.5 %. Shorter windows (1 s margin, 3 s floor) loop
    /// more often (4 fallbacks in ten) and save less. Opt-in, because the WER
    /// cost is above one point.
    pub const FIT_DEFAULT: AudioCtx = AudioCtx::Fit {
        margin_ms: 3000,
        min_frames: 500,
    };

    /// Encoder frames for `samples` of audio, or `None` for the full window.
    pub fn frames_for(self, samples: usize) -> Option<usize> {
        match self {
            AudioCtx::Full => None,
            AudioCtx::Fit {
                margin_ms,
                min_frames,
            } => {
                let ms = samples * 1000 / SAMPLE_RATE + margin_ms as usize;
                let frames = (ms * FRAMES_PER_SECOND).div_ceil(1000);
                let frames = frames.max(min_frames as usize);
                (frames < FULL_CTX).then_some(frames)
            }
        }
    }
}

/// Settings of the Whisper backend.
#[derive(Clone, Debug)]
pub struct WhisperConfig {
    /// Threads for whisper.cpp (default 2).
    pub threads: usize,
    /// Encoder window policy (default [`AudioCtx::Full`]: the fitted window
    /// is ≈ 2.7× cheaper but cost 2.2 WER points on the real recordings).
    pub audio_ctx: AudioCtx,
    /// Longest utterance accepted, in seconds (default 30).
    pub max_seconds: f32,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        WhisperConfig {
            threads: 2,
            audio_ctx: AudioCtx::Full,
            max_seconds: 30.0,
        }
    }
}

/// What one inference did (for measurements and logs).
#[derive(Clone, Debug, PartialEq)]
pub struct Decode {
    pub text: String,
    /// Encoder frames used by the accepted result (1500 = full window).
    pub frames: usize,
    /// True when a reduced window was rejected and the full window rerun.
    pub fell_back: bool,
    pub elapsed: Duration,
}

/// Whisper tiny.en through whisper.cpp.
pub struct WhisperStt {
    name: String,
    inner: Arc<Inner>,
    load_time: Duration,
}

struct Inner {
    // Field order: the state must drop before the context it came from.
    state: Mutex<WhisperState>,
    _ctx: WhisperContext,
    config: WhisperConfig,
    path: PathBuf,
}

static LOG_HOOK: Once = Once::new();

/// Routes whisper.cpp and ggml logs into `tracing` (invariant 5).
fn install_log_hook() {
    LOG_HOOK.call_once(|| {
        // SAFETY: the callback is a plain function that only reads the
        // NUL-terminated string whisper.cpp passes for the duration of the call.
        unsafe {
            whisper_rs_sys::whisper_log_set(Some(log_trampoline), std::ptr::null_mut());
        }
    });
}

unsafe extern "C" fn log_trampoline(
    level: whisper_rs_sys::ggml_log_level,
    text: *const c_char,
    _user: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: whisper.cpp passes a valid NUL-terminated string (checked non-null).
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim();
    if text.is_empty() || text == "." {
        return;
    }
    use whisper_rs_sys as sys;
    match level {
        sys::ggml_log_level_GGML_LOG_LEVEL_ERROR => {
            tracing::error!(target: "whisper_cpp", "{text}")
        }
        sys::ggml_log_level_GGML_LOG_LEVEL_WARN => tracing::warn!(target: "whisper_cpp", "{text}"),
        sys::ggml_log_level_GGML_LOG_LEVEL_INFO => tracing::debug!(target: "whisper_cpp", "{text}"),
        _ => tracing::trace!(target: "whisper_cpp", "{text}"),
    }
}

fn model_err(path: &Path, reason: impl Into<String>) -> SttError {
    SttError::Model {
        model: format!("whisper-tiny.en ({})", path.display()),
        reason: reason.into(),
        hint: "run `colloquy models fetch`".into(),
    }
}

impl WhisperStt {
    /// Loads the ggml model at `path` (blocking; ≈ 0.1–0.2 s).
    pub fn load(path: &Path, config: WhisperConfig) -> Result<Self, SttError> {
        install_log_hook();
        let start = Instant::now();
        if !path.is_file() {
            return Err(model_err(path, "file not found"));
        }
        let mut params = WhisperContextParameters::default();
        params.use_gpu(false);
        let ctx = WhisperContext::new_with_params(path, params)
            .map_err(|e| model_err(path, format!("whisper.cpp could not load it: {e}")))?;
        let state = ctx
            .create_state()
            .map_err(|e| model_err(path, format!("could not create a decoder state: {e}")))?;
        Ok(WhisperStt {
            name: "whisper-tiny.en".into(),
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                _ctx: ctx,
                config,
                path: path.to_path_buf(),
            }),
            load_time: start.elapsed(),
        })
    }

    /// Loads the model from the store, failing with the store's fix hint if
    /// it is missing or does not verify.
    pub fn from_store(store: &ModelStore, config: WhisperConfig) -> Result<Self, SttError> {
        let path = store
            .require(ModelId::WhisperTinyEn)
            .map_err(|e| SttError::Model {
                model: "whisper-tiny.en".into(),
                reason: e.to_string(),
                hint: "run `colloquy models fetch`".into(),
            })?;
        Self::load(&path, config)
    }

    /// How long `load` took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    pub fn config(&self) -> &WhisperConfig {
        &self.inner.config
    }

    /// Transcribes on the current thread with an explicit window policy and
    /// reports what was done (blocking; for benches and measurements).
    pub fn decode_blocking(
        &self,
        audio: &[i16],
        audio_ctx: AudioCtx,
        cancel: &CancellationToken,
    ) -> Result<Decode, SttError> {
        self.inner.check_input(audio)?;
        self.inner.run(audio, audio_ctx, cancel)
    }
}

impl Inner {
    fn check_input(&self, audio: &[i16]) -> Result<(), SttError> {
        if audio.is_empty() {
            return Err(SttError::Input("empty utterance".into()));
        }
        let secs = audio.len() as f32 / SAMPLE_RATE as f32;
        if secs > self.config.max_seconds {
            return Err(SttError::Input(format!(
                "utterance of {secs:.1} s is longer than the {:.0} s limit",
                self.config.max_seconds
            )));
        }
        Ok(())
    }

    /// One transcription with the window policy and fallback (invariants 3, 4).
    fn run(
        &self,
        audio: &[i16],
        audio_ctx: AudioCtx,
        cancel: &CancellationToken,
    ) -> Result<Decode, SttError> {
        let start = Instant::now();
        if cancel.is_cancelled() {
            return Err(SttError::Cancelled);
        }
        // whisper.cpp wants ≥ 100 ms; pad short inputs to 1 s of silence.
        let mut pcm: Vec<f32> = audio.iter().map(|s| f32::from(*s) / 32768.0).collect();
        if pcm.len() < SAMPLE_RATE {
            pcm.resize(SAMPLE_RATE, 0.0);
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| backend("a previous transcription panicked"))?;
        let secs = audio.len() as f32 / SAMPLE_RATE as f32;
        if let Some(frames) = audio_ctx.frames_for(pcm.len()) {
            let text = self.full(&mut state, &pcm, Some(frames), secs, cancel)?;
            if !looks_degenerate(&text, secs) {
                return Ok(Decode {
                    text,
                    frames,
                    fell_back: false,
                    elapsed: start.elapsed(),
                });
            }
            tracing::debug!(
                frames,
                "whisper: reduced window output degenerate; full window"
            );
            let text = self.full(&mut state, &pcm, None, secs, cancel)?;
            return Ok(Decode {
                text,
                frames: FULL_CTX,
                fell_back: true,
                elapsed: start.elapsed(),
            });
        }
        let text = self.full(&mut state, &pcm, None, secs, cancel)?;
        Ok(Decode {
            text,
            frames: FULL_CTX,
            fell_back: false,
            elapsed: start.elapsed(),
        })
    }

    fn full(
        &self,
        state: &mut WhisperState,
        pcm: &[f32],
        frames: Option<usize>,
        secs: f32,
        cancel: &CancellationToken,
    ) -> Result<String, SttError> {
        let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        p.set_n_threads(i32::try_from(self.config.threads.max(1)).unwrap_or(2));
        p.set_language(Some("en"));
        p.set_translate(false);
        p.set_no_context(true);
        p.set_no_timestamps(true);
        p.set_single_segment(true);
        p.set_suppress_blank(true);
        p.set_suppress_nst(true);
        p.set_print_special(false);
        p.set_print_progress(false);
        p.set_print_realtime(false);
        p.set_print_timestamps(false);
        p.set_temperature(0.0);
        p.set_temperature_inc(0.0);
        if let Some(frames) = frames {
            p.set_audio_ctx(i32::try_from(frames).unwrap_or(0));
            // Guard against loops: about twice a fast speaking rate in tokens,
            // so a loop costs little before the full window takes over.
            let cap = (secs * 8.0) as i32 + 12;
            p.set_max_tokens(cap);
        }
        // Not `set_abort_callback_safe`: in whisper-rs 0.16 its trampoline
        // casts the boxed `dyn FnMut` back to the closure type, reads garbage
        // and hung here. The raw callback gets a pointer to `token`, which
        // lives on this frame for the whole synchronous `full` call.
        let token: CancellationToken = cancel.clone();
        // SAFETY: `abort_trampoline` only reads the `CancellationToken` behind
        // the pointer, and `token` outlives `state.full` (invariant 3).
        unsafe {
            p.set_abort_callback(Some(abort_trampoline));
            p.set_abort_callback_user_data(&token as *const CancellationToken as *mut c_void);
        }
        let result = state.full(p, pcm);
        drop(token);
        if cancel.is_cancelled() {
            return Err(SttError::Cancelled);
        }
        result.map_err(|e| backend(&format!("whisper.cpp failed: {e}")))?;
        let mut text = String::new();
        for seg in state.as_iter() {
            let s = seg
                .to_str_lossy()
                .map_err(|e| backend(&format!("reading a segment: {e}")))?;
            text.push_str(&s);
        }
        Ok(text.trim().to_string())
    }
}

/// whisper.cpp's abort callback: true once the call's token is cancelled.
unsafe extern "C" fn abort_trampoline(user: *mut c_void) -> bool {
    if user.is_null() {
        return false;
    }
    // SAFETY: `Inner::full` passes a pointer to a live `CancellationToken`.
    let token = unsafe { &*(user as *const CancellationToken) };
    token.is_cancelled()
}

fn backend(message: &str) -> SttError {
    SttError::Backend {
        backend: "whisper-tiny.en".into(),
        message: message.into(),
    }
}

/// Whether a transcript of `secs` seconds of audio looks like a decoding loop:
/// more words than anyone speaks (> 6 words/s + 3), a word n-gram (n = 1..4)
/// repeated 4+ times in a row, or text that compresses too well (zlib ratio
/// > 2.4 on texts of 60+ bytes, Whisper's own criterion).
pub fn looks_degenerate(text: &str, secs: f32) -> bool {
    // Words are runs of letters and digits: "old-s-y-y-y" is a loop of "y".
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.len() as f32 > secs * 6.0 + 3.0 {
        return true;
    }
    for n in 1..=4 {
        if words.len() < n * 4 {
            break;
        }
        let mut run = 1;
        let mut i = n;
        while i + n <= words.len() {
            if words[i..i + n] == words[i - n..i] {
                run += 1;
                if run >= 4 {
                    return true;
                }
                i += n;
            } else {
                run = 1;
                i += 1;
            }
        }
    }
    if text.len() >= 60 {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        if z.write_all(text.as_bytes()).is_ok() {
            if let Ok(c) = z.finish() {
                if !c.is_empty() && text.len() as f32 / c.len() as f32 > 2.4 {
                    return true;
                }
            }
        }
    }
    false
}

#[async_trait]
impl SpeechToText for WhisperStt {
    fn name(&self) -> &str {
        &self.name
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
        let token = cancel.clone();
        let ctx = inner.config.audio_ctx;
        // Holds invariant 1.
        let decode = tokio::task::spawn_blocking(move || inner.run(&audio, ctx, &token))
            .await
            .map_err(|e| backend(&format!("inference thread failed: {e}")))??;
        tracing::debug!(
            model = %self.inner.path.display(),
            frames = decode.frames,
            fell_back = decode.fell_back,
            ms = decode.elapsed.as_millis() as u64,
            "whisper: transcribed"
        );
        Ok(Transcript { text: decode.text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_window_covers_the_utterance_plus_margin() {
        let fit = AudioCtx::Fit {
            margin_ms: 1000,
            min_frames: 150,
        };
        assert_eq!(fit.frames_for(16_000), Some(150)); // 1 s + 1 s < 3 s floor
        assert_eq!(fit.frames_for(16_000 * 5), Some(300));
        assert_eq!(fit.frames_for(16_000 * 30), None);
        assert_eq!(AudioCtx::FIT_DEFAULT.frames_for(16_000 * 8), Some(550));
        assert_eq!(AudioCtx::FIT_DEFAULT.frames_for(16_000 * 28), None);
        assert_eq!(AudioCtx::Full.frames_for(16_000), None);
    }

    #[test]
    fn degenerate_output_is_detected() {
        assert!(looks_degenerate("5 5 5 5 5 5", 2.0));
        assert!(looks_degenerate("of clubs of clubs of clubs of clubs", 5.0));
        assert!(looks_degenerate(
            "and then and then and then we went to the shop and then and then",
            1.0
        ));
        let long = "the same sentence again. ".repeat(6);
        assert!(looks_degenerate(&long, 30.0));
        assert!(!looks_degenerate("Ten of clubs.", 1.1));
        assert!(!looks_degenerate(
            "He was not an ill-disposed young man.",
            2.0
        ));
        assert!(!looks_degenerate(
            "And Mr. John Dashwood had then leisure to consider how much there might be prudently in his power to do for them.",
            7.1
        ));
        assert!(!looks_degenerate("Five, five.", 1.5));
        assert!(looks_degenerate(
            "he was not an old-s-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-",
            3.0
        ));
        assert!(!looks_degenerate(
            "Unless to be rather cold-hearted and rather selfish is to be ill-disposed.",
            5.3
        ));
    }
}
