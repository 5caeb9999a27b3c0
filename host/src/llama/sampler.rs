//! Sampler chains and KV snapshots, kept on the inference thread by id.
//!
//! A chain is built lazily at its first `sample`, when the vocabulary size is
//! known, after checking every parameter (llama.cpp would assert on some bad
//! values). The chain follows llama.cpp's common order: logit bias →
//! repetition penalty → top-k → top-p → min-p → temperature → random choice;
//! or bias → penalty → greedy when the temperature is 0.

use std::collections::HashMap;

use llama_cpp_2::context::session::SeqState;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use super::LlamaError;
use super::loaded::{Loaded, check_tokens};

/// A sampler configuration as the guest sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSpec {
    /// Temperature (0 = greedy).
    pub temperature: f32,
    /// Top-k (≤ 0 = off).
    pub top_k: i32,
    /// Top-p (≥ 1 = off).
    pub top_p: f32,
    /// Min-p (≤ 0 = off).
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    pub repeat_penalty: f32,
    /// Penalty window.
    pub repeat_last_n: i32,
    /// Seed.
    pub seed: u32,
    /// Logit biases.
    pub logit_bias: Vec<(i32, f32)>,
}

impl SamplerSpec {
    fn validate(&self, n_vocab: i32) -> Result<(), LlamaError> {
        let bad = |what: &str| Err(LlamaError::InvalidArgument(format!("sampler: {what}")));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature must be a finite number ≥ 0");
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0) {
            return bad("top-p must be > 0");
        }
        if !(self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p)) {
            return bad("min-p must be within 0..=1");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat-penalty must be > 0");
        }
        if self.repeat_last_n < -1 {
            return bad("repeat-last-n must be ≥ -1");
        }
        if self.logit_bias.len() > n_vocab as usize {
            return bad("more logit biases than tokens");
        }
        let ids: Vec<i32> = self.logit_bias.iter().map(|(t, _)| *t).collect();
        check_tokens(&ids, n_vocab)?;
        if self.logit_bias.iter().any(|(_, b)| b.is_nan()) {
            return bad("logit bias is NaN");
        }
        Ok(())
    }

    fn build(&self, n_vocab: i32) -> Result<LlamaSampler, LlamaError> {
        self.validate(n_vocab)?;
        let mut chain = Vec::new();
        if !self.logit_bias.is_empty() {
            let biases: Vec<LlamaLogitBias> =
                self.logit_bias.iter().map(|&(t, b)| LlamaLogitBias::new(LlamaToken(t), b)).collect();
            chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
        }
        if self.repeat_penalty != 1.0 && self.repeat_last_n != 0 {
            chain.push(LlamaSampler::penalties(n_vocab, self.repeat_last_n, self.repeat_penalty, 0.0, 0.0));
        }
        if self.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if self.top_k > 0 {
                chain.push(LlamaSampler::top_k(self.top_k));
            }
            if self.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(self.min_p, 1));
            }
            chain.push(LlamaSampler::temp(self.temperature));
            chain.push(LlamaSampler::dist(self.seed));
        }
        Ok(LlamaSampler::chain_simple(chain))
    }
}

/// Most samplers a guest may hold at once (a guest cannot exhaust host memory with them).
const MAX_SAMPLERS: usize = 256;
/// Most KV snapshots a guest may hold at once (each is a copy of a sequence's KV).
const MAX_SNAPSHOTS: usize = 16;

struct Entry {
    spec: SamplerSpec,
    chain: Option<LlamaSampler>,
    /// Tokens accepted before the chain was built, replayed into it.
    history: Vec<i32>,
}

/// Samplers and snapshots on the inference thread.
#[derive(Default)]
pub struct Samplers {
    next_id: u32,
    samplers: HashMap<u32, Entry>,
    snapshots: HashMap<u32, SeqState>,
}

impl Samplers {
    fn fresh_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Register a sampler configuration; returns its id.
    pub fn add(&mut self, spec: SamplerSpec) -> Result<u32, LlamaError> {
        if self.samplers.len() >= MAX_SAMPLERS {
            return Err(LlamaError::InvalidArgument(format!("more than {MAX_SAMPLERS} live samplers")));
        }
        let id = self.fresh_id();
        self.samplers.insert(id, Entry { spec, chain: None, history: Vec::new() });
        Ok(id)
    }

    /// Forget a sampler.
    pub fn remove(&mut self, id: u32) {
        self.samplers.remove(&id);
    }

    fn entry(&mut self, id: u32) -> Result<&mut Entry, LlamaError> {
        self.samplers.get_mut(&id).ok_or_else(|| LlamaError::InvalidArgument(format!("unknown sampler {id}")))
    }

    /// Sample from the last decoded logits (and record the token).
    pub fn sample(&mut self, id: u32, loaded: &mut Loaded<'_>) -> Result<i32, LlamaError> {
        if !loaded.has_logits {
            return Err(LlamaError::InvalidArgument("nothing to sample from: decode a token first".into()));
        }
        let n_vocab = loaded.n_vocab();
        let entry = self.entry(id)?;
        if entry.chain.is_none() {
            let mut chain = entry.spec.build(n_vocab)?;
            check_tokens(&entry.history, n_vocab)?;
            chain.accept_many(entry.history.drain(..).map(LlamaToken));
            entry.chain = Some(chain);
        }
        let chain = entry.chain.as_mut().ok_or(LlamaError::NoModel)?;
        let token = chain.sample(&loaded.ctx, -1);
        Ok(token.0)
    }

    /// Record tokens in a sampler's history.
    pub fn accept(&mut self, id: u32, tokens: &[i32], n_vocab: Option<i32>) -> Result<(), LlamaError> {
        let entry = self.entry(id)?;
        match (&mut entry.chain, n_vocab) {
            (Some(chain), Some(n)) => {
                check_tokens(tokens, n)?;
                chain.accept_many(tokens.iter().map(|&t| LlamaToken(t)));
            }
            _ => entry.history.extend_from_slice(tokens),
        }
        Ok(())
    }

    /// Reset a sampler's history and random state.
    pub fn reset(&mut self, id: u32) -> Result<(), LlamaError> {
        let entry = self.entry(id)?;
        entry.history.clear();
        if let Some(chain) = &mut entry.chain {
            chain.reset();
        }
        Ok(())
    }

    /// Keep a snapshot; returns its id.
    pub fn add_snapshot(&mut self, state: SeqState) -> Result<u32, LlamaError> {
        if self.snapshots.len() >= MAX_SNAPSHOTS {
            return Err(LlamaError::InvalidArgument(format!("more than {MAX_SNAPSHOTS} live KV snapshots")));
        }
        let id = self.fresh_id();
        self.snapshots.insert(id, state);
        Ok(id)
    }

    /// A snapshot by id.
    pub fn snapshot(&self, id: u32) -> Result<&SeqState, LlamaError> {
        self.snapshots.get(&id).ok_or_else(|| LlamaError::InvalidArgument(format!("unknown snapshot {id}")))
    }

    /// Forget a snapshot.
    pub fn remove_snapshot(&mut self, id: u32) {
        self.snapshots.remove(&id);
    }
}
