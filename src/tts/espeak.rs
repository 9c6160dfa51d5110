//! espeak-ng: the always-available speech backend ([`EspeakTts`]) and the
//! process-wide owner of the `libespeak-ng` singleton, which also serves IPA
//! phonemes to the Piper backend.
//!
//! libespeak-ng keeps all of its state in C globals and is not reentrant. This
//! module therefore runs it on exactly one dedicated thread, the *owner*,
//! started on first use and fed through a channel. Every backend that needs
//! espeak (this one for audio, Piper for phonemes) talks to the same owner.
//!
//! # Invariants
//! 1. Only the owner thread calls into libespeak-ng, and it is initialised
//!    exactly once per process (in synchronous mode, voice `en-us`).
//! 2. The synthesis callback aborts (returns 1) as soon as the request's
//!    [`CancellationToken`] is cancelled; a cancelled request never returns
//!    audio, and the owner stays usable for the next request.
//! 3. Text handed to espeak is plain UTF-8 without NUL bytes and without SSML
//!    interpretation, so model output cannot inject markup.
//! 4. A request that waits in the owner's queue can be cancelled there: the
//!    caller returns [`TtsError::Cancelled`] at once and the owner skips it.

use std::ffi::{c_char, c_int, c_short, c_void, CStr, CString};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Speech, TextToSpeech, TtsError};

/// espeak's own default speaking rate, in words per minute.
pub const DEFAULT_RATE_WPM: u32 = 175;
/// Slowest rate espeak accepts.
pub const MIN_RATE_WPM: u32 = 80;
/// Fastest rate espeak accepts.
pub const MAX_RATE_WPM: u32 = 450;
/// The espeak voice every backend uses (Piper's `en_US` voices expect it too).
pub const VOICE: &str = "en-us";

/// The hand-written subset of `espeak-ng/speak_lib.h` (espeak-ng 1.51).
#[allow(non_camel_case_types)]
mod ffi {
    use std::ffi::{c_char, c_int, c_short, c_uint, c_void};

    pub const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
    pub const INITIALIZE_DONT_EXIT: c_int = 0x8000;
    pub const POS_CHARACTER: c_int = 1;
    pub const CHARS_UTF8: c_uint = 1;
    pub const PARAM_RATE: c_int = 1;
    pub const PHONEMES_IPA: c_int = 0x02;
    pub const EE_OK: c_int = 0;

    /// `espeak_EVENT`; only passed through as a pointer, never read.
    #[repr(C)]
    pub struct espeak_EVENT {
        _private: [u8; 0],
    }

    pub type SynthCallback =
        unsafe extern "C" fn(wav: *mut c_short, samples: c_int, events: *mut espeak_EVENT) -> c_int;

    #[link(name = "espeak-ng")]
    extern "C" {
        pub fn espeak_Initialize(
            output: c_int,
            buflength: c_int,
            path: *const c_char,
            options: c_int,
        ) -> c_int;
        pub fn espeak_SetSynthCallback(cb: SynthCallback);
        pub fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
        pub fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
        pub fn espeak_Synth(
            text: *const c_void,
            size: usize,
            position: c_uint,
            position_type: c_int,
            end_position: c_uint,
            flags: c_uint,
            unique_identifier: *mut c_uint,
            user_data: *mut c_void,
        ) -> c_int;
        pub fn espeak_TextToPhonemes(
            textptr: *mut *const c_void,
            textmode: c_int,
            phonememode: c_int,
        ) -> *const c_char;
    }
}

/// What the synthesis callback collects for the request in progress.
struct Collect {
    samples: Vec<i16>,
    cancel: CancellationToken,
    started: Instant,
    first_audio: Option<Instant>,
    /// Test hook: cancel the token once this many samples were collected.
    #[cfg(test)]
    cancel_after_samples: Option<usize>,
}

/// Test probe: callbacks that ran after the token was cancelled.
#[cfg(test)]
static CALLBACKS_AFTER_CANCEL: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The request in progress. Only the owner thread sets it, and the callback
/// runs inside `espeak_Synth` on that same thread (invariant 1); the mutex is
/// there so the callback needs no `unsafe` global.
static COLLECT: Mutex<Option<Collect>> = Mutex::new(None);

