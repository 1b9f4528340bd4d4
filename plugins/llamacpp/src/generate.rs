//! Generation: prompt evaluation with KV-cache prefix reuse, the sampler chain and the token loop.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::Instant;

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use r1_plugin_sdk::{FinishReason, GenerateRequest, GenerateResult, PluginError};

use crate::model::{LlamaCppModel, Session};

/// The KV-cache sequence every request uses (one sequence per model).
const SEQ: i32 = 0;

/// Builds the sampler chain: the JSON-schema grammar (if `json_schema` is set; lazy, from
/// `constrain_after` on, when that is set), the logit biases (if any), the penalties (presence,
/// frequency, repetition over the last `penalty_last_n` tokens, if any differs from "off"), then
/// greedy when `temperature <= 0`; otherwise top-k (if > 0), top-p (if < 1), min-p (if > 0),
/// temperature, then a seeded draw (`seed`, or a random one). `n_ctx` is what
/// `penalty_last_n: -1` means.
///
/// # Errors
/// `R1_ERR_INVALID_ARGUMENT` naming `response_format` when llama.cpp cannot turn the schema into
/// a grammar.
pub fn sampler(
    model: &LlamaModel,
    request: &GenerateRequest,
    n_ctx: i32,
) -> Result<LlamaSampler, PluginError> {
    let n_vocab = model.vocab().n_tokens();
    let mut chain = Vec::with_capacity(8);
    if let Some(schema) = &request.json_schema {
        chain.push(crate::grammar::json_schema_sampler(
            model,
            schema,
            request.json_wrap.as_ref(),
            request.constrain_after.as_deref(),
        )?);
    }
    if !request.logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = request
            .logit_bias
            .iter()
            .map(|&(id, bias)| LlamaLogitBias::new(LlamaToken(id), bias))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if request.has_penalties() {
        let last_n = if request.penalty_last_n < 0 {
            n_ctx
        } else {
            request.penalty_last_n
        };
        chain.push(LlamaSampler::penalties(
            n_vocab,
            last_n,
            request.repeat_penalty,
            request.frequency_penalty,
            request.presence_penalty,
        ));
    }
    if request.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
        return Ok(LlamaSampler::chain(chain, true));
    }
    if request.top_k > 0 {
        chain.push(LlamaSampler::top_k(request.top_k));
    }
    if request.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(request.top_p, 1));
    }
    if request.min_p > 0.0 {
        chain.push(LlamaSampler::min_p(request.min_p, 1));
    }
    chain.push(LlamaSampler::temp(request.temperature));
    let seed = request
        .seed
        .unwrap_or_else(|| RandomState::new().hash_one(Instant::now()) as u32);
    chain.push(LlamaSampler::dist(seed));
    Ok(LlamaSampler::chain(chain, true))
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn validate(request: &GenerateRequest, n_vocab: i32) -> Result<Vec<LlamaToken>, PluginError> {
    r1_plugin_sdk::validate_request(request, n_vocab)?;
    Ok(request
        .prompt_tokens
        .iter()
        .copied()
        .map(LlamaToken)
        .collect())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Session {
    /// Decodes `batch`; on failure forgets the whole KV cache, whose state is then unknown.
    fn decode(&mut self, batch: &mut LlamaBatch, path: &str) -> Result<(), PluginError> {
        self.ctx.decode(batch).map_err(|e| {
            self.ctx.clear_kv_cache();
            self.cached.clear();
            PluginError::backend(format!("failed to evaluate tokens with model {path}: {e}"))
        })
    }

    /// Keeps the first `keep` cached tokens and removes the rest from the KV cache. Returns how
    /// many were kept: `keep`, or 0 when llama.cpp cannot cut the sequence there (recurrent
    /// models), in which case the whole cache is cleared.
    fn truncate_cache(&mut self, keep: usize) -> usize {
        if keep >= self.cached.len() {
            return self.cached.len();
        }
        let kept = match u32::try_from(keep) {
            Ok(p0) if self.ctx.kv_cache_seq_rm(SEQ, Some(p0), None).is_ok() => keep,
            _ => {
                self.ctx.clear_kv_cache();
                0
            }
        };
        self.cached.truncate(kept);
        kept
    }
}

impl LlamaCppModel {
    /// See `Model::generate` and [`crate::LlamaCppPlugin`].
    pub(crate) fn generate(
        &mut self,
        request: GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, PluginError> {
        let result = self.run(&request, on_token);
        // A cancellation requested through the handle applies to this generation only.
        self.cancel.store(false, Ordering::SeqCst);
        result
    }

    fn run(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, PluginError> {
        let start = Instant::now();
        let cancel = std::sync::Arc::clone(&self.cancel);
        let cancelled = || cancel.load(Ordering::SeqCst);
        let (model, session, path) = self.parts_mut();
        let session = session.ok_or_else(|| {
            PluginError::unsupported(format!(
                "model {path} was loaded vocab-only; generation needs the weights"
            ))
        })?;
        let target = Target {
            model,
            session,
            path,
        };
        target.generate(request, on_token, start, &cancelled)
    }
}

/// What one generation works on, borrowed from the [`LlamaCppModel`].
struct Target<'a> {
    model: &'a LlamaModel,
    session: &'a mut Session,
    path: &'a str,
}

impl Target<'_> {
    /// The generation proper: `start` is when the call began (for the time to first token).
    fn generate(
        self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
        start: Instant,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GenerateResult, PluginError> {
        let Target {
            model,
            session,
            path,
        } = self;
        let vocab = model.vocab();
        let prompt = validate(request, vocab.n_tokens())?;
        let n_ctx = session.ctx.n_ctx() as usize;
        if prompt.len() >= n_ctx {
            return Err(PluginError::context_exceeded(format!(
            "the prompt has {} tokens but the context of model {path} holds {n_ctx}; the prompt \
             must be shorter than the context",
            prompt.len()
        )));
        }
        let mut sampler = sampler(model, request, n_ctx as i32)?;

        // Reuse the cached prefix, but always evaluate the last prompt token: its logits are needed.
        let reused =
            session.truncate_cache(common_prefix(&session.cached, &prompt).min(prompt.len() - 1));

        let mut result = GenerateResult {
            finish_reason: FinishReason::Length,
            prompt_tokens: prompt.len() as u32,
            cached_prompt_tokens: reused as u32,
            completion_tokens: 0,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            time_to_first_token_ms: None,
        };

        let n_batch = session.n_batch as usize;
        let mut batch = LlamaBatch::new(n_batch, 1);
        let prompt_start = Instant::now();
        for chunk_start in (reused..prompt.len()).step_by(n_batch) {
            if cancelled() {
                result.finish_reason = FinishReason::Cancelled;
                result.prompt_ms = ms(prompt_start);
                return Ok(result);
            }
            let chunk_end = (chunk_start + n_batch).min(prompt.len());
            batch.clear();
            for (pos, token) in prompt.iter().enumerate().take(chunk_end).skip(chunk_start) {
                batch
                    .add(*token, pos as i32, &[SEQ], pos + 1 == prompt.len())
                    .map_err(|e| PluginError::backend(format!("failed to fill a batch: {e}")))?;
            }
            session.decode(&mut batch, path)?;
            session
                .cached
                .extend_from_slice(&prompt[chunk_start..chunk_end]);
            // Between batches, let the host stop a long prompt (a prompt-progress call, not a token).
            if chunk_end < prompt.len()
                && !on_token(&[], r1_plugin_sdk::abi::R1_TOKEN_PROMPT_PROGRESS)
            {
                result.finish_reason = FinishReason::Cancelled;
                result.prompt_ms = ms(prompt_start);
                return Ok(result);
            }
        }
        result.prompt_ms = ms(prompt_start);

        let generation_start = Instant::now();
        let mut piece = Vec::with_capacity(16);
        let max_tokens = request.max_tokens as usize;
        result.finish_reason = loop {
            let completion = result.completion_tokens as usize;
            if completion >= max_tokens || prompt.len() + completion >= n_ctx {
                break FinishReason::Length;
            }
            if cancelled() {
                break FinishReason::Cancelled;
            }
            let token = sampler.sample(&session.ctx, -1);
            let stop = request.stop_tokens.contains(&token.0)
                || (!request.ignore_eos && vocab.is_eog(token));
            if stop {
                break FinishReason::Stop;
            }
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            if result.time_to_first_token_ms.is_none() {
                result.time_to_first_token_ms = Some(ms(start));
            }
            result.completion_tokens += 1;
            if !on_token(&piece, token.0) {
                break FinishReason::Cancelled;
            }
            let completion = result.completion_tokens as usize;
            if completion >= max_tokens || prompt.len() + completion >= n_ctx {
                break FinishReason::Length;
            }
            batch.clear();
            let pos = session.cached.len();
            batch
                .add(token, pos as i32, &[SEQ], true)
                .map_err(|e| PluginError::backend(format!("failed to fill a batch: {e}")))?;
            session.decode(&mut batch, path)?;
            session.cached.push(token);
        };
        result.generation_ms = ms(generation_start);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_counts_equal_leading_tokens() {
        let t = |v: &[i32]| v.iter().copied().map(LlamaToken).collect::<Vec<_>>();
        assert_eq!(common_prefix(&t(&[1, 2, 3]), &t(&[1, 2, 4])), 2);
        assert_eq!(common_prefix(&t(&[]), &t(&[1])), 0);
        assert_eq!(common_prefix(&t(&[1, 2]), &t(&[1, 2, 3])), 2);
        assert_eq!(common_prefix(&t(&[5]), &t(&[1])), 0);
    }
}
