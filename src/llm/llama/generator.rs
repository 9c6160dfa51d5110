//! The generation thread's state: prompt rendering, the KV cache kept in
//! step with `cached` (the parent module's invariant 4), prefill, warm-up
//! and token generation.
//!
//! # Invariants
//! 1. Prompt tokens are decoded in chunks of at most `prefill_chunk`
//!    tokens, and the caller's `closed` check runs before every chunk and
//!    every generated token, so a dropped stream or abandoned prefill stops
//!    within one chunk or one token (the parent's invariant 3).
//! 2. A prefill never shortens the cache: a prefix already cached (or a
//!    prefix of what is cached) costs nothing and keeps the longer history.
//! 3. A request ending with an assistant message is a continuation (llm
//!    invariant 3): the template renders the messages before it with the
//!    assistant's opening, and its text follows unclosed, so generation
//!    continues it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::{err, LlamaOptions, LlamaStats, Reply, VOICE_SYSTEM_PROMPT};
use crate::llm::{
    ChatDelta, ChatMessage, ChatRequest, ErrorClass, FinishReason, LlmError, Prefilled, Role, Usage,
};

pub(super) struct Generator<'m> {
    pub(super) model: &'m LlamaModel,
    pub(super) template: LlamaChatTemplate,
    pub(super) options: LlamaOptions,
    pub(super) stats: Arc<LlamaStats>,
    /// Holds the parent's invariant 4.
    pub(super) cached: Vec<LlamaToken>,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn decode_err(e: llama_cpp_2::DecodeError) -> LlmError {
    err(ErrorClass::Other, format!("llama.cpp decode failed: {e}"))
}

fn add_err(e: llama_cpp_2::llama_batch::BatchAddError) -> LlmError {
    err(ErrorClass::Other, format!("llama.cpp batch: {e}"))
}

