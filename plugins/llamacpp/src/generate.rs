//! Generation: continuous batching of every running request of a model in one llama.cpp context.
//!
//! One thread per loaded model (the *batcher*) owns the `llama_context` and its KV cache of
//! `parallel` sequences. Each `generate` call submits its request and waits for its events on its
//! own thread; the batcher, between two `llama_decode` calls, lets new requests join (each takes
//! the free sequence whose cached tokens share the longest prefix with its prompt) and finished
//! ones leave. One decode step carries the next token of every generating sequence, then prompt
//! tokens of the others up to the batch size — the scheme of llama.cpp's own server
//! (`tools/server/server.cpp`, `update_slots`), built on llama.cpp's batch API.
//!
//! Same request, same answer: for a request whose answer is meant to be reproducible (greedy, at
//! temperature 0, or a fixed `seed`) the last prompt token is always decoded in a step of its own
//! (for its sequence), so a prompt whose prefix came from the KV cache gets the same logits as the
//! same prompt evaluated from scratch when the request runs alone. That costs one more decode
//! step before the first token. A random draw (temperature above 0 and no seed) is not
//! reproducible anyway, so its last prompt token goes in the same step as the rest of its prompt,
//! as llama-server does for every request. What still varies, as with llama-server: when other
//! sequences share the decode step, the batch size changes which matrix kernels run, and the
//! numbers may differ in the last bits.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use r1_plugin_sdk::abi;
use r1_plugin_sdk::{FinishReason, GenerateRequest, GenerateResult, PluginError};

use crate::model::LlamaCppModel;

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

/// What the batcher sends back to a waiting `generate` call.
enum Event {
    /// A sampled token: its piece (raw bytes), id, and its log probabilities (a
    /// [`abi::json::TokenLogprobs`] JSON document) when the request asked for them.
    Piece(Vec<u8>, i32, Option<Vec<u8>>),
    /// A prompt batch of this request was evaluated and more remain (a chance to cancel).
    Progress,
    /// The end: usage and timings, or why it failed.
    Done(Result<GenerateResult, PluginError>),
}

/// A request handed to the batcher.
struct Submission {
    request: GenerateRequest,
    /// Built by the calling thread, so a request it cannot honour (a schema llama.cpp cannot
    /// convert) is refused before it reaches the batch.
    sampler: LlamaSampler,
    prompt: Vec<LlamaToken>,
    events: mpsc::Sender<Event>,
    /// Set by the waiting call when its host stopped the generation.
    cancel: Arc<AtomicBool>,
    /// When `generate` was called (time to first token counts from here).
    start: Instant,
}

