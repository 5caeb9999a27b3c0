//! Sampler chains and KV snapshots the guest holds in the engine,
//! by id, counted against the host's limits.
//!
//! A chain follows llama.cpp's common order: logit bias → repetition penalty
//! → top-k → top-p → min-p → temperature → random choice; or bias → penalty →
//! greedy when the temperature is 0. Every parameter is checked first:
//! llama.cpp would allocate a penalty window of any size (268 M tokens is
//! 1 GiB; more throws) and asserts on a chain that never selects a token.

use std::collections::HashMap;

use super::LlamaError;
use super::context::check_tokens;
use super::ffi::{Chain, Link};
use crate::bindings::inference::SamplerConfig;
use crate::limits::Limits;

/// Host bytes a chain costs beyond its parts.
const CHAIN_BASE: u64 = 4 << 10;

/// The links of a chain for `config`, and the host bytes it will hold.
pub fn chain_links(c: &SamplerConfig, n_vocab: i32, n_ctx_seq: u32) -> Result<(Vec<Link>, u64), LlamaError> {
    let bad = |what: String| Err(LlamaError::InvalidArgument(format!("sampler: {what}")));
    if !c.temperature.is_finite() || c.temperature < 0.0 {
        return bad("temperature must be a finite number ≥ 0".into());
    }
    if c.top_k < 0 || c.top_k > n_vocab {
        return bad(format!("top-k {} is outside 0..={n_vocab} (the vocabulary)", c.top_k));
    }
    if !(c.top_p.is_finite() && c.top_p > 0.0) {
        return bad("top-p must be > 0".into());
    }
    if !(c.min_p.is_finite() && (0.0..=1.0).contains(&c.min_p)) {
        return bad("min-p must be within 0..=1".into());
    }
    if !(c.repeat_penalty.is_finite() && c.repeat_penalty > 0.0) {
        return bad("repeat-penalty must be > 0".into());
    }
    if c.repeat_last_n > n_ctx_seq {
        return bad(format!("repeat-last-n {} is more than the context ({n_ctx_seq})", c.repeat_last_n));
    }
    if c.logit_bias.len() > n_vocab as usize {
        return bad("more logit biases than tokens".into());
    }
    let ids: Vec<i32> = c.logit_bias.iter().map(|(t, _)| *t).collect();
    check_tokens(&ids, n_vocab)?;
    if c.logit_bias.iter().any(|(_, b)| b.is_nan()) {
        return bad("a logit bias is NaN".into());
    }
    let mut links = Vec::new();
    if !c.logit_bias.is_empty() {
        links.push(Link::LogitBias(c.logit_bias.clone()));
    }
    let penalty = c.repeat_penalty != 1.0 && c.repeat_last_n != 0;
    if penalty {
        links.push(Link::Penalties { last_n: c.repeat_last_n as i32, repeat: c.repeat_penalty });
    }
    if c.temperature <= 0.0 {
        links.push(Link::Greedy);
    } else {
        if c.top_k > 0 {
            links.push(Link::TopK(c.top_k));
        }
        if c.top_p < 1.0 {
            links.push(Link::TopP(c.top_p));
        }
        if c.min_p > 0.0 {
            links.push(Link::MinP(c.min_p));
        }
        links.push(Link::Temp(c.temperature));
        links.push(Link::Dist(c.seed));
    }
    // The penalty keeps a ring of the window and a count per token seen in it.
    let window = if penalty { c.repeat_last_n as u64 * 24 } else { 0 };
    Ok((links, CHAIN_BASE + window + c.logit_bias.len() as u64 * 8))
}

/// What the guest holds in the engine: sampler chains and KV
/// snapshots, within `limits` (counts, and host bytes in all).
pub struct HostObjects {
    next_id: u32,
    chains: HashMap<u32, (Chain, u64)>,
    snapshots: HashMap<u32, Vec<u8>>,
    held: u64,
    limits: Limits,
}