unsafe extern "C" fn synth_callback(
    wav: *mut c_short,
    samples: c_int,
    _events: *mut ffi::espeak_EVENT,
) -> c_int {
    let Ok(mut guard) = COLLECT.lock() else {
        return 1;
    };
    let Some(collect) = guard.as_mut() else {
        return 1;
    };
    // Holds invariant 2: abort as soon as the request is cancelled.
    if collect.cancel.is_cancelled() {
        // Counted only for the probe test's own jobs (other tests cancel too).
        #[cfg(test)]
        if collect.cancel_after_samples.is_some() {
            CALLBACKS_AFTER_CANCEL.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        return 1;
    }
    if !wav.is_null() && samples > 0 {
        // SAFETY: espeak hands us `samples` valid 16-bit samples at `wav`,
        // alive for the duration of this call.
        let chunk = unsafe { std::slice::from_raw_parts(wav, samples as usize) };
        if collect.first_audio.is_none() {
            collect.first_audio = Some(Instant::now());
        }
        collect.samples.extend_from_slice(chunk);
        #[cfg(test)]
        if collect
            .cancel_after_samples
            .is_some_and(|n| collect.samples.len() >= n)
        {
            collect.cancel.cancel();
        }
    }
    0
}

/// Audio of one espeak synthesis, with its first-audio latency.
#[derive(Clone, Debug)]
pub struct EspeakAudio {
    pub speech: Speech,
    /// Time from the start of synthesis to the first callback with samples.
    pub first_audio: Option<std::time::Duration>,
}

enum Job {
    Synthesize {
        text: String,
        rate: u32,
        cancel: CancellationToken,
        reply: oneshot::Sender<Result<EspeakAudio, TtsError>>,
        #[cfg(test)]
        cancel_after_samples: Option<usize>,
    },
    Phonemize {
        text: String,
        reply: oneshot::Sender<Result<String, TtsError>>,
    },
}

/// Handle to the espeak owner thread (invariant 1).
pub(crate) struct EspeakEngine {
    jobs: Mutex<mpsc::Sender<Job>>,
    sample_rate: u32,
}

static ENGINE: OnceLock<Result<EspeakEngine, String>> = OnceLock::new();

fn backend_error(message: impl Into<String>) -> TtsError {
    TtsError::Backend {
        backend: "espeak".into(),
        message: message.into(),
    }
}

fn owner_gone() -> TtsError {
    backend_error("the espeak owner thread has stopped; restart the process")
}

/// Removes NUL bytes (invariant 3) so the text fits a C string.
fn c_text(text: &str) -> CString {
    let clean: Vec<u8> = text.bytes().filter(|&b| b != 0).collect();
    // No NUL bytes remain, so this cannot fail.
    CString::new(clean).unwrap_or_default()
}

impl EspeakEngine {
    /// The process-wide engine, started on first use.
    pub(crate) fn get() -> Result<&'static EspeakEngine, TtsError> {
        ENGINE
            .get_or_init(Self::start)
            .as_ref()
            .map_err(|reason| TtsError::Model {
                model: format!("espeak-ng voice {VOICE}"),
                reason: reason.clone(),
                hint: "install the Debian packages espeak-ng and libespeak-ng1 (espeak-ng-data)"
                    .into(),
            })
    }

    fn start() -> Result<EspeakEngine, String> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u32, String>>();
        std::thread::Builder::new()
            .name("espeak-owner".into())
            .spawn(move || {
                let rate = match Self::init_on_owner() {
                    Ok(rate) => {
                        let _ = ready_tx.send(Ok(rate));
                        rate
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                Self::serve(jobs_rx, rate);
            })
            .map_err(|e| format!("cannot start the espeak owner thread: {e}"))?;
        let sample_rate = ready_rx
            .recv()
            .map_err(|_| "the espeak owner thread died during initialisation".to_string())??;
        Ok(EspeakEngine {
            jobs: Mutex::new(jobs_tx),
            sample_rate,
        })
    }

    /// Runs on the owner thread only (invariant 1).
    fn init_on_owner() -> Result<u32, String> {
        // SAFETY: first and only initialisation, on the owner thread.
        let rate = unsafe {
            ffi::espeak_Initialize(
                ffi::AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                std::ptr::null(),
                ffi::INITIALIZE_DONT_EXIT,
            )
        };
        if rate <= 0 {
            return Err(format!(
                "espeak_Initialize failed (returned {rate}); espeak-ng-data not found"
            ));
        }
        let voice = c_text(VOICE);
        // SAFETY: owner thread; `voice` outlives the call.
        let status = unsafe { ffi::espeak_SetVoiceByName(voice.as_ptr()) };
        if status != ffi::EE_OK {
            return Err(format!("voice {VOICE} not found (espeak status {status})"));
        }
        // SAFETY: owner thread; the callback is a plain function.
        unsafe { ffi::espeak_SetSynthCallback(synth_callback) };
        Ok(rate as u32)
    }

    fn serve(jobs: mpsc::Receiver<Job>, sample_rate: u32) {
        let mut current_rate = 0u32;
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Synthesize {
                    text,
                    rate,
                    cancel,
                    reply,
                    #[cfg(test)]
                    cancel_after_samples,
                } => {
                    // Holds invariant 4: skip work nobody waits for.
                    if cancel.is_cancelled() || reply.is_closed() {
                        let _ = reply.send(Err(TtsError::Cancelled));
                        continue;
                    }
                    let rate = rate.clamp(MIN_RATE_WPM, MAX_RATE_WPM);
                    if rate != current_rate {
                        // SAFETY: owner thread.
                        unsafe { ffi::espeak_SetParameter(ffi::PARAM_RATE, rate as c_int, 0) };
                        current_rate = rate;
                    }
                    let collect = Collect {
                        samples: Vec::with_capacity(text.len() * 1200),
                        cancel,
                        started: Instant::now(),
                        first_audio: None,
                        #[cfg(test)]
                        cancel_after_samples,
                    };
                    let _ = reply.send(Self::synth_on_owner(&text, collect, sample_rate));
                }
                Job::Phonemize { text, reply } => {
                    let _ = reply.send(Ok(Self::phonemize_on_owner(&text)));
                }
            }
        }
    }

    fn synth_on_owner(
        text: &str,
        collect: Collect,
        sample_rate: u32,
    ) -> Result<EspeakAudio, TtsError> {
        let text = c_text(text);
        if let Ok(mut guard) = COLLECT.lock() {
            *guard = Some(collect);
        }
        // SAFETY: owner thread; `text` is a NUL-terminated UTF-8 string that
        // outlives the synchronous call. No SSML flag (invariant 3).
        let status = unsafe {
            ffi::espeak_Synth(
                text.as_ptr().cast::<c_void>(),
                text.as_bytes().len() + 1,
                0,
                ffi::POS_CHARACTER,
                0,
                ffi::CHARS_UTF8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let collect = COLLECT.lock().ok().and_then(|mut g| g.take());
        let Some(collect) = collect else {
            return Err(backend_error("synthesis state lost"));
        };
        // Holds invariant 2: a cancelled request returns no audio.
        if collect.cancel.is_cancelled() {
            return Err(TtsError::Cancelled);
        }
        if status != ffi::EE_OK {
            return Err(backend_error(format!(
                "espeak_Synth failed with status {status}"
            )));
        }
        Ok(EspeakAudio {
            first_audio: collect.first_audio.map(|t| t - collect.started),
            speech: Speech {
                samples: collect.samples,
                sample_rate,
            },
        })
    }

    /// IPA phonemes of `text`, clause by clause joined with spaces. espeak
    /// drops punctuation here; the caller adds it back.
    fn phonemize_on_owner(text: &str) -> String {
        let text = c_text(text);
        let mut out = String::new();
        let mut ptr: *const c_void = text.as_ptr().cast::<c_void>();
        // espeak advances `ptr` clause by clause and sets it to NULL at the
        // end; the bound guards against a pointer that stops advancing.
        for _ in 0..=text.as_bytes().len() {
            if ptr.is_null() {
                break;
            }
            // SAFETY: owner thread; `ptr` points into `text`, which is alive
            // and NUL-terminated.
            let phonemes = unsafe {
                ffi::espeak_TextToPhonemes(&mut ptr, ffi::CHARS_UTF8 as c_int, ffi::PHONEMES_IPA)
            };
            if phonemes.is_null() {
                continue;
            }
            // SAFETY: espeak returns a NUL-terminated string valid until the
            // next call.
            let clause = unsafe { CStr::from_ptr(phonemes as *const c_char) }.to_string_lossy();
            let clause = clause.trim();
            if !clause.is_empty() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(clause);
            }
        }
        out
    }

    fn send(&self, job: Job) -> Result<(), TtsError> {
        let jobs = self.jobs.lock().map_err(|_| owner_gone())?;
        jobs.send(job).map_err(|_| owner_gone())
    }

    /// Output sample rate of espeak (22050 Hz for the bundled voices).
    pub(crate) fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Synthesises `text` at `rate` words per minute.
    pub(crate) async fn synthesize(
        &self,
        text: &str,
        rate: u32,
        cancel: &CancellationToken,
    ) -> Result<EspeakAudio, TtsError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Synthesize {
            text: text.to_owned(),
            rate,
            cancel: cancel.clone(),
            reply,
            #[cfg(test)]
            cancel_after_samples: None,
        })?;
        // Holds invariant 4: return at once when cancelled while queued.
        tokio::select! {
            result = rx => result.map_err(|_| owner_gone())?,
            () = cancel.cancelled() => Err(TtsError::Cancelled),
        }
    }

    /// IPA phonemes for `text`, blocking the calling thread (use from a
    /// blocking context only).
    pub(crate) fn phonemize_blocking(&self, text: &str) -> Result<String, TtsError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Phonemize {
            text: text.to_owned(),
            reply,
        })?;
        rx.blocking_recv().map_err(|_| owner_gone())?
    }
}