/// The batcher of one loaded model: a thread that owns the llama.cpp context and runs every
/// generation of the model in shared decode steps. Dropping it stops and joins the thread.
pub(crate) struct Batcher {
    submit: Option<mpsc::Sender<Submission>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Sequences run at once.
    pub(crate) n_seq: u32,
    /// Context length of each sequence, in tokens.
    pub(crate) n_ctx_seq: u32,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the channel ends the thread once no generation runs (the host unloads only then).
        self.submit = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Batcher {
    /// Starts the batcher thread for `ctx` (made with `n_seq_max = n_seq` and a unified KV cache
    /// of at least `n_seq × n_ctx_seq` cells). `cancel_all` is the model's [`crate::CancelHandle`]
    /// flag.
    ///
    /// # Errors
    /// `backend` when the thread cannot be started.
    pub(crate) fn start(
        ctx: LlamaContext<'static>,
        model: &'static LlamaModel,
        path: String,
        n_seq: u32,
        n_ctx_seq: u32,
        cancel_all: Arc<AtomicBool>,
    ) -> Result<Batcher, PluginError> {
        let (submit, submissions) = mpsc::channel();
        let n_batch = ctx.n_batch().max(n_seq) as usize;
        let worker = Worker {
            ctx,
            model,
            path,
            n_batch,
            n_ctx_seq: n_ctx_seq as usize,
            slots: (0..n_seq as i32)
                .map(|seq| Slot {
                    seq,
                    cached: Vec::new(),
                    job: None,
                    last_used: 0,
                })
                .collect(),
            waiting: VecDeque::new(),
            cancel_all,
            tick: 0,
        };
        let thread = std::thread::Builder::new()
            .name("llamacpp-batch".into())
            .spawn(move || worker.run(submissions))
            .map_err(|e| PluginError::backend(format!("failed to start the batch thread: {e}")))?;
        Ok(Batcher {
            submit: Some(submit),
            thread: Some(thread),
            n_seq,
            n_ctx_seq,
        })
    }
}

/// One sequence of the KV cache.
struct Slot {
    seq: i32,
    /// The tokens whose keys and values are in the cache for this sequence, in position order.
    cached: Vec<LlamaToken>,
    /// The request running in it.
    job: Option<Job>,
    /// `Worker::tick` when its last request ended (the least recently used free slot is reused
    /// when no cached prefix matches).
    last_used: u64,
}

/// A request running in a slot.
struct Job {
    sub: Submission,
    /// Prompt tokens in the cache.
    fed: usize,
    /// Prompt tokens put into the current decode step.
    feeding: usize,
    /// The sampled token to decode in the next step.
    next: Option<LlamaToken>,
    /// Whether `next` is in the current decode step.
    next_in_batch: bool,
    /// Index in the current decode step whose logits are this request's.
    logits_at: Option<i32>,
    /// Whether the answer must not depend on the KV cache (greedy or seeded): then the last
    /// prompt token is decoded in a step of its own (see the module docs).
    reproducible: bool,
    result: GenerateResult,
    prompt_start: Instant,
    generation_start: Option<Instant>,
}

/// The batcher thread's state.
struct Worker {
    ctx: LlamaContext<'static>,
    model: &'static LlamaModel,
    path: String,
    n_batch: usize,
    n_ctx_seq: usize,
    slots: Vec<Slot>,
    /// Requests waiting for a free sequence (the host admits at most `n_seq`; this is a guard).
    waiting: VecDeque<Submission>,
    cancel_all: Arc<AtomicBool>,
    tick: u64,
}

impl Worker {
    fn run(mut self, submissions: mpsc::Receiver<Submission>) {
        // Made here: a `LlamaBatch` holds raw pointers and is not `Send`.
        let mut batch = LlamaBatch::new(self.n_batch, 1);
        loop {
            let busy = self.slots.iter().any(|s| s.job.is_some()) || !self.waiting.is_empty();
            if !busy {
                match submissions.recv() {
                    Ok(sub) => self.waiting.push_back(sub),
                    Err(_) => return,
                }
            }
            while let Ok(sub) = submissions.try_recv() {
                self.waiting.push_back(sub);
            }
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.assign();
                self.reap_cancelled();
                self.step(&mut batch);
            }));
            if let Err(panic) = step {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                self.fail_all(PluginError::new(
                    abi::R1_ERR_PANIC,
                    format!("plugin panicked while generating: {detail}"),
                ));
            }
        }
    }

    /// Ends every request with `error` and forgets the whole KV cache, whose state is unknown.
    fn fail_all(&mut self, error: PluginError) {
        self.ctx.clear_kv_cache();
        for slot in &mut self.slots {
            slot.cached.clear();
            if let Some(job) = slot.job.take() {
                let _ = job.sub.events.send(Event::Done(Err(error.clone())));
            }
        }
        for sub in self.waiting.drain(..) {
            let _ = sub.events.send(Event::Done(Err(error.clone())));
        }
    }

    /// Gives each waiting request a free sequence: the one whose cached tokens share the longest
    /// prefix with its prompt when that prefix is at least half the prompt, else the least
    /// recently used one (an empty one first), so a short shared prefix (the chat template's
    /// opening) does not evict another conversation's cache. The rule and the one-half threshold
    /// are llama-server's (`--slot-prompt-similarity`, default 0.5). The cache beyond the shared
    /// prefix is cut, and the last prompt token is always evaluated again (its logits are needed).
    fn assign(&mut self) {
        while !self.waiting.is_empty() {
            let Some(sub) = self.waiting.front() else {
                break;
            };
            let free = || {
                self.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.job.is_none())
            };
            let similar = free()
                .map(|(i, s)| (i, common_prefix(&s.cached, &sub.prompt)))
                .filter(|&(_, prefix)| prefix > 0 && 2 * prefix >= sub.prompt.len())
                .max_by_key(|&(_, prefix)| prefix)
                .map(|(i, _)| i);
            let best = similar.or_else(|| free().min_by_key(|(_, s)| s.last_used).map(|(i, _)| i));
            let Some(i) = best else {
                break;
            };
            let sub = self.waiting.pop_front().expect("checked non-empty");
            let slot = &mut self.slots[i];
            let keep = common_prefix(&slot.cached, &sub.prompt).min(sub.prompt.len() - 1);
            let reused = truncate(&mut self.ctx, slot, keep);
            let result = GenerateResult {
                finish_reason: FinishReason::Length,
                prompt_tokens: sub.prompt.len() as u32,
                cached_prompt_tokens: reused as u32,
                completion_tokens: 0,
                prompt_ms: 0.0,
                generation_ms: 0.0,
                time_to_first_token_ms: None,
            };
            let reproducible = sub.request.temperature <= 0.0 || sub.request.seed.is_some();
            slot.job = Some(Job {
                reproducible,
                sub,
                fed: reused,
                feeding: 0,
                next: None,
                next_in_batch: false,
                logits_at: None,
                result,
                prompt_start: Instant::now(),
                generation_start: None,
            });
        }
    }

    /// Ends requests whose host stopped them (or all of them, for the model's cancel handle).
    fn reap_cancelled(&mut self) {
        let all = self.slots.iter().any(|s| s.job.is_some())
            && self.cancel_all.swap(false, Ordering::SeqCst);
        for i in 0..self.slots.len() {
            let cancelled = self.slots[i]
                .job
                .as_ref()
                .is_some_and(|j| all || j.sub.cancel.load(Ordering::SeqCst));
            if cancelled {
                self.finish(i, FinishReason::Cancelled);
            }
        }
    }

    /// Ends the request in slot `i` with `reason` and frees the slot (its cache stays, for the
    /// next request with the same prefix).
    fn finish(&mut self, i: usize, reason: FinishReason) {
        self.tick += 1;
        let slot = &mut self.slots[i];
        slot.last_used = self.tick;
        if let Some(mut job) = slot.job.take() {
            job.result.finish_reason = reason;
            if job.generation_start.is_none() {
                job.result.prompt_ms = ms(job.prompt_start);
            }
            job.result.generation_ms = job.generation_start.map_or(0.0, ms);
            let _ = job.sub.events.send(Event::Done(Ok(job.result)));
        }
    }

    /// One decode step: the next token of every generating sequence, then prompt tokens of the
    /// others (up to the batch size); then sampling for every sequence whose logits it made.
    fn step(&mut self, batch: &mut LlamaBatch) {
        batch.clear();
        let mut n = 0usize;
        for slot in &mut self.slots {
            let Some(job) = slot.job.as_mut() else {
                continue;
            };
            job.feeding = 0;
            job.logits_at = None;
            job.next_in_batch = false;
            if let Some(token) = job.next {
                let pos = slot.cached.len() as i32;
                if batch.add(token, pos, &[slot.seq], true).is_ok() {
                    job.logits_at = Some(n as i32);
                    job.next_in_batch = true;
                    n += 1;
                }
            }
        }
        for slot in &mut self.slots {
            let Some(job) = slot.job.as_mut() else {
                continue;
            };
            let prompt = &job.sub.prompt;
            if job.next.is_some() || job.fed >= prompt.len() || n >= self.n_batch {
                continue;
            }
            let last = prompt.len() - 1;
            // A reproducible request feeds everything but the last token first; a random draw
            // feeds its last token with the rest.
            let end = if job.reproducible { last } else { prompt.len() };
            if job.fed < end {
                // As much as the step has room for.
                let take = (self.n_batch - n).min(end - job.fed);
                for (pos, &token) in prompt.iter().enumerate().skip(job.fed).take(take) {
                    let logits = pos == last;
                    if logits {
                        job.logits_at = Some((n + pos - job.fed) as i32);
                    }
                    let _ = batch.add(token, pos as i32, &[slot.seq], logits);
                }
                job.feeding = take;
                n += take;
            } else {
                // The last prompt token in a step of its own for this sequence (see the module
                // docs): its logits are the first token's.
                let _ = batch.add(prompt[last], last as i32, &[slot.seq], true);
                job.feeding = 1;
                job.logits_at = Some(n as i32);
                n += 1;
            }
        }
        if n == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(batch) {
            let message = format!("failed to evaluate tokens with model {}: {e}", self.path);
            // The cache of the sequences in this step is in an unknown state: forget them.
            for slot in &mut self.slots {
                let in_step = slot
                    .job
                    .as_ref()
                    .is_some_and(|j| j.feeding > 0 || j.next_in_batch);
                if in_step {
                    let _ = self
                        .ctx
                        .clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                    slot.cached.clear();
                    if let Some(job) = slot.job.take() {
                        let _ = job
                            .sub
                            .events
                            .send(Event::Done(Err(PluginError::backend(message.clone()))));
                    }
                }
            }
            return;
        }
        for i in 0..self.slots.len() {
            let reason = {
                let slot = &mut self.slots[i];
                let Some(job) = slot.job.as_mut() else {
                    continue;
                };
                if job.feeding > 0 {
                    let prompt = &job.sub.prompt;
                    slot.cached
                        .extend_from_slice(&prompt[job.fed..job.fed + job.feeding]);
                    job.fed += job.feeding;
                    if job.fed + 1 < prompt.len() {
                        // Between prompt batches the host may stop a long prompt (not before
                        // the last token alone: that step comes at once).
                        let _ = job.sub.events.send(Event::Progress);
                    }
                }
                if job.next_in_batch {
                    slot.cached.push(job.next.take().expect("in the step"));
                }
                let Some(idx) = job.logits_at else {
                    continue;
                };
                if job.generation_start.is_none() {
                    job.result.prompt_ms = ms(job.prompt_start);
                    job.generation_start = Some(Instant::now());
                }
                sample_one(job, &self.ctx, self.model, idx, self.n_ctx_seq)
            };
            if let Some(reason) = reason {
                self.finish(i, reason);
            }
        }
    }
}

