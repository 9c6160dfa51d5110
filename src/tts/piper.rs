//! Piper: natural-sounding neural speech (VITS voices such as
//! `en_US-joe-medium`) run with ONNX Runtime through `ort`, phonemes from the
//! shared espeak owner ([`super::espeak`]).
//!
//! Text is split into clauses at punctuation; each clause is phonemised by
//! espeak-ng in IPA mode and its punctuation added back as a phoneme (espeak
//! 1.51 has no `TextToPhonemesWithTerminator`, and without the punctuation
//! Piper loses pauses and question intonation). Each sentence is mapped to ids
//! with the voice's `phoneme_id_map` (`^`, then `_` after every id, then `$`,
//! as Piper does) and synthesised by one model run.
//!
//! # Invariants
//! 1. ONNX Runtime is loaded and its environment created once per process
//!    ([`onnx_environment`]); every session in the process shares it.
//! 2. A sentence's ids start with BOS, put PAD after BOS and after every
//!    phoneme id, and end with EOS; phonemes missing from the map are
//!    skipped, never guessed.
//! 3. Cancellation is checked before every sentence and terminates a running
//!    model call; the caller gets [`TtsError::Cancelled`] at once and the
//!    voice stays usable.
//! 4. Every load error names the file that was wrong.
//! 5. Loading runs the model twice (warm start), so a voice's first reply
//!    costs what later replies cost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ort::environment::Environment;
use ort::session::{RunOptions, Session};
use ort::value::Tensor;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::chunker::is_abbreviation;
use super::espeak::{EspeakEngine, VOICE};
use super::{Speech, TextToSpeech, TtsError};

/// The subset of a Piper voice's `.onnx.json` this backend reads.
#[derive(Clone, Debug, Deserialize)]
pub struct PiperConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    pub inference: InferenceConfig,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    pub phoneme_type: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EspeakConfig {
    pub voice: String,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct InferenceConfig {
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

const BOS: char = '^';
const EOS: char = '$';
const PAD: char = '_';

/// One phonemised sentence: its IPA string and model ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhonemizedSentence {
    pub phonemes: String,
    pub ids: Vec<i64>,
}

/// A clause of input text and the punctuation that ended it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Clause {
    pub text: String,
    /// The punctuation phoneme to add back (`.` `,` `;` `:` `!` `?`).
    pub punct: Option<char>,
    /// Whether the clause ends a sentence (`.` `!` `?`).
    pub ends_sentence: bool,
}

/// Splits text into clauses at punctuation followed by whitespace (or the
/// end), keeping numbers (`3.14`, `1,000`) and abbreviations (`Dr.`) whole.
pub(crate) fn split_clauses(text: &str) -> Vec<Clause> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut clauses = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let is_punct = |c: char| matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | '…');
    let is_closer = |c: char| matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»');
    while i < chars.len() {
        let (at, c) = chars[i];
        if !is_punct(c) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && is_punct(chars[j].1) {
            j += 1;
        }
        let run_end = j;
        while j < chars.len() && is_closer(chars[j].1) {
            j += 1;
        }
        let at_end = j >= chars.len();
        if !at_end && !chars[j].1.is_whitespace() {
            i = j;
            continue;
        }
        let run: String = chars[i..run_end].iter().map(|&(_, c)| c).collect();
        if run == "." {
            let word_start = text[..at].rfind(char::is_whitespace).map_or(0, |k| {
                k + text[k..].chars().next().map_or(1, char::len_utf8)
            });
            if is_abbreviation(&text[word_start..at]) {
                i = j;
                continue;
            }
        }
        let punct = if run.contains('?') {
            '?'
        } else if run.contains('!') {
            '!'
        } else if run.contains('.') || run.contains('…') {
            '.'
        } else {
            // Only clause punctuation in the run: its last character.
            run.chars().last().unwrap_or(',')
        };
        let end = if at_end { text.len() } else { chars[j].0 };
        let clause_text = text[start..end].trim();
        if !clause_text.is_empty() {
            clauses.push(Clause {
                text: clause_text.to_string(),
                punct: Some(punct),
                ends_sentence: matches!(punct, '.' | '!' | '?'),
            });
        }
        start = end;
        i = j;
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        clauses.push(Clause {
            text: rest.to_string(),
            punct: None,
            ends_sentence: true,
        });
    }
    clauses
}

