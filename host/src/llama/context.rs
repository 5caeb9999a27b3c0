//! A loaded model's context in the engine: batched decode, KV
//! sequence operations, and sequence states as bytes. Every argument is
//! checked here, so llama.cpp never sees one it would assert on.

use std::sync::Arc;

use super::ffi::{AbortFlag, Batch, Context, ContextParams, Model};
use super::{LlamaError, log};
use crate::bindings::inference::LoadSettings;
use crate::limits::Limits;

/// Largest position llama.cpp handles (positions are i32).
const MAX_POS: u32 = i32::MAX as u32 / 2;
/// The largest logical batch accepted.
const MAX_BATCH: u32 = 2048;
/// Threads accepted per pool.
const MAX_THREADS: u32 = 64;

/// A model's context.
pub struct ModelContext {
    ctx: Context,
    batch: Batch,
    n_ctx_seq: u32,
    n_batch: u32,
    n_seq: u32,
    n_vocab: i32,
    /// Whether logits of a decoded token are available to sample from.
    pub has_logits: bool,
}

impl ModelContext {
    /// Create the context for a loaded model, within the host's limits.
    pub fn new(
        model: Arc<Model>,
        s: &LoadSettings,
        limits: &Limits,
        abort: &AbortFlag,
    ) -> Result<Self, String> {
        if s.n_ctx < 16 {
            return Err(format!("n-ctx {} is below 16", s.n_ctx));
        }
        if s.n_seq_max == 0 || s.n_seq_max > limits.sequences {
            return Err(format!(
                "n-seq-max {} is outside 1..={} (limit `sequences`)",
                s.n_seq_max, limits.sequences
            ));
        }
        let total =
            s.n_ctx.checked_mul(s.n_seq_max).filter(|&t| t <= limits.context_tokens).ok_or_else(|| {
                format!(
                    "a context of {} × {} tokens exceeds the limit `context_tokens` ({})",
                    s.n_ctx, s.n_seq_max, limits.context_tokens
                )
            })?;
        if s.n_batch == 0 || s.n_batch > MAX_BATCH {
            return Err(format!("n-batch {} is outside 1..={MAX_BATCH}", s.n_batch));
        }
        // No more threads than the device's CPUs (the limit `threads`, which
        // the runtime resolves from the CPU topology when it is 0): ggml's
        // workers spin while they wait for each other, so 64 threads on 2
        // cores made one decode take minutes (found by an independent hostile guest).
        let max = limits.threads.min(MAX_THREADS);
        let threads_ok = |t: u32| (1..=max).contains(&t);
        if !threads_ok(s.threads) || !threads_ok(s.threads_batch) {
            return Err(format!(
                "thread counts {}/{} must be 1..={max} (this device's CPUs, limit `threads`)",
                s.threads, s.threads_batch
            ));
        }
        let params = ContextParams {
            n_ctx: total,
            n_batch: s.n_batch,
            n_ubatch: s.n_batch.min(512),
            n_seq_max: s.n_seq_max,
            threads: s.threads as i32,
            threads_batch: s.threads_batch as i32,
            kv: s.kv_type.into(),
            embeddings: false,
        };
        let n_vocab = model.vocab().n_tokens();
        log::clear();
        let ctx = Context::new(model, &params, Some(abort), None).map_err(|e| log::reason().unwrap_or(e))?;
        Ok(ModelContext {
            n_ctx_seq: ctx.n_ctx() / s.n_seq_max,
            n_batch: ctx.n_batch(),
            n_seq: s.n_seq_max,
            n_vocab,
            ctx,
            batch: Batch::default(),
            has_logits: false,
        })
    }

    /// Context per sequence.
    pub fn n_ctx_seq(&self) -> u32 {
        self.n_ctx_seq
    }

