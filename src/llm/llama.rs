//! The embedded language model: a GGUF chat model (SmolLM2-135M-Instruct by
//! default) run in-process by llama.cpp through `llama-cpp-2`.
//!
//! One dedicated generation thread owns the model and one context; requests
//! reach it through a channel and are served one at a time (two cores cannot
//! run two decodes usefully). Tokens travel back through a small bounded
//! channel that backs the returned [`ChatStream`]. The prompt is rendered with
//! the chat template embedded in the GGUF and tokenised with special tokens
//! parsed. The KV cache is kept between requests and the longest common token
//! prefix (system prompt and earlier turns) is reused, so a follow-up turn
//! only pays prefill for its new tokens. Warm start: every graph runs once
//! at load ([`generator`]), and a session prefills its system prompt and
//! history while the user is still speaking ([`ChatModel::prefill`]), so a
//! first turn costs what a later turn costs.
//!
//! # Invariants
//! 1. llama.cpp's backend is initialised once per process; only the
//!    generation thread touches the model's context.
//! 2. Every request's stream ends with exactly one `Finished` or one error
//!    (the trait's invariant 1).
//! 3. When the stream is dropped (or a prefill's future), generation stops
//!    before the next token is decoded: the thread checks the channel
//!    before every decode and every prefill chunk (at most `prefill_chunk`
//!    tokens), and a failed send stops it too.
//! 4. `cached` always equals the tokens whose keys and values are in the KV
//!    cache (sequence 0, positions `0..cached.len()`).
//! 5. A prompt never exceeds the context: the oldest non-system messages are
//!    dropped until prompt plus `max_tokens` fits.
//!
//! # Scheduling on two cores
//! llama.cpp's worker threads spin while they wait for each other. With as
//! many threads as cores, any other runnable thread (Piper synthesising the
//! previous sentence, a build, the audio path) stalls every matrix product:
//! measured on a 2-core machine with other load, 2 threads fell from tens of
//! tokens/s to 1–6 tokens/s, and 2-thread prefill took seconds. One thread
//! degrades in proportion to the load instead (roughly halved beside a
//! 1-thread Piper) and still decodes far faster than speech is spoken
//! (about 3 tokens/s). Hence the default of one thread for both decode and
//! prefill, leaving the other core to text-to-speech (Piper with one
//! intra-op thread, spinning off). Raise `threads` only on machines with
//! spare cores.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::{
    ChatDelta, ChatMessage, ChatModel, ChatRequest, ChatStream, ErrorClass, LlmError, Prefilled,
};

mod generator;
use generator::Generator;

/// The provider name this backend reports.
pub const PROVIDER: &str = "embedded";

/// A system prompt for a voice assistant on a small model: short spoken
/// answers, no formatting that cannot be heard.
pub const VOICE_SYSTEM_PROMPT: &str = "You are a friendly voice assistant. \
Your replies are spoken aloud, so answer in one or two short, plain sentences. \
Never use lists, markdown, code, emojis or special symbols. \
If you do not know the answer, say so briefly.";

/// How the embedded model runs.
#[derive(Clone, Debug)]
pub struct LlamaOptions {
    /// Threads for decoding (default 1; see "Scheduling on two cores" in
    /// the module doc before raising it).
    pub threads: usize,
    /// Threads for prompt prefill; `None` means the same as `threads`.
    /// Prefill runs after the user stops speaking, when little else runs,
    /// but it spins like decoding does.
    pub prefill_threads: Option<usize>,
    /// Context length in tokens.
    pub context_tokens: u32,
    /// Prefill batch size in tokens.
    pub batch_tokens: u32,
    /// Prompt tokens decoded between two cancellation checks (a dropped
    /// stream stops within one such chunk: ≈ 2 ms per token on one thread).
    pub prefill_chunk: usize,
    /// Repetition penalty over the last `repeat_last_n` generated tokens
    /// (1.0 = off). The reply guard (`agent::guard`) stops loops; this
    /// only makes them rarer.
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    /// Top-k sampling cut (0 disables).
    pub top_k: i32,
    /// Nucleus sampling cut (1.0 disables).
    pub top_p: f32,
    /// Sampling seed.
    pub seed: u32,
    /// Tokens buffered between the generation thread and the stream.
    pub stream_buffer: usize,
    /// Route llama.cpp's logs into `tracing` (target `llama-cpp-2`) instead
    /// of silencing them.
    pub logs_to_tracing: bool,
}

impl Default for LlamaOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            prefill_threads: None,
            context_tokens: 2048,
            batch_tokens: 512,
            prefill_chunk: 16,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            top_k: 40,
            top_p: 0.95,
            seed: 0x5eed,
            stream_buffer: 4,
            logs_to_tracing: false,
        }
    }
}