/// Maps a sentence's phonemes to ids (holds invariant 2).
pub(crate) fn phonemes_to_ids(phonemes: &str, map: &HashMap<char, Vec<i64>>) -> Vec<i64> {
    let pad = map.get(&PAD).cloned().unwrap_or_default();
    let mut ids = Vec::with_capacity(phonemes.len() * 2 + 4);
    if let Some(bos) = map.get(&BOS) {
        ids.extend_from_slice(bos);
        ids.extend_from_slice(&pad);
    }
    for c in phonemes.chars() {
        if let Some(id) = map.get(&c) {
            ids.extend_from_slice(id);
            ids.extend_from_slice(&pad);
        }
    }
    if let Some(eos) = map.get(&EOS) {
        ids.extend_from_slice(eos);
    }
    ids
}

/// File names of the default voice and runtime inside the models directory.
pub const DEFAULT_VOICE: &str = "en_US-joe-medium";
/// The ONNX Runtime library's file name inside the models directory.
pub const ONNXRUNTIME_LIB: &str = "libonnxruntime.so.1.32.0";

/// Paths of the default voice: `(onnx, config_json, onnxruntime_lib)`, from
/// `COLLOQUY_PIPER_ONNX` (config next to it, `.onnx.json`) and
/// `COLLOQUY_ONNXRUNTIME_LIB`, each falling back to the `COLLOQUY_MODELS`
/// store (`piper-en_US-joe-medium/…`, `onnxruntime/…`) or, when only that
/// exists, a flat directory holding the files.
pub fn default_voice_paths() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let models = std::env::var_os("COLLOQUY_MODELS").map(PathBuf::from);
    let in_store = |sub: &str, file: &str| {
        models.as_ref().map(|m| {
            let store = m.join(sub).join(file);
            let flat = m.join(file);
            if !store.is_file() && flat.is_file() {
                flat
            } else {
                store
            }
        })
    };
    let onnx = std::env::var_os("COLLOQUY_PIPER_ONNX")
        .map(PathBuf::from)
        .or_else(|| {
            in_store(
                &format!("piper-{DEFAULT_VOICE}"),
                &format!("{DEFAULT_VOICE}.onnx"),
            )
        })?;
    let mut json = onnx.clone().into_os_string();
    json.push(".json");
    let lib = std::env::var_os("COLLOQUY_ONNXRUNTIME_LIB")
        .map(PathBuf::from)
        .or_else(|| in_store("onnxruntime", ONNXRUNTIME_LIB))?;
    Some((onnx, PathBuf::from(json), lib))
}

static ONNX_ENV: Mutex<Option<Environment>> = Mutex::new(None);

/// The process-wide ONNX Runtime environment, loading `libonnxruntime` from
/// `lib` on first use (holds invariant 1). Later calls return the same
/// environment whatever path they pass. Other ONNX models in the process
/// (a Silero VAD, say) must take their environment from here, since `ort`
/// allows only one per process.
///
/// # Errors
/// A message naming `lib` when it cannot be loaded or is too old.
pub fn onnx_environment(lib: &Path) -> Result<Environment, String> {
    let mut env = ONNX_ENV
        .lock()
        .map_err(|_| "the ONNX Runtime environment lock is poisoned".to_string())?;
    if let Some(env) = env.as_ref() {
        return Ok(env.clone());
    }
    if !lib.is_file() {
        return Err(format!(
            "ONNX Runtime library {} does not exist",
            lib.display()
        ));
    }
    let built = ort::init_from(lib)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
        .with_name("colloquy")
        .build()
        .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
    *env = Some(built.clone());
    Ok(built)
}

struct Inner {
    session: Mutex<Session>,
    config: PiperConfig,
    ids: HashMap<char, Vec<i64>>,
    model: String,
}