/// IPA phonemes of `text` from the shared espeak owner, clause by clause
/// joined with spaces (punctuation dropped, as espeak does). Blocks the
/// calling thread; call it from a blocking context.
///
/// # Errors
/// [`TtsError::Model`] when libespeak-ng is unusable.
pub fn phonemize_ipa(text: &str) -> Result<String, TtsError> {
    EspeakEngine::get()?.phonemize_blocking(text)
}

/// The espeak-ng voice: robotic but intelligible, sub-millisecond first audio,
/// always available (no model files). The fallback and the test voice.
#[derive(Clone, Debug)]
pub struct EspeakTts {
    rate_wpm: u32,
}

impl EspeakTts {
    /// Starts (or reuses) the espeak owner; `rate_wpm` is clamped to
    /// [`MIN_RATE_WPM`]..=[`MAX_RATE_WPM`].
    ///
    /// # Errors
    /// [`TtsError::Model`] when libespeak-ng cannot find its data or voice.
    pub fn new(rate_wpm: u32) -> Result<Self, TtsError> {
        EspeakEngine::get()?;
        Ok(Self {
            rate_wpm: rate_wpm.clamp(MIN_RATE_WPM, MAX_RATE_WPM),
        })
    }

    /// Speaking rate in words per minute.
    pub fn rate_wpm(&self) -> u32 {
        self.rate_wpm
    }