    /// The effective logical batch.
    pub fn n_batch(&self) -> u32 {
        self.n_batch
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> i32 {
        self.n_vocab
    }

    /// The context (for sampling).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    fn check_seq(&self, seq: u32) -> Result<i32, LlamaError> {
        if seq < self.n_seq {
            Ok(seq as i32)
        } else {
            Err(LlamaError::InvalidArgument(format!(
                "sequence {seq} does not exist (the context has {})",
                self.n_seq
            )))
        }
    }

    /// Check every token id is in the vocabulary.
    pub fn check_tokens(&self, tokens: &[i32]) -> Result<(), LlamaError> {
        check_tokens(tokens, self.n_vocab)
    }

    /// Positions used in a sequence (0 for an unknown sequence).
    pub fn seq_len(&self, seq: u32) -> u32 {
        match self.check_seq(seq) {
            Ok(s) => (self.ctx.seq_pos_max(s) + 1).max(0) as u32,
            Err(_) => 0,
        }
    }

    /// Evaluate `tokens` appended to sequence `seq`, `n_batch` at a time;
    /// a cancel stops it between batches and inside one (llama.cpp's abort
    /// callback). Logits are kept for the last token. On failure the
    /// sequence holds a prefix of what was asked.
    pub fn decode(&mut self, seq: u32, tokens: &[i32]) -> Result<(), LlamaError> {
        let s = self.check_seq(seq)?;
        self.check_tokens(tokens)?;
        if tokens.is_empty() {
            return Ok(());
        }
        let used = self.seq_len(seq);
        let requested = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if used as u64 + requested as u64 > self.n_ctx_seq as u64 {
            return Err(LlamaError::ContextFull { used, requested, capacity: self.n_ctx_seq });
        }
        let last = tokens.len() - 1;
        let mut pos = used as i32;
        for (chunk_no, chunk) in tokens.chunks(self.n_batch as usize).enumerate() {
            self.batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                self.batch.add(t, pos, s, chunk_no * self.n_batch as usize + i == last);
                pos += 1;
            }
            self.has_logits = false;
            log::clear();
            match self.ctx.decode(&mut self.batch).map_err(LlamaError::Decode)? {
                0 => {}
                1 => {
                    return Err(LlamaError::ContextFull {
                        used: self.seq_len(seq),
                        requested: chunk.len() as u32,
                        capacity: self.n_ctx_seq,
                    });
                }
                2 => return Err(LlamaError::Cancelled),
                code => {
                    return Err(LlamaError::Decode(
                        log::reason().unwrap_or_else(|| format!("llama_decode returned {code}")),
                    ));
                }
            }
        }
        self.has_logits = true;
        Ok(())
    }

    /// Empty a sequence.
    pub fn kv_clear(&mut self, seq: u32) -> Result<(), LlamaError> {
        let s = self.check_seq(seq)?;
        self.ctx.seq_rm(s, -1, -1);
        // The last batch's logits no longer follow from what the cache holds.
        self.has_logits = false;
        Ok(())
    }

    /// Remove positions [p0, p1) of a sequence.
    pub fn kv_remove(&mut self, seq: u32, p0: u32, p1: Option<u32>) -> Result<bool, LlamaError> {
        let s = self.check_seq(seq)?;
        let (p0, p1) = check_range(p0, p1)?;
        let removed = self.ctx.seq_rm(s, p0, p1);
        if removed {
            // The logits may be of a token that is gone.
            self.has_logits = false;
        }
        Ok(removed)
    }

    /// Move positions [p0, p1) by `delta`.
    pub fn kv_shift(&mut self, seq: u32, p0: u32, p1: Option<u32>, delta: i32) -> Result<(), LlamaError> {
        let s = self.check_seq(seq)?;
        let (p0, p1) = check_range(p0, p1)?;
        if delta.unsigned_abs() > MAX_POS {
            return Err(LlamaError::InvalidArgument(format!("shift {delta} out of range")));
        }
        self.ctx.seq_add(s, p0, p1, delta);
        Ok(())
    }

    /// A sequence's state as bytes.
    pub fn state(&self, seq: u32) -> Result<Vec<u8>, LlamaError> {
        let s = self.check_seq(seq)?;
        self.ctx.seq_state(s).map_err(LlamaError::State)
    }

    /// Replace a sequence with a state from [`ModelContext::state`]; on
    /// failure the sequence is empty.
    pub fn set_state(&mut self, seq: u32, state: &[u8]) -> Result<(), LlamaError> {
        let s = self.check_seq(seq)?;
        self.ctx.seq_rm(s, -1, -1);
        self.has_logits = false;
        log::clear();
        self.ctx.set_seq_state(s, state).map_err(|e| {
            self.ctx.seq_rm(s, -1, -1);
            LlamaError::State(log::reason().map_or(e.clone(), |r| format!("{e}: {r}")))
        })
    }
}