impl HostObjects {
    /// An empty table under `limits`.
    pub fn new(limits: Limits) -> Self {
        HostObjects { next_id: 0, chains: HashMap::new(), snapshots: HashMap::new(), held: 0, limits }
    }

    /// Host bytes held now.
    pub fn held(&self) -> u64 {
        self.held
    }

    fn reserve(&mut self, bytes: u64) -> Result<u32, LlamaError> {
        if self.held.saturating_add(bytes) > self.limits.host_memory {
            return Err(LlamaError::Limit(format!(
                "the guest's objects would hold {} MiB of host memory (limit `host_memory`: {} MiB)",
                (self.held + bytes) >> 20,
                self.limits.host_memory >> 20
            )));
        }
        self.held += bytes;
        self.next_id = self.next_id.wrapping_add(1);
        Ok(self.next_id)
    }

    /// Keep a chain costing `bytes`; its id.
    pub fn add_chain(&mut self, chain: Chain, bytes: u64) -> Result<u32, LlamaError> {
        if self.chains.len() >= self.limits.samplers {
            return Err(LlamaError::Limit(format!(
                "more than {} live samplers (limit `samplers`)",
                self.limits.samplers
            )));
        }
        let id = self.reserve(bytes)?;
        self.chains.insert(id, (chain, bytes));
        Ok(id)
    }

    /// A chain by id.
    pub fn chain(&mut self, id: u32) -> Result<&mut Chain, LlamaError> {
        self.chains
            .get_mut(&id)
            .map(|c| &mut c.0)
            .ok_or_else(|| LlamaError::InvalidArgument(format!("unknown sampler {id}")))
    }

    /// Free a chain.
    pub fn remove_chain(&mut self, id: u32) {
        if let Some((_, bytes)) = self.chains.remove(&id) {
            self.held -= bytes;
        }
    }

    /// Keep a snapshot; its id.
    pub fn add_snapshot(&mut self, state: Vec<u8>) -> Result<u32, LlamaError> {
        if self.snapshots.len() >= self.limits.snapshots {
            return Err(LlamaError::Limit(format!(
                "more than {} live KV snapshots (limit `snapshots`)",
                self.limits.snapshots
            )));
        }
        let id = self.reserve(state.len() as u64)?;
        self.snapshots.insert(id, state);
        Ok(id)
    }

    /// A snapshot by id.
    pub fn snapshot(&self, id: u32) -> Result<&[u8], LlamaError> {
        self.snapshots
            .get(&id)
            .map(Vec::as_slice)
            .ok_or_else(|| LlamaError::InvalidArgument(format!("unknown snapshot {id}")))
    }

    /// Free a snapshot.
    pub fn remove_snapshot(&mut self, id: u32) {
        if let Some(s) = self.snapshots.remove(&id) {
            self.held -= s.len() as u64;
        }
    }

    /// Free everything (the model is gone; chains and states are tied to it).
    pub fn clear(&mut self) {
        self.chains.clear();
        self.snapshots.clear();
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: 0,
            logit_bias: Vec::new(),
        }
    }

    #[test]
    fn every_chain_ends_in_a_choice_and_costly_or_bad_settings_are_refused() {
        let (links, _) = chain_links(&greedy(), 100, 64).unwrap();
        assert_eq!(links, vec![Link::Greedy]);
        let mut c = greedy();
        c.temperature = 0.7;
        c.top_k = 40;
        let (links, _) = chain_links(&c, 100, 64).unwrap();
        assert_eq!(links.last(), Some(&Link::Dist(0)));
        for bad in [
            SamplerConfig { repeat_last_n: 268_435_456, repeat_penalty: 1.1, ..greedy() },
            SamplerConfig { top_k: 101, ..greedy() },
            SamplerConfig { logit_bias: vec![(100, 1.0)], ..greedy() },
            SamplerConfig { temperature: f32::NAN, ..greedy() },
            SamplerConfig { logit_bias: vec![(1, f32::NAN)], ..greedy() },
        ] {
            assert!(chain_links(&bad, 100, 64).is_err(), "{bad:?}");
        }
    }
}