    /// Output sample rate.
    pub fn sample_rate(&self) -> Result<u32, TtsError> {
        Ok(EspeakEngine::get()?.sample_rate())
    }

    /// Like [`TextToSpeech::synthesize`], and also reports first-audio latency.
    pub async fn synthesize_timed(
        &self,
        text: &str,
        cancel: &CancellationToken,
    ) -> Result<EspeakAudio, TtsError> {
        let engine = EspeakEngine::get()?;
        if text.trim().is_empty() {
            return Ok(EspeakAudio {
                speech: Speech {
                    samples: Vec::new(),
                    sample_rate: engine.sample_rate(),
                },
                first_audio: None,
            });
        }
        engine.synthesize(text, self.rate_wpm, cancel).await
    }
}

#[async_trait]
impl TextToSpeech for EspeakTts {
    fn name(&self) -> &str {
        "espeak"
    }

    async fn synthesize(&self, text: &str, cancel: &CancellationToken) -> Result<Speech, TtsError> {
        Ok(self.synthesize_timed(text, cancel).await?.speech)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice() -> EspeakTts {
        EspeakTts::new(DEFAULT_RATE_WPM).expect("libespeak-ng is installed on test machines")
    }

    #[tokio::test]
    async fn a_sentence_becomes_about_a_second_of_audio() {
        let tts = voice();
        let speech = tts
            .synthesize("Hello there, how are you today?", &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(speech.sample_rate, 22_050);
        let seconds = speech.samples.len() as f64 / speech.sample_rate as f64;
        assert!((0.8..5.0).contains(&seconds), "{seconds} s");
        let peak = speech.samples.iter().map(|s| s.unsigned_abs()).max();
        assert!(peak.unwrap_or(0) > 1000, "audio is not silent");
    }

    #[tokio::test]
    async fn a_faster_rate_gives_shorter_audio() {
        let text = "The quick brown fox jumps over the lazy dog near the river bank.";
        let slow = EspeakTts::new(120).unwrap();
        let fast = EspeakTts::new(300).unwrap();
        let never = CancellationToken::new();
        let slow = slow.synthesize(text, &never).await.unwrap();
        let fast = fast.synthesize(text, &never).await.unwrap();
        assert!(fast.samples.len() * 3 < slow.samples.len() * 2);
    }

    /// Serialises the tests that cancel: the after-cancel callback counter is global.
    static CANCEL_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn a_cancelled_request_returns_cancelled_and_the_voice_still_works() {
        let _serial = CANCEL_TESTS.lock().await;
        let tts = voice();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let result = tts.synthesize("This will never be heard.", &cancel).await;
        assert!(matches!(result, Err(TtsError::Cancelled)), "{result:?}");
        let speech = tts
            .synthesize("But this will.", &CancellationToken::new())
            .await
            .unwrap();
        assert!(!speech.samples.is_empty());
    }

    #[tokio::test]
    async fn cancelling_inside_the_callback_aborts_synthesis() {
        let _serial = CANCEL_TESTS.lock().await;
        // The token is cancelled from inside the callback once 2000 samples
        // exist; the next callback must return 1 and espeak must stop calling
        // (invariant 2). The job goes straight to the owner, bypassing the
        // caller-side select, so only the callback can produce the outcome.
        let engine = EspeakEngine::get().unwrap();
        let (reply, rx) = oneshot::channel();
        // Read before sending: the owner thread may finish the job before
        // this test thread runs again.
        let before = CALLBACKS_AFTER_CANCEL.load(std::sync::atomic::Ordering::SeqCst);
        engine
            .send(Job::Synthesize {
                text: "This sentence is rather long. ".repeat(200),
                rate: DEFAULT_RATE_WPM,
                cancel: CancellationToken::new(),
                reply,
                cancel_after_samples: Some(2000),
            })
            .unwrap();
        let result = rx.await.unwrap();
        assert!(matches!(result, Err(TtsError::Cancelled)), "{result:?}");
        let after = CALLBACKS_AFTER_CANCEL.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after - before, 1, "espeak kept calling after the abort");
        let speech = voice()
            .synthesize("Still alive.", &CancellationToken::new())
            .await
            .unwrap();
        assert!(!speech.samples.is_empty());
    }

    #[tokio::test]
    async fn empty_text_and_nul_bytes_are_harmless() {
        let tts = voice();
        let never = CancellationToken::new();
        assert!(tts
            .synthesize("  ", &never)
            .await
            .unwrap()
            .samples
            .is_empty());
        let speech = tts.synthesize("a\0b", &never).await.unwrap();
        assert!(!speech.samples.is_empty());
    }

    #[tokio::test]
    async fn markup_is_read_as_text_not_interpreted() {
        let tts = voice();
        let never = CancellationToken::new();
        let speech = tts
            .synthesize("<speak><break time=\"10s\"/></speak>", &never)
            .await
            .unwrap();
        let seconds = speech.samples.len() as f64 / speech.sample_rate as f64;
        assert!(seconds < 9.0, "SSML break was interpreted: {seconds} s");
    }

    #[test]
    fn phonemes_are_ipa() {
        let ipa = phonemize_ipa("Hello world").unwrap();
        assert!(ipa.contains('ˈ'), "{ipa}");
        assert!(ipa.contains("wˈɜːld"), "{ipa}");
    }
}