/// Check every token id is in a vocabulary of `n_vocab` tokens.
pub fn check_tokens(tokens: &[i32], n_vocab: i32) -> Result<(), LlamaError> {
    match tokens.iter().find(|&&t| t < 0 || t >= n_vocab) {
        Some(bad) => {
            Err(LlamaError::InvalidArgument(format!("token {bad} is not in the vocabulary (0..{n_vocab})")))
        }
        None => Ok(()),
    }
}

fn check_range(p0: u32, p1: Option<u32>) -> Result<(i32, i32), LlamaError> {
    let ok = p0 <= MAX_POS && p1.is_none_or(|p1| p1 <= MAX_POS && p1 >= p0);
    if !ok {
        return Err(LlamaError::InvalidArgument(format!("position range {p0}..{p1:?} is invalid")));
    }
    Ok((p0 as i32, p1.map_or(-1, |p| p as i32)))
}

/// A saved sequence state: the tokens it holds and llama.cpp's bytes.
///
/// File layout (little-endian): `BBKVSTA1`, token count (u32), the tokens
/// (i32 each), state length (u64), the state. The host writes and reads it
/// through the guest's `state` folder; llama.cpp only ever sees the state
/// bytes of a file whose SHA-256 the guest recorded when it was saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    /// The tokens in the sequence.
    pub tokens: Vec<i32>,
    /// llama.cpp's state of the sequence.
    pub state: Vec<u8>,
}

const STATE_MAGIC: &[u8; 8] = b"BBKVSTA1";

impl StateFile {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.tokens.len() * 4 + self.state.len());
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&(self.tokens.len() as u32).to_le_bytes());
        for t in &self.tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out.extend_from_slice(&(self.state.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.state);
        out
    }

    /// Parse a file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<StateFile, String> {
        let bad = || "not a saved state of this host".to_owned();
        let rest = bytes.strip_prefix(STATE_MAGIC.as_slice()).ok_or_else(bad)?;
        let (n, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let n = u32::from_le_bytes(*n) as usize;
        let (toks, rest) = rest.split_at_checked(n.checked_mul(4).ok_or_else(bad)?).ok_or_else(bad)?;
        let tokens = toks.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let (len, state) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        if u64::from_le_bytes(*len) != state.len() as u64 {
            return Err(bad());
        }
        Ok(StateFile { tokens, state: state.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_round_trip_and_refuse_damage() {
        let f = StateFile { tokens: vec![1, -2, 300], state: vec![9; 10] };
        let bytes = f.to_bytes();
        assert_eq!(StateFile::parse(&bytes).unwrap(), f);
        for cut in 0..bytes.len() {
            assert!(StateFile::parse(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(StateFile::parse(&long).is_err());
    }

    #[test]
    fn ranges_and_tokens_are_checked() {
        assert!(check_range(5, Some(3)).is_err());
        assert!(check_range(u32::MAX, None).is_err());
        assert_eq!(check_range(2, None).unwrap(), (2, -1));
        assert!(check_tokens(&[0, 9], 10).is_ok());
        assert!(check_tokens(&[10], 10).is_err() && check_tokens(&[-1], 10).is_err());
    }
}