/// Samples the next token of `job` from the logits at `idx`, hands its piece to the waiting call
/// and says how the request ends, if it does.
fn sample_one(
    job: &mut Job,
    ctx: &LlamaContext<'static>,
    model: &LlamaModel,
    idx: i32,
    n_ctx_seq: usize,
) -> Option<FinishReason> {
    let vocab = model.vocab();
    let request = &job.sub.request;
    let n_prompt = job.sub.prompt.len();
    let max_tokens = request.max_tokens as usize;
    let completion = job.result.completion_tokens as usize;
    if completion >= max_tokens || n_prompt + completion >= n_ctx_seq {
        return Some(FinishReason::Length);
    }
    let token = job.sub.sampler.sample(ctx, idx);
    if request.stop_tokens.contains(&token.0) || (!request.ignore_eos && vocab.is_eog(token)) {
        return Some(FinishReason::Stop);
    }
    let mut piece = Vec::with_capacity(16);
    vocab.token_to_piece_into(token, &mut piece, false, None);
    let logprobs = request
        .logprobs
        .map(|top| token_logprobs(ctx.get_logits_ith(idx), token, top as usize, model));
    if job.result.time_to_first_token_ms.is_none() {
        job.result.time_to_first_token_ms = Some(ms(job.sub.start));
    }
    job.result.completion_tokens += 1;
    if job
        .sub
        .events
        .send(Event::Piece(piece, token.0, logprobs))
        .is_err()
    {
        // The waiting call is gone.
        return Some(FinishReason::Cancelled);
    }
    let completion = job.result.completion_tokens as usize;
    if completion >= max_tokens || n_prompt + completion >= n_ctx_seq {
        return Some(FinishReason::Length);
    }
    job.next = Some(token);
    None
}