/// The Piper voice.
#[derive(Clone)]
pub struct PiperTts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PiperTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperTts")
            .field("model", &self.inner.model)
            .finish()
    }
}

fn model_error(file: &Path, reason: impl Into<String>, hint: &str) -> TtsError {
    TtsError::Model {
        model: file.display().to_string(),
        reason: reason.into(),
        hint: hint.into(),
    }
}

fn backend_error(message: impl Into<String>) -> TtsError {
    TtsError::Backend {
        backend: "piper".into(),
        message: message.into(),
    }
}

impl PiperTts {
    /// Loads a Piper voice: the `.onnx` model, its `.onnx.json` config, the
    /// `libonnxruntime` shared library, and the number of intra-op threads.
    ///
    /// # Errors
    /// [`TtsError::Model`] naming the file that is missing or unusable
    /// (invariant 4).
    pub fn load(
        onnx: &Path,
        config_json: &Path,
        onnxruntime_lib: &Path,
        threads: usize,
    ) -> Result<Self, TtsError> {
        let fetch_hint = "run the model set-up again to re-fetch and verify the voice files";
        let text = std::fs::read_to_string(config_json)
            .map_err(|e| model_error(config_json, format!("cannot read: {e}"), fetch_hint))?;
        let config: PiperConfig = serde_json::from_str(&text).map_err(|e| {
            model_error(
                config_json,
                format!("not a Piper voice config: {e}"),
                fetch_hint,
            )
        })?;
        if config.espeak.voice != VOICE {
            return Err(model_error(
                config_json,
                format!(
                    "espeak voice {} is not supported (only {VOICE})",
                    config.espeak.voice
                ),
                "use an en_US Piper voice",
            ));
        }
        if config
            .phoneme_type
            .as_deref()
            .is_some_and(|t| t != "espeak")
        {
            return Err(model_error(
                config_json,
                "phoneme_type is not espeak",
                "use a Piper voice phonemised with espeak",
            ));
        }
        let mut ids = HashMap::new();
        for (k, v) in &config.phoneme_id_map {
            let mut chars = k.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                ids.insert(c, v.clone());
            }
        }
        for required in [BOS, EOS, PAD] {
            if !ids.contains_key(&required) {
                return Err(model_error(
                    config_json,
                    format!("phoneme_id_map lacks '{required}'"),
                    fetch_hint,
                ));
            }
        }
        if !onnx.is_file() {
            return Err(model_error(onnx, "file does not exist", fetch_hint));
        }
        // The espeak owner serves our phonemes.
        EspeakEngine::get()?;
        let env = onnx_environment(onnxruntime_lib).map_err(|reason| {
            model_error(
                onnxruntime_lib,
                reason,
                "point to libonnxruntime.so from the PyPI onnxruntime wheel (1.22 or newer)",
            )
        })?;
        let ort_err = |e: ort::Error| model_error(onnx, e.to_string(), fetch_hint);
        let session = Session::builder(&env)
            .map_err(ort_err)?
            .with_intra_threads(threads.max(1))
            .map_err(|e| ort_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| ort_err(e.into()))?
            // Spinning workers would steal the second core from the LLM.
            .with_intra_op_spinning(false)
            .map_err(|e| ort_err(e.into()))?
            .with_inter_op_spinning(false)
            .map_err(|e| ort_err(e.into()))?
            .commit_from_file(onnx)
            .map_err(ort_err)?;
        for name in ["input", "input_lengths", "scales"] {
            if !session.inputs().iter().any(|i| i.name() == name) {
                return Err(model_error(
                    onnx,
                    format!("model has no input named {name}"),
                    "use a Piper VITS voice",
                ));
            }
        }
        let voice = Self {
            inner: Arc::new(Inner {
                session: Mutex::new(session),
                config,
                ids,
                model: onnx
                    .file_stem()
                    .map_or_else(|| "piper".into(), |s| s.to_string_lossy().into_owned()),
            }),
        };
        // Warm start: onnxruntime's first runs of a session allocate and
        // plan (measured ≈ 2–3× a later run); pay them here, not in the
        // first reply. Two lengths, so both short and long shapes are seen.
        // On a thread of its own: `load` may be called inside an async
        // context, where the espeak owner's blocking reply must not wait.
        let run = RunOptions::new().map_err(|e| backend_error(format!("run options: {e}")))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                for text in ["Hello.", "Hello there, this is a warm start of the voice."] {
                    voice.synthesize_blocking(text, &CancellationToken::new(), &run)?;
                }
                Ok::<(), TtsError>(())
            })
            .join()
            .map_err(|_| backend_error("the warm-up thread panicked"))?
        })?;
        Ok(voice)
    }

    /// Loads `<dir>/<voice>.onnx` and `<dir>/<voice>.onnx.json`.
    ///
    /// # Errors
    /// As [`PiperTts::load`].
    pub fn load_voice(
        dir: &Path,
        voice: &str,
        onnxruntime_lib: &Path,
        threads: usize,
    ) -> Result<Self, TtsError> {
        let onnx: PathBuf = dir.join(format!("{voice}.onnx"));
        let json: PathBuf = dir.join(format!("{voice}.onnx.json"));
        Self::load(&onnx, &json, onnxruntime_lib, threads)
    }

    /// Output sample rate (22050 Hz for medium voices).
    pub fn sample_rate(&self) -> u32 {
        self.inner.config.audio.sample_rate
    }

    /// The voice's config.
    pub fn config(&self) -> &PiperConfig {
        &self.inner.config
    }

    /// Phonemes and ids for each sentence of `text`; blocking (espeak).
    ///
    /// # Errors
    /// When the espeak owner is unavailable.
    pub fn phonemize(&self, text: &str) -> Result<Vec<PhonemizedSentence>, TtsError> {
        let engine = EspeakEngine::get()?;
        let mut sentences = Vec::new();
        let mut current = String::new();
        for clause in split_clauses(text) {
            let ipa = engine.phonemize_blocking(&clause.text)?;
            if !current.is_empty() && !current.ends_with(' ') && !ipa.is_empty() {
                current.push(' ');
            }
            current.push_str(&ipa);
            match clause.punct {
                Some(p) if clause.ends_sentence => current.push(p),
                Some(p) => {
                    current.push(p);
                    current.push(' ');
                }
                None => {}
            }
            if clause.ends_sentence {
                self.push_sentence(&mut current, &mut sentences);
            }
        }
        // Text that ends in a clause (`Well, the answer is,`), as an eagerly
        // cut first chunk does, is still spoken.
        self.push_sentence(&mut current, &mut sentences);
        Ok(sentences)
    }

    fn push_sentence(&self, current: &mut String, sentences: &mut Vec<PhonemizedSentence>) {
        let phonemes = std::mem::take(current).trim().to_string();
        if phonemes.chars().any(char::is_alphabetic) {
            let ids = phonemes_to_ids(&phonemes, &self.inner.ids);
            sentences.push(PhonemizedSentence { phonemes, ids });
        }
    }

    /// Synthesises `text` on the calling thread (blocking; holds invariant 3).
    ///
    /// # Errors
    /// [`TtsError::Cancelled`] when `cancel` fires; [`TtsError::Backend`]
    /// when the model run fails.
    pub fn synthesize_blocking(
        &self,
        text: &str,
        cancel: &CancellationToken,
        run_options: &RunOptions,
    ) -> Result<Speech, TtsError> {
        let sentences = self.phonemize(text)?;
        let inf = self.inner.config.inference;
        let mut samples = Vec::new();
        for sentence in sentences {
            if cancel.is_cancelled() {
                return Err(TtsError::Cancelled);
            }
            let n = sentence.ids.len();
            let input = Tensor::from_array(([1usize, n], sentence.ids))
                .map_err(|e| backend_error(format!("input tensor: {e}")))?;
            let lengths = Tensor::from_array(([1usize], vec![n as i64]))
                .map_err(|e| backend_error(format!("input_lengths tensor: {e}")))?;
            let scales = Tensor::from_array((
                [3usize],
                vec![inf.noise_scale, inf.length_scale, inf.noise_w],
            ))
            .map_err(|e| backend_error(format!("scales tensor: {e}")))?;
            let mut session = self
                .inner
                .session
                .lock()
                .map_err(|_| backend_error("session lock poisoned"))?;
            let outputs = session
                .run_with_options(
                    ort::inputs![
                        "input" => input,
                        "input_lengths" => lengths,
                        "scales" => scales,
                    ],
                    run_options,
                )
                .map_err(|e| {
                    if cancel.is_cancelled() {
                        TtsError::Cancelled
                    } else {
                        backend_error(format!("model run failed: {e}"))
                    }
                })?;
            let (_, audio) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| backend_error(format!("model output is not f32 audio: {e}")))?;
            samples.extend(
                audio
                    .iter()
                    .map(|&x| (x * 32767.0).clamp(-32768.0, 32767.0) as i16),
            );
        }
        if cancel.is_cancelled() {
            return Err(TtsError::Cancelled);
        }
        Ok(Speech {
            samples,
            sample_rate: self.sample_rate(),
        })
    }
}