/// Counters of the generation thread, for tests and metrics.
#[derive(Debug, Default)]
pub struct LlamaStats {
    /// Tokens decoded after sampling, over all requests.
    pub tokens_generated: AtomicU64,
    /// Prompt tokens decoded (prefill), over all requests.
    pub prompt_tokens_decoded: AtomicU64,
    /// Prompt tokens reused from the KV cache, over all requests.
    pub prompt_tokens_reused: AtomicU64,
}

type Reply = tokio_mpsc::Sender<Result<ChatDelta, LlmError>>;

enum Job {
    Generate {
        request: ChatRequest,
        reply: Reply,
    },
    /// Load a prompt prefix into the KV cache (warm start).
    Prefill {
        messages: Vec<ChatMessage>,
        reply: oneshot::Sender<Result<Option<Prefilled>, LlmError>>,
    },
    /// Answered once every earlier job is finished.
    Barrier(oneshot::Sender<()>),
}

/// The embedded chat model.
pub struct LlamaChat {
    jobs: Mutex<mpsc::Sender<Job>>,
    model: String,
    stats: Arc<LlamaStats>,
    load_time: Duration,
    stream_buffer: usize,
}

impl std::fmt::Debug for LlamaChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaChat")
            .field("model", &self.model)
            .finish()
    }
}

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend (holds invariant 1).
fn backend(logs_to_tracing: bool) -> Result<&'static LlamaBackend, LlmError> {
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(logs_to_tracing),
            );
            LlamaBackend::init().map_err(|e| format!("llama.cpp backend: {e}"))
        })
        .as_ref()
        .map_err(|m| LlmError::new(ErrorClass::Other, PROVIDER, m.clone()))
}

fn err(class: ErrorClass, message: impl Into<String>) -> LlmError {
    LlmError::new(class, PROVIDER, message)
}

impl LlamaChat {
    /// Loads a GGUF chat model and starts its generation thread.
    ///
    /// # Errors
    /// [`ErrorClass::Client`] naming the file when it is missing, is not a
    /// GGUF model, or has no chat template; retrying will not help.
    pub fn load(gguf: &Path, options: LlamaOptions) -> Result<Self, LlmError> {
        if !gguf.is_file() {
            return Err(err(
                ErrorClass::Client,
                format!(
                    "model file {} does not exist (fix: run the model set-up, or set COLLOQUY_LLM_GGUF)",
                    gguf.display()
                ),
            ));
        }
        let started = Instant::now();
        let backend = backend(options.logs_to_tracing)?;
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), LlmError>>();
        let stats = Arc::new(LlamaStats::default());
        let path = gguf.to_path_buf();
        let thread_stats = Arc::clone(&stats);
        let thread_options = options.clone();
        std::thread::Builder::new()
            .name("llama-generate".into())
            .spawn(move || {
                generation_thread(
                    backend,
                    path,
                    thread_options,
                    thread_stats,
                    ready_tx,
                    jobs_rx,
                )
            })
            .map_err(|e| {
                err(
                    ErrorClass::Other,
                    format!("cannot start generation thread: {e}"),
                )
            })?;
        ready_rx
            .recv()
            .map_err(|_| err(ErrorClass::Other, "generation thread died while loading"))??;
        let model = gguf
            .file_stem()
            .map_or_else(|| "gguf".into(), |s| s.to_string_lossy().into_owned());
        Ok(Self {
            jobs: Mutex::new(jobs_tx),
            model,
            stats,
            load_time: started.elapsed(),
            stream_buffer: options.stream_buffer.max(1),
        })
    }

    /// How long [`LlamaChat::load`] took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The generation thread's counters.
    pub fn stats(&self) -> &LlamaStats {
        &self.stats
    }

    /// Resolves once every request sent before it has finished generating.
    ///
    /// # Errors
    /// When the generation thread has stopped.
    pub async fn wait_idle(&self) -> Result<(), LlmError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Barrier(tx))?;
        rx.await
            .map_err(|_| err(ErrorClass::Other, "generation thread has stopped"))
    }

    fn send(&self, job: Job) -> Result<(), LlmError> {
        let jobs = self
            .jobs
            .lock()
            .map_err(|_| err(ErrorClass::Other, "job queue lock poisoned"))?;
        jobs.send(job)
            .map_err(|_| err(ErrorClass::Other, "generation thread has stopped"))
    }
}