/// The log probabilities of `token` and of the `top` most likely tokens under `logits` (one
/// position's raw logits, `n_vocab` long), as a [`abi::json::TokenLogprobs`] JSON document: the
/// log-softmax of the logits before any sampler (llama-server's `n_probs` without
/// `post_sampling_probs`, vLLM's default), computed in f64. Ties in the top list are broken by
/// the lower id.
fn token_logprobs(logits: &[f32], token: LlamaToken, top: usize, model: &LlamaModel) -> Vec<u8> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    let logprob = |id: usize| (logits[id] as f64 - log_z) as f32;
    let mut best: Vec<usize> = Vec::with_capacity(top + 1);
    if top > 0 {
        // One pass keeping the `top` best, sorted (top ≤ 20, so insertion is cheap).
        for (id, &l) in logits.iter().enumerate() {
            if best.len() == top && l <= logits[best[top - 1]] {
                continue;
            }
            let at = best.partition_point(|&b| logits[b] >= l);
            best.insert(at, id);
            best.truncate(top);
        }
    }
    let vocab = model.vocab();
    let doc = abi::json::TokenLogprobs {
        logprob: logprob(token.0 as usize),
        top: best
            .into_iter()
            .map(|id| {
                let mut bytes = Vec::with_capacity(16);
                vocab.token_to_piece_into(LlamaToken(id as i32), &mut bytes, false, None);
                abi::json::TopLogprob {
                    id: id as i32,
                    bytes,
                    logprob: logprob(id),
                }
            })
            .collect(),
    };
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Keeps the first `keep` cached tokens of `slot`'s sequence and removes the rest from the KV
/// cache. Returns how many were kept: `keep`, or 0 when llama.cpp cannot cut the sequence there
/// (recurrent models), in which case the sequence is cleared.
fn truncate(ctx: &mut LlamaContext<'static>, slot: &mut Slot, keep: usize) -> usize {
    if keep >= slot.cached.len() {
        return slot.cached.len();
    }
    let kept = match u32::try_from(keep) {
        Ok(p0) if ctx.kv_cache_seq_rm(slot.seq, Some(p0), None).is_ok() => keep,
        _ => {
            let _ = ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
            0
        }
    };
    slot.cached.truncate(kept);
    kept
}

