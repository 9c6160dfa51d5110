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
//! only pays prefill for its new tokens.
//!
//! # Invariants
//! 1. llama.cpp's backend is initialised once per process; only the
//!    generation thread touches the model's context.
//! 2. Every request's stream ends with exactly one `Finished` or one error
//!    (the trait's invariant 1).
//! 3. When the stream is dropped, generation stops before the next token is
//!    decoded: the thread checks the channel before every decode and every
//!    prefill batch, and a failed send stops it too.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::{
    ChatDelta, ChatMessage, ChatModel, ChatRequest, ChatStream, ErrorClass, FinishReason, LlmError,
    Role, Usage,
};

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
    let _ = ready.send(Ok(()));
    let mut generator = Generator {
        model: &model,
        template,
        options,
        stats,
        cached: Vec::new(),
    };
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Barrier(done) => {
                let _ = done.send(());
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

struct Generator<'m> {
    model: &'m LlamaModel,
    template: LlamaChatTemplate,
    options: LlamaOptions,
    stats: Arc<LlamaStats>,
    /// Holds invariant 4.
    cached: Vec<LlamaToken>,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

impl Generator<'_> {
    fn render(&self, messages: &[ChatMessage]) -> Result<Vec<LlamaToken>, LlmError> {
        let mut chat = Vec::with_capacity(messages.len() + 1);
        if !messages.iter().any(|m| m.role == Role::System) {
            chat.push(
                LlamaChatMessage::new("system".into(), VOICE_SYSTEM_PROMPT.into())
                    .map_err(|e| err(ErrorClass::Client, e.to_string()))?,
            );
        }
        for m in messages {
            let content = m.content.replace('\0', "");
            chat.push(
                LlamaChatMessage::new(role_name(m.role).into(), content)
                    .map_err(|e| err(ErrorClass::Client, e.to_string()))?,
            );
        }
        let prompt = self
            .model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| err(ErrorClass::Client, format!("chat template failed: {e}")))?;
        Ok(self.model.vocab().tokenize(prompt.as_bytes(), true, true))
    }

    /// Renders the prompt, dropping the oldest non-system messages until it
    /// fits (holds invariant 5).
    fn prompt(&self, request: &ChatRequest, n_ctx: usize) -> Result<Vec<LlamaToken>, LlmError> {
        let budget = n_ctx.saturating_sub(request.max_tokens as usize).max(1);
        let mut messages = request.messages.clone();
        loop {
            let tokens = self.render(&messages)?;
            if tokens.len() <= budget {
                return Ok(tokens);
            }
            let oldest = messages.iter().position(|m| m.role != Role::System);
            match oldest {
                Some(i) if messages.iter().filter(|m| m.role != Role::System).count() > 1 => {
                    messages.remove(i);
                }
                _ => {
                    return Err(err(
                        ErrorClass::Client,
                        format!(
                            "prompt of {} tokens does not fit the {n_ctx}-token context with {} tokens to generate (fix: shorten the system prompt or raise the context size)",
                            tokens.len(),
                            request.max_tokens
                        ),
                    ))
                }
            }
        }
    }

    fn sampler(&self, temperature: f32) -> LlamaSampler {
        if temperature <= 0.0 {
            return LlamaSampler::greedy();
        }
        let mut chain = Vec::new();
        if self.options.top_k > 0 {
            chain.push(LlamaSampler::top_k(self.options.top_k));
        }
        if self.options.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(self.options.top_p, 1));
        }
        chain.push(LlamaSampler::temp(temperature));
        chain.push(LlamaSampler::dist(self.options.seed));
        LlamaSampler::chain_simple(chain)
    }

    /// Runs one request; `Ok(None)` when the stream was dropped (invariant 3).
    fn generate(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        request: &ChatRequest,
        reply: &Reply,
    ) -> Result<Option<ChatDelta>, LlmError> {
        let n_ctx = ctx.n_ctx() as usize;
        let tokens = self.prompt(request, n_ctx)?;
        let started = Instant::now();

        // Reuse the longest common prefix; at least one prompt token is
        // decoded again so its logits exist.
        let common = self
            .cached
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count();
        let mut keep = common.min(tokens.len().saturating_sub(1));
        let removed = u32::try_from(keep)
            .ok()
            .and_then(|p0| ctx.clear_kv_cache_seq(Some(0), Some(p0), None).ok())
            .unwrap_or(false);
        if !removed {
            ctx.clear_kv_cache();
            keep = 0;
        }
        self.cached.truncate(keep);
        self.stats
            .prompt_tokens_reused
            .fetch_add(keep as u64, Ordering::Relaxed);

        // Prefill in batches; logits only for the last prompt token.
        let n_batch = ctx.n_batch().max(1) as usize;
        let mut batch = LlamaBatch::new(n_batch, 1);
        let decode_err = |e: llama_cpp_2::DecodeError| {
            err(ErrorClass::Other, format!("llama.cpp decode failed: {e}"))
        };
        let add_err = |e: llama_cpp_2::llama_batch::BatchAddError| {
            err(ErrorClass::Other, format!("llama.cpp batch: {e}"))
        };
        let rest = &tokens[keep..];
        for (chunk_index, chunk) in rest.chunks(n_batch).enumerate() {
            if reply.is_closed() {
                return Ok(None);
            }
            batch.clear();
            let base = keep + chunk_index * n_batch;
            for (i, &token) in chunk.iter().enumerate() {
                let pos = base + i;
                let last = pos + 1 == tokens.len();
                batch.add(token, pos as i32, &[0], last).map_err(add_err)?;
            }
            ctx.decode(&mut batch).map_err(decode_err)?;
            self.cached.extend_from_slice(chunk);
        }
        self.stats
            .prompt_tokens_decoded
            .fetch_add(rest.len() as u64, Ordering::Relaxed);
        let prefill = started.elapsed();

        let model = self.model;
        let vocab = model.vocab();
        let mut sampler = self.sampler(request.temperature);
        let mut pending: Vec<u8> = Vec::new();
        let mut generated = 0u32;
        let mut reason = FinishReason::Length;
        let mut logits_index = batch.n_tokens() - 1;
        while generated < request.max_tokens {
            if self.cached.len() >= n_ctx {
                break;
            }
            let token = sampler.sample(ctx, logits_index);
            if vocab.is_eog(token) {
                reason = FinishReason::Stop;
                break;
            }
            generated += 1;
            pending.extend_from_slice(&vocab.token_to_piece(token, false, None));
            let text = take_utf8(&mut pending);
            if !text.is_empty() && reply.blocking_send(Ok(ChatDelta::Text(text))).is_err() {
                return Ok(None);
            }
            // Holds invariant 3: no decode for a dropped stream.
            if reply.is_closed() {
                return Ok(None);
            }
            batch.clear();
            batch
                .add(token, self.cached.len() as i32, &[0], true)
                .map_err(add_err)?;
            ctx.decode(&mut batch).map_err(decode_err)?;
            self.cached.push(token);
            self.stats.tokens_generated.fetch_add(1, Ordering::Relaxed);
            logits_index = 0;
        }
        if !pending.is_empty() {
            let text = String::from_utf8_lossy(&pending).into_owned();
            if reply.blocking_send(Ok(ChatDelta::Text(text))).is_err() {
                return Ok(None);
            }
        }
        let total = started.elapsed();
        tracing::debug!(
            model = "llama",
            prompt_tokens = tokens.len(),
            reused = keep,
            prefill_ms = prefill.as_millis() as u64,
            generated,
            decode_tok_per_s = f64::from(generated) / (total - prefill).as_secs_f64().max(1e-9),
            "embedded generation finished"
        );
        Ok(Some(ChatDelta::Finished {
            reason,
            usage: Some(Usage {
                tokens_in: tokens.len() as u32,
                tokens_out: generated,
            }),
        }))
    }
}

/// Takes the longest valid UTF-8 prefix out of `bytes` (a token can end in
/// the middle of a character); invalid bytes that cannot start a character
/// are replaced.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let s = s.to_owned();
            bytes.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            // An incomplete character at the end: keep it for the next token.
            let valid = e.valid_up_to();
            let s = String::from_utf8_lossy(&bytes[..valid]).into_owned();
            bytes.drain(..valid);
            s
        }
        Err(_) => {
            let s = String::from_utf8_lossy(bytes).into_owned();
            bytes.clear();
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