#[async_trait]
impl TextToSpeech for PiperTts {
    fn name(&self) -> &str {
        "piper"
    }

    async fn synthesize(&self, text: &str, cancel: &CancellationToken) -> Result<Speech, TtsError> {
        if cancel.is_cancelled() {
            return Err(TtsError::Cancelled);
        }
        let run_options =
            Arc::new(RunOptions::new().map_err(|e| backend_error(format!("run options: {e}")))?);
        let this = self.clone();
        let text = text.to_owned();
        let token = cancel.clone();
        let options = Arc::clone(&run_options);
        let mut task =
            tokio::task::spawn_blocking(move || this.synthesize_blocking(&text, &token, &options));
        tokio::select! {
            joined = &mut task => joined.map_err(|e| backend_error(format!("synthesis task failed: {e}")))?,
            () = cancel.cancelled() => {
                // Holds invariant 3: stop the running model call; the task
                // finishes on its own and releases the session.
                let _ = run_options.terminate();
                Err(TtsError::Cancelled)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(text: &str, punct: Option<char>, ends: bool) -> Clause {
        Clause {
            text: text.into(),
            punct,
            ends_sentence: ends,
        }
    }

    #[test]
    fn clauses_split_at_punctuation_and_keep_it() {
        assert_eq!(
            split_clauses("Hello, Dr. Smith; it is 3.14 now. Is it? Yes!  ok"),
            vec![
                clause("Hello,", Some(','), false),
                clause("Dr. Smith;", Some(';'), false),
                clause("it is 3.14 now.", Some('.'), true),
                clause("Is it?", Some('?'), true),
                clause("Yes!", Some('!'), true),
                clause("ok", None, true),
            ]
        );
        assert_eq!(
            split_clauses("Really?!\" Well... 1,000 cats: wow"),
            vec![
                clause("Really?!\"", Some('?'), true),
                clause("Well...", Some('.'), true),
                clause("1,000 cats:", Some(':'), false),
                clause("wow", None, true),
            ]
        );
        assert!(split_clauses("   ").is_empty());
    }

    /// The voice files, or `None` (skip) unless `COLLOQUY_REQUIRE_MODELS=1`,
    /// in which case missing files fail the test.
    fn voice_or_skip() -> Option<PiperTts> {
        let required = std::env::var("COLLOQUY_REQUIRE_MODELS").is_ok_and(|v| v == "1");
        match default_voice_paths() {
            Some((onnx, json, lib)) if onnx.is_file() && json.is_file() && lib.is_file() => {
                Some(PiperTts::load(&onnx, &json, &lib, 1).unwrap())
            }
            other => {
                assert!(
                    !required,
                    "COLLOQUY_REQUIRE_MODELS=1 but the Piper voice is missing ({other:?}); set COLLOQUY_MODELS"
                );
                eprintln!("skipped: no Piper voice (set COLLOQUY_MODELS)");
                None
            }
        }
    }

    #[test]
    fn phonemes_keep_punctuation_and_map_to_known_ids() {
        let Some(voice) = voice_or_skip() else { return };
        let sentences = voice.phonemize("Hello, world. Is it raining?").unwrap();
        assert_eq!(sentences.len(), 2, "{sentences:?}");
        assert!(sentences[0].phonemes.contains(", "), "{:?}", sentences[0]);
        assert!(sentences[0].phonemes.ends_with('.'), "{:?}", sentences[0]);
        assert!(sentences[1].phonemes.ends_with('?'), "{:?}", sentences[1]);
        // A chunk ending in a clause is spoken, comma and all.
        let clause = voice.phonemize("Well, the capital of France,").unwrap();
        assert_eq!(clause.len(), 1, "{clause:?}");
        assert!(clause[0].phonemes.ends_with(','), "{clause:?}");
        let ids = &sentences[1].ids;
        assert_eq!((ids[0], ids[1], ids[ids.len() - 1]), (1, 0, 2));
        // Every phoneme of an English sentence is in the voice's map.
        let known = sentences[1]
            .phonemes
            .chars()
            .filter(|c| voice.inner.ids.contains_key(c))
            .count();
        assert_eq!(
            known,
            sentences[1].phonemes.chars().count(),
            "{:?}",
            sentences[1]
        );
    }

    #[tokio::test]
    async fn a_sentence_becomes_natural_length_audio() {
        let Some(voice) = voice_or_skip() else { return };
        let speech = voice
            .synthesize(
                "The weather is lovely today, isn't it?",
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(speech.sample_rate, 22_050);
        let seconds = speech.samples.len() as f64 / 22_050.0;
        assert!((1.0..5.0).contains(&seconds), "{seconds} s");
        let peak = speech
            .samples
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap_or(0);
        assert!(peak > 2000, "peak {peak}");
    }

    #[tokio::test]
    async fn a_cancelled_request_returns_cancelled_and_the_voice_still_works() {
        let Some(voice) = voice_or_skip() else { return };
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = voice.synthesize("Never spoken.", &cancel).await;
        assert!(matches!(r, Err(TtsError::Cancelled)), "{r:?}");
        let ok = voice
            .synthesize("Spoken.", &CancellationToken::new())
            .await
            .unwrap();
        assert!(!ok.samples.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_long_run_releases_the_voice() {
        let Some(voice) = voice_or_skip() else { return };
        let cancel = CancellationToken::new();
        let long = "This is a long sentence that goes on and on without end. ".repeat(20);
        let task = {
            let (voice, cancel) = (voice.clone(), cancel.clone());
            tokio::spawn(async move { voice.synthesize(&long, &cancel).await })
        };
        tokio::task::yield_now().await;
        cancel.cancel();
        let r = task.await.unwrap();
        assert!(matches!(r, Err(TtsError::Cancelled)), "{r:?}");
        // The terminated run gives the session back (invariant 3).
        let ok = voice
            .synthesize("Spoken.", &CancellationToken::new())
            .await
            .unwrap();
        assert!(!ok.samples.is_empty());
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("voice.onnx.json");
        let onnx = dir.path().join("voice.onnx");
        let lib = dir.path().join("libonnxruntime.so");
        let e = PiperTts::load(&onnx, &json, &lib, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("voice.onnx.json"), "{e}");
        std::fs::write(&json, "{\"audio\": 1}").unwrap();
        let e = PiperTts::load(&onnx, &json, &lib, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("voice.onnx.json") && e.contains("not a Piper voice config"),
            "{e}"
        );
    }

    #[test]
    fn ids_are_bos_pad_interleaved_eos() {
        let map: HashMap<char, Vec<i64>> = [('_', 0), ('^', 1), ('$', 2), ('a', 14), ('b', 15)]
            .into_iter()
            .map(|(c, i)| (c, vec![i]))
            .collect();
        assert_eq!(phonemes_to_ids("ab", &map), vec![1, 0, 14, 0, 15, 0, 2]);
        // Unknown phonemes are skipped, never guessed (invariant 2).
        assert_eq!(phonemes_to_ids("aZ", &map), vec![1, 0, 14, 0, 2]);
    }
}