impl LlamaCppModel {
    /// See `Model::generate` and [`crate::LlamaCppPlugin`]: validates the request, hands it to the
    /// model's batcher and relays its tokens to `on_token` on this thread. When `on_token` returns
    /// false the request is stopped at the next decode step and ends `Cancelled`.
    pub(crate) fn generate(
        &self,
        request: GenerateRequest,
        on_token: &mut dyn FnMut(&[u8], i32) -> bool,
    ) -> Result<GenerateResult, PluginError> {
        let start = Instant::now();
        let Some(batcher) = self.batcher.as_ref() else {
            return Err(PluginError::unsupported(format!(
                "model {} was loaded vocab-only; generation needs the weights",
                self.path
            )));
        };
        let prompt = validate(&request, self.model().vocab().n_tokens())?;
        let n_ctx = batcher.n_ctx_seq as usize;
        if prompt.len() >= n_ctx {
            return Err(PluginError::context_exceeded(format!(
                "the prompt has {} tokens but the context of model {} holds {n_ctx}; the prompt \
                 must be shorter than the context",
                prompt.len(),
                self.path
            )));
        }
        let sampler = sampler(self.model(), &request, n_ctx as i32)?;
        let (events, receiver) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let submission = Submission {
            request,
            sampler,
            prompt,
            events,
            cancel: Arc::clone(&cancel),
            start,
        };
        let stopped_thread = || {
            PluginError::backend(format!(
                "the batch thread of model {} has stopped",
                self.path
            ))
        };
        batcher
            .submit
            .as_ref()
            .ok_or_else(stopped_thread)?
            .send(submission)
            .map_err(|_| stopped_thread())?;
        let mut stopped = false;
        let mut delivered = 0u32;
        loop {
            match receiver.recv() {
                Ok(Event::Piece(piece, id, logprobs)) => {
                    if let Some(doc) = logprobs.filter(|_| !stopped) {
                        if !on_token(&doc, abi::R1_TOKEN_LOGPROBS) {
                            stopped = true;
                            cancel.store(true, Ordering::SeqCst);
                        }
                    }
                    if !stopped {
                        delivered += 1;
                        if !on_token(&piece, id) {
                            stopped = true;
                            cancel.store(true, Ordering::SeqCst);
                        }
                    }
                }
                Ok(Event::Progress) => {
                    if !stopped && !on_token(&[], abi::R1_TOKEN_PROMPT_PROGRESS) {
                        stopped = true;
                        cancel.store(true, Ordering::SeqCst);
                    }
                }
                Ok(Event::Done(result)) => {
                    let mut result = result?;
                    if stopped {
                        // Tokens sampled after the host said stop were never delivered.
                        result.finish_reason = FinishReason::Cancelled;
                        result.completion_tokens = delivered;
                    }
                    return Ok(result);
                }
                Err(_) => return Err(stopped_thread()),
            }
        }
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