/// Where the embedded model file is, by convention: `COLLOQUY_LLM_GGUF`, or
/// in the `COLLOQUY_MODELS` store `smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf`
/// (the model store's layout), else `smollm2-135m-instruct-q4_1.gguf`.
pub fn default_model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COLLOQUY_LLM_GGUF") {
        return Some(PathBuf::from(p));
    }
    let dir = PathBuf::from(std::env::var_os("COLLOQUY_MODELS")?);
    let store = dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let flat = dir.join("smollm2-135m-instruct-q4_1.gguf");
    Some(if !store.is_file() && flat.is_file() {
        flat
    } else {
        store
    })
}

#[async_trait]
impl ChatModel for LlamaChat {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        let (reply, rx) = tokio_mpsc::channel(self.stream_buffer);
        self.send(Job::Generate { request, reply })?;
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed())
    }

    async fn prefill(&self, messages: &[ChatMessage]) -> Result<Option<Prefilled>, LlmError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Prefill {
            messages: messages.to_vec(),
            reply,
        })?;
        rx.await
            .map_err(|_| err(ErrorClass::Other, "generation thread has stopped"))?
    }
}

fn generation_thread(
    backend: &'static LlamaBackend,
    path: PathBuf,
    options: LlamaOptions,
    stats: Arc<LlamaStats>,
    ready: mpsc::Sender<Result<(), LlmError>>,
    jobs: mpsc::Receiver<Job>,
) {
    let bad_model = |what: String| {
        err(
            ErrorClass::Client,
            format!(
                "model file {}: {what} (fix: re-fetch the model; it must be a GGUF chat model)",
                path.display()
            ),
        )
    };
    let model = match LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default()) {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(bad_model(format!("cannot load: {e}"))));
            return;
        }
    };
    let template = match model.chat_template(None) {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send(Err(bad_model(format!("no chat template: {e}"))));
            return;
        }
    };
    let threads = i32::try_from(options.threads.max(1)).unwrap_or(2);
    let prefill_threads = options
        .prefill_threads
        .map_or(threads, |t| i32::try_from(t.max(1)).unwrap_or(2));
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(options.context_tokens.max(256)))
        .with_n_batch(options.batch_tokens.max(32))
        .with_n_threads(threads)
        .with_n_threads_batch(prefill_threads);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(err(
                ErrorClass::Other,
                format!("cannot create a llama.cpp context: {e} (fix: lower the context size)"),
            )));
            return;
        }
    };
    let mut generator = Generator {
        model: &model,
        template,
        options,
        stats,
        cached: Vec::new(),
    };
    if let Err(e) = generator.warm_up(&mut ctx) {
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok(()));
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Barrier(done) => {
                let _ = done.send(());
            }
            Job::Prefill { messages, reply } => {
                if reply.is_closed() {
                    continue;
                }
                let result = generator.prefill(&mut ctx, &messages, &|| reply.is_closed());
                if result.is_err() {
                    // The KV cache state is unknown after a failure.
                    ctx.clear_kv_cache();
                    generator.cached.clear();
                }
                let _ = reply.send(result);
            }
            Job::Generate { request, reply } => {
                if reply.is_closed() {
                    continue;
                }
                match generator.generate(&mut ctx, &request, &reply) {
                    Ok(Some(finished)) => {
                        let _ = reply.blocking_send(Ok(finished));
                    }
                    // The stream was dropped: nobody to tell.
                    Ok(None) => {}
                    Err(e) => {
                        // The KV cache state is unknown after a failure.
                        ctx.clear_kv_cache();
                        generator.cached.clear();
                        let _ = reply.blocking_send(Err(e));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::generator::take_utf8;
    use super::*;
    use crate::llm::ChatMessage;
    use std::sync::atomic::Ordering;

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let mut b = "caf".as_bytes().to_vec();
        b.push(0xC3);
        assert_eq!(take_utf8(&mut b), "caf");
        assert_eq!(b, vec![0xC3]);
        b.push(0xA9);
        assert_eq!(take_utf8(&mut b), "é");
        assert!(b.is_empty());
        let mut bad = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_utf8(&mut bad), "a\u{FFFD}b");
    }

    /// The model file, or `None` (skip) unless `COLLOQUY_REQUIRE_MODELS=1`,
    /// in which case a missing file fails the test.
    fn model_or_skip() -> Option<PathBuf> {
        let required = std::env::var("COLLOQUY_REQUIRE_MODELS").is_ok_and(|v| v == "1");
        match default_model_path() {
            Some(p) if p.is_file() => Some(p),
            other => {
                assert!(
                    !required,
                    "COLLOQUY_REQUIRE_MODELS=1 but the LLM model is missing ({other:?}); set COLLOQUY_LLM_GGUF or COLLOQUY_MODELS"
                );
                eprintln!("skipped: no LLM model (set COLLOQUY_LLM_GGUF or COLLOQUY_MODELS)");
                None
            }
        }
    }

    static SHARED: OnceLock<LlamaChat> = OnceLock::new();

    fn shared(path: &Path) -> &'static LlamaChat {
        SHARED.get_or_init(|| LlamaChat::load(path, LlamaOptions::default()).unwrap())
    }

    async fn answer(chat: &LlamaChat, question: &str) -> (String, Option<ChatDelta>) {
        let request = ChatRequest::new(vec![
            ChatMessage::system(VOICE_SYSTEM_PROMPT),
            ChatMessage::user(question),
        ]);
        let mut stream = chat.stream(request).await.unwrap();
        let mut text = String::new();
        let mut last = None;
        while let Some(item) = stream.next().await {
            match item.unwrap() {
                ChatDelta::Text(t) => text.push_str(&t),
                other => last = Some(other),
            }
        }
        (text, last)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_capital_of_france_is_paris() {
        let Some(path) = model_or_skip() else { return };
        let chat = shared(&path);
        let (text, last) = answer(chat, "What is the capital of France?").await;
        assert!(text.contains("Paris"), "{text:?}");
        assert!(
            matches!(last, Some(ChatDelta::Finished { usage: Some(u), .. }) if u.tokens_out > 0),
            "{last:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follow_up_turn_reuses_the_cached_prefix() {
        let Some(path) = model_or_skip() else { return };
        let chat = shared(&path);
        let _ = answer(chat, "What is the capital of Italy?").await;
        let before = chat.stats().prompt_tokens_reused.load(Ordering::Relaxed);
        let _ = answer(chat, "What is the capital of Spain?").await;
        let reused = chat.stats().prompt_tokens_reused.load(Ordering::Relaxed) - before;
        // The system prompt alone is well over 40 tokens.
        assert!(reused > 40, "reused {reused} tokens");
    }

    /// Warm start: a prefilled system prompt is reused whole by the first
    /// request, and prefilling it again decodes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prefilled_prefix_is_reused_by_the_first_turn() {
        let Some(path) = model_or_skip() else { return };
        let chat = LlamaChat::load(&path, LlamaOptions::default()).unwrap();
        let system = [ChatMessage::system(VOICE_SYSTEM_PROMPT)];
        let done = chat.prefill(&system).await.unwrap().unwrap();
        assert!(done.tokens > 40, "{done:?}");
        assert_eq!(done.reused, 0, "a fresh model has nothing cached");
        let again = chat.prefill(&system).await.unwrap().unwrap();
        assert_eq!(again.reused, again.tokens, "{again:?}");
        let decoded = chat.stats().prompt_tokens_decoded.load(Ordering::Relaxed);
        let (text, _) = answer(&chat, "What is the capital of France?").await;
        assert!(!text.is_empty());
        let reused = chat.stats().prompt_tokens_reused.load(Ordering::Relaxed);
        let decoded_now = chat.stats().prompt_tokens_decoded.load(Ordering::Relaxed) - decoded;
        assert!(
            reused >= u64::from(done.tokens) * 2,
            "the turn reused {reused} tokens in all"
        );
        // Only the user's message and the assistant's opening were new.
        assert!(
            decoded_now < 30,
            "the turn decoded {decoded_now} prompt tokens"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_stream_stops_generation_within_one_token() {
        let Some(path) = model_or_skip() else { return };
        // An instance of its own: other tests' tokens must not be counted.
        let chat = LlamaChat::load(&path, LlamaOptions::default()).unwrap();
        let mut request = ChatRequest::new(vec![ChatMessage::user(
            "Count from one to one hundred, writing every number as a word.",
        )]);
        request.max_tokens = 400;
        let mut stream = chat.stream(request).await.unwrap();
        for _ in 0..3 {
            let item = stream.next().await.unwrap().unwrap();
            assert!(matches!(item, ChatDelta::Text(_)), "{item:?}");
        }
        let at_drop = chat.stats().tokens_generated.load(Ordering::SeqCst);
        drop(stream);
        chat.wait_idle().await.unwrap();
        let after = chat.stats().tokens_generated.load(Ordering::SeqCst);
        assert!(
            after - at_drop <= 1,
            "{} tokens after drop",
            after - at_drop
        );
    }

    #[test]
    fn a_missing_model_file_is_named_in_the_error() {
        let e = LlamaChat::load(
            Path::new("/nonexistent/model.gguf"),
            LlamaOptions::default(),
        )
        .unwrap_err();
        assert_eq!(e.class, ErrorClass::Client);
        assert!(e.message.contains("/nonexistent/model.gguf"), "{e}");
    }
}