impl Generator<'_> {
    /// The chat template applied to `messages` (the voice system prompt
    /// first when they have none), tokenised; with the assistant's opening
    /// when `generation` is set, else ending after the last message (a
    /// prefix of any later prompt that adds messages).
    fn render(
        &self,
        messages: &[ChatMessage],
        generation: bool,
    ) -> Result<Vec<LlamaToken>, LlmError> {
        // Holds invariant 3.
        let (messages, partial) = match messages.split_last() {
            Some((last, rest)) if generation && last.role == Role::Assistant => {
                (rest, Some(last.content.replace('\0', "")))
            }
            _ => (messages, None),
        };
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
        let mut prompt = self
            .model
            .apply_chat_template(&self.template, &chat, generation)
            .map_err(|e| err(ErrorClass::Client, format!("chat template failed: {e}")))?;
        if let Some(partial) = partial {
            prompt.push_str(&partial);
        }
        Ok(self.model.vocab().tokenize(prompt.as_bytes(), true, true))
    }

    /// Renders the prompt, dropping the oldest non-system messages until it
    /// fits (holds the parent's invariant 5).
    fn prompt(&self, request: &ChatRequest, n_ctx: usize) -> Result<Vec<LlamaToken>, LlmError> {
        let budget = n_ctx.saturating_sub(request.max_tokens as usize).max(1);
        let mut messages = request.messages.clone();
        loop {
            let tokens = self.render(&messages, true)?;
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
        let mut chain = Vec::new();
        if self.options.repeat_penalty > 1.0 {
            chain.push(LlamaSampler::penalties(
                self.model.n_vocab(),
                self.options.repeat_last_n,
                self.options.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        if temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
            return LlamaSampler::chain_simple(chain);
        }
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

    /// Brings the KV cache to hold `tokens`, reusing the longest common
    /// prefix. With `logits`, at least the last token is decoded again so
    /// its logits exist, and the index of those logits in `batch` is
    /// returned. Without, a cache that already starts with `tokens` is left
    /// as it is (invariant 2). `Ok(None)`: `closed` said stop (invariant 1).
    fn load(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch,
        tokens: &[LlamaToken],
        logits: bool,
        closed: &dyn Fn() -> bool,
    ) -> Result<Option<(usize, i32)>, LlmError> {
        let common = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        if !logits && common == tokens.len() {
            self.stats
                .prompt_tokens_reused
                .fetch_add(common as u64, Ordering::Relaxed);
            return Ok(Some((common, 0)));
        }
        let mut keep = if logits {
            common.min(tokens.len().saturating_sub(1))
        } else {
            common
        };
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

        let chunk_len = (ctx.n_batch().max(1) as usize).min(self.options.prefill_chunk.max(1));
        let rest = &tokens[keep..];
        let mut logits_index = 0;
        for (chunk_index, chunk) in rest.chunks(chunk_len).enumerate() {
            if closed() {
                return Ok(None);
            }
            batch.clear();
            let base = keep + chunk_index * chunk_len;
            for (i, &token) in chunk.iter().enumerate() {
                let pos = base + i;
                let last = logits && pos + 1 == tokens.len();
                batch.add(token, pos as i32, &[0], last).map_err(add_err)?;
            }
            ctx.decode(batch).map_err(decode_err)?;
            self.cached.extend_from_slice(chunk);
            logits_index = batch.n_tokens() - 1;
        }
        self.stats
            .prompt_tokens_decoded
            .fetch_add(rest.len() as u64, Ordering::Relaxed);
        Ok(Some((keep, logits_index)))
    }

    /// Loads the prefix `messages` into the cache (warm start).
    pub(super) fn prefill(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        messages: &[ChatMessage],
        closed: &dyn Fn() -> bool,
    ) -> Result<Option<Prefilled>, LlmError> {
        let tokens = self.render(messages, false)?;
        let n_ctx = ctx.n_ctx() as usize;
        if tokens.len() + 64 > n_ctx {
            // Too long to be worth keeping: the request will trim it anyway.
            return Ok(Some(Prefilled {
                tokens: tokens.len() as u32,
                reused: 0,
            }));
        }
        let mut batch = LlamaBatch::new(ctx.n_batch().max(1) as usize, 1);
        Ok(self
            .load(ctx, &mut batch, &tokens, false, closed)?
            .map(|(reused, _)| Prefilled {
                tokens: tokens.len() as u32,
                reused: reused as u32,
            }))
    }

    /// Runs every graph once (a prompt batch and a one-token step), then
    /// empties the cache: a fresh context's first decodes are slower
    /// (buffers, graph building, weights paged in), and that belongs at
    /// load, not in the first turn.
    pub(super) fn warm_up(&mut self, ctx: &mut LlamaContext<'_>) -> Result<(), LlmError> {
        let tokens = self.render(&[ChatMessage::user("Hello.")], true)?;
        let mut batch = LlamaBatch::new(ctx.n_batch().max(1) as usize, 1);
        if let Some((_, index)) = self.load(ctx, &mut batch, &tokens, true, &|| false)? {
            let mut sampler = LlamaSampler::greedy();
            let token = sampler.sample(ctx, index);
            batch.clear();
            batch
                .add(token, self.cached.len() as i32, &[0], true)
                .map_err(add_err)?;
            ctx.decode(&mut batch).map_err(decode_err)?;
        }
        ctx.clear_kv_cache();
        self.cached.clear();
        Ok(())
    }

    /// Runs one request; `Ok(None)` when the stream was dropped (the
    /// parent's invariant 3).
    pub(super) fn generate(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        request: &ChatRequest,
        reply: &Reply,
    ) -> Result<Option<ChatDelta>, LlmError> {
        let n_ctx = ctx.n_ctx() as usize;
        let tokens = self.prompt(request, n_ctx)?;
        let started = Instant::now();
        let mut batch = LlamaBatch::new(ctx.n_batch().max(1) as usize, 1);
        let closed = || reply.is_closed();
        let Some((keep, mut logits_index)) = self.load(ctx, &mut batch, &tokens, true, &closed)?
        else {
            return Ok(None);
        };
        let prefill = started.elapsed();

        let model = self.model;
        let vocab = model.vocab();
        let mut sampler = self.sampler(request.temperature);
        let mut pending: Vec<u8> = Vec::new();
        let mut generated = 0u32;
        let mut reason = FinishReason::Length;
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
            // Holds the parent's invariant 3: no decode for a dropped stream.
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
pub(super) fn take_utf8(bytes: &mut Vec<u8>) -> String {
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
