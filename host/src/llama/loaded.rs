//! A loaded model's context and what can be done with it: batched decode,
//! KV sequence operations, sequence state save/restore. Lives on the
//! inference thread only.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use llama_cpp_2::DecodeError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::{LlamaError, LoadRequest, backend, log};

/// What the host reports about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name` (or empty).
    pub description: String,
    /// Parameters.
    pub n_params: u64,
    /// Training context.
    pub n_ctx_train: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Layers.
    pub n_layer: u32,
    /// Embedding width.
    pub n_embd: u32,
    /// Attention heads.
    pub n_head: u32,
    /// KV heads.
    pub n_head_kv: u32,
    /// Key/value head size.
    pub head_dim: u32,
    /// BOS.
    pub bos: Option<i32>,
    /// EOS.
    pub eos: Option<i32>,
    /// Whether sequences start with BOS.
    pub add_bos: bool,
    /// GGUF chat template.
    pub chat_template: Option<String>,
    /// File size in bytes.
    pub file_size: u64,
    /// File path.
    pub path: PathBuf,
    /// Context per sequence actually allocated.
    pub n_ctx: u32,
    /// Logical batch.
    pub n_batch: u32,
    /// Sequences.
    pub n_seq: u32,
    /// Generation threads.
    pub threads: u32,
    /// Prompt threads.
    pub threads_batch: u32,
    /// mmap.
    pub use_mmap: bool,
    /// Name, size and modification time of the file: a cheap content identity.
    pub model_id: String,
}

/// Largest context per sequence we accept (llama.cpp positions are i32).
const MAX_N_CTX: u32 = 1 << 20;

/// A model's context on the inference thread.
pub struct Loaded<'m> {
    /// The model.
    pub model: &'m LlamaModel,
    /// Its context.
    pub ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_ctx_seq: u32,
    n_batch: u32,
    n_seq: u32,
    n_vocab: i32,
    /// Whether logits of a decoded token are available to sample from.
    pub has_logits: bool,
}

fn some_token(t: LlamaToken) -> Option<i32> {
    (t.0 >= 0).then_some(t.0)
}

impl<'m> Loaded<'m> {
    /// Create the context for a freshly loaded model.
    pub fn new(model: &'m LlamaModel, req: &LoadRequest) -> Result<(Self, ModelFacts), LlamaError> {
        let fail = |reason: String| LlamaError::Load { path: req.path.clone(), reason };
        if req.n_ctx < 16 || req.n_ctx > MAX_N_CTX {
            return Err(fail(format!("n_ctx {} out of range 16..={MAX_N_CTX}", req.n_ctx)));
        }
        if req.n_seq == 0 || req.n_seq > 64 {
            return Err(fail(format!("n_seq_max {} out of range 1..=64", req.n_seq)));
        }
        if req.n_batch == 0 || req.n_batch > 8192 {
            return Err(fail(format!("n_batch {} out of range 1..=8192", req.n_batch)));
        }
        if req.threads == 0 || req.threads_batch == 0 || req.threads > 256 || req.threads_batch > 256 {
            return Err(fail("thread counts must be 1..=256".into()));
        }
        let total = req.n_ctx.checked_mul(req.n_seq).filter(|&t| t <= MAX_N_CTX * 4);
        let total = total.ok_or_else(|| fail("n_ctx × n_seq_max too large".into()))?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(total))
            .with_n_batch(req.n_batch)
            .with_n_ubatch(req.n_batch.min(512))
            .with_n_seq_max(req.n_seq)
            .with_n_threads(req.threads as i32)
            .with_n_threads_batch(req.threads_batch as i32);
        log::clear();
        let ctx = model
            .new_context(backend()?, params)
            .map_err(|e| fail(log::reason().unwrap_or_else(|| format!("cannot create the context: {e}"))))?;
        let n_ctx_seq = ctx.n_ctx() / req.n_seq;
        let n_batch = ctx.n_batch();
        let vocab = model.vocab();
        let n_vocab = vocab.n_tokens();
        let meta = |k: &str| model.meta_val_str(k).ok();
        let architecture = meta("general.architecture").unwrap_or_default();
        let head_dim = meta(&format!("{architecture}.attention.key_length"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                let n_head = model.n_head().max(1);
                model.n_embd() as u32 / n_head
            });
        let facts = ModelFacts {
            description: meta("general.name").unwrap_or_default(),
            architecture,
            n_params: model.n_params(),
            n_ctx_train: model.n_ctx_train(),
            n_vocab: n_vocab.max(0) as u32,
            n_layer: model.n_layer(),
            n_embd: model.n_embd().max(0) as u32,
            n_head: model.n_head(),
            n_head_kv: model.n_head_kv(),
            head_dim,
            bos: some_token(vocab.bos()),
            eos: some_token(vocab.eos()),
            add_bos: vocab.should_add_bos(),
            chat_template: model.chat_template(None).ok().and_then(|t| t.to_string().ok()),
            file_size: std::fs::metadata(&req.path).map(|m| m.len()).unwrap_or(0),
            path: req.path.clone(),
            n_ctx: n_ctx_seq,
            n_batch,
            n_seq: req.n_seq,
            threads: req.threads,
            threads_batch: req.threads_batch,
            use_mmap: req.use_mmap,
            model_id: model_id(&req.path),
        };
        let loaded = Loaded {
            model,
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_ctx_seq,
            n_batch,
            n_seq: req.n_seq,
            n_vocab,
            has_logits: false,
        };
        Ok((loaded, facts))
    }

    /// Context per sequence.
    pub fn n_ctx_seq(&self) -> u32 {
        self.n_ctx_seq
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> i32 {
        self.n_vocab
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
            Ok(s) => (self.ctx.kv_cache_seq_pos_max(s) + 1).max(0) as u32,
            Err(_) => 0,
        }
    }

    /// Evaluate `tokens` appended to sequence `seq`, `n_batch` at a time,
    /// checking `cancel` between batches. Logits are kept for the last token.
    /// On failure the sequence holds a prefix of what was asked.
    pub fn decode(&mut self, seq: u32, tokens: &[i32], cancel: &AtomicBool) -> Result<(), LlamaError> {
        let s = self.check_seq(seq)?;
        self.check_tokens(tokens)?;
        if tokens.is_empty() {
            return Ok(());
        }
        let used = self.seq_len(seq);
        let requested = tokens.len() as u32;
        if used as u64 + requested as u64 > self.n_ctx_seq as u64 {
            return Err(LlamaError::ContextFull { used, requested, capacity: self.n_ctx_seq });
        }
        let last = tokens.len() - 1;
        let mut pos = used as i32;
        for (chunk_no, chunk) in tokens.chunks(self.n_batch as usize).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(LlamaError::Cancelled);
            }
            self.batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                let is_last = chunk_no * self.n_batch as usize + i == last;
                self.batch
                    .add(LlamaToken(t), pos, &[s], is_last)
                    .map_err(|e| LlamaError::Decode(e.to_string()))?;
                pos += 1;
            }
            self.has_logits = false;
            log::clear();
            self.ctx.decode(&mut self.batch).map_err(|e| match e {
                DecodeError::NoKvCacheSlot => LlamaError::ContextFull {
                    used: self.seq_len(seq),
                    requested: chunk.len() as u32,
                    capacity: self.n_ctx_seq,
                },
                other => LlamaError::Decode(log::reason().unwrap_or_else(|| other.to_string())),
            })?;
        }
        self.has_logits = true;
        Ok(())
    }

    /// Empty a sequence.
    pub fn kv_clear(&mut self, seq: u32) -> Result<(), LlamaError> {
        let s = self.check_seq(seq)?;
        let _ = self.ctx.clear_kv_cache_seq(Some(s as u32), None, None);
        Ok(())
    }

    /// Remove positions [p0, p1) of a sequence.
    pub fn kv_remove(&mut self, seq: u32, p0: u32, p1: Option<u32>) -> Result<bool, LlamaError> {
        let s = self.check_seq(seq)?;
        check_range(p0, p1)?;
        Ok(self.ctx.kv_cache_seq_rm(s, Some(p0), p1).is_ok())
    }

    /// Move positions [p0, p1) by `delta`.
    pub fn kv_shift(&mut self, seq: u32, p0: u32, p1: Option<u32>, delta: i32) -> Result<(), LlamaError> {
        let s = self.check_seq(seq)?;
        check_range(p0, p1)?;
        if delta.unsigned_abs() > MAX_N_CTX {
            return Err(LlamaError::InvalidArgument(format!("shift {delta} out of range")));
        }
        self.ctx
            .kv_cache_seq_add(s, Some(p0), p1, delta)
            .map_err(|e| LlamaError::InvalidArgument(e.to_string()))
    }

    /// Save a sequence and its tokens to a file.
    pub fn state_save(&self, seq: u32, path: &Path, tokens: &[i32]) -> Result<u64, LlamaError> {
        let s = self.check_seq(seq)?;
        self.check_tokens(tokens)?;
        let tokens: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken(t)).collect();
        self.ctx
            .state_seq_save_file(path, s, &tokens)
            .map(|n| n as u64)
            .map_err(|e| LlamaError::Io(format!("cannot save state to {}: {e}", path.display())))
    }

    /// Replace a sequence with a saved one; returns its tokens.
    pub fn state_load(&mut self, seq: u32, path: &Path) -> Result<Vec<i32>, LlamaError> {
        let s = self.check_seq(seq)?;
        let _ = self.ctx.clear_kv_cache_seq(Some(s as u32), None, None);
        self.has_logits = false;
        log::clear();
        let result = self.ctx.state_seq_load_file(path, s, self.n_ctx_seq as usize);
        match result {
            Ok((tokens, _)) => Ok(tokens.into_iter().map(|t| t.0).collect()),
            Err(e) => {
                let _ = self.ctx.clear_kv_cache_seq(Some(s as u32), None, None);
                Err(LlamaError::Io(format!(
                    "cannot load state from {}: {}",
                    path.display(),
                    log::reason().unwrap_or_else(|| e.to_string())
                )))
            }
        }
    }

    /// Copy a sequence's state into memory.
    pub fn snapshot(&self, seq: u32) -> Result<llama_cpp_2::context::session::SeqState, LlamaError> {
        let s = self.check_seq(seq)?;
        self.ctx
            .state_seq_get(s, LlamaStateSeqFlags::empty())
            .map_err(|e| LlamaError::Io(format!("cannot copy sequence {seq}: {e}")))
    }

    /// Replace a sequence with a copy.
    pub fn restore(
        &mut self,
        seq: u32,
        state: &llama_cpp_2::context::session::SeqState,
    ) -> Result<(), LlamaError> {
        let s = self.check_seq(seq)?;
        let _ = self.ctx.clear_kv_cache_seq(Some(s as u32), None, None);
        self.has_logits = false;
        self.ctx.state_seq_set(state, s).map_err(|e| {
            let _ = self.ctx.clear_kv_cache_seq(Some(s as u32), None, None);
            LlamaError::Io(format!("cannot restore sequence {seq}: {e}"))
        })
    }
}

fn model_id(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{name}:{size}:{mtime}")
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

fn check_range(p0: u32, p1: Option<u32>) -> Result<(), LlamaError> {
    let ok = p0 <= MAX_N_CTX && p1.is_none_or(|p1| p1 <= MAX_N_CTX && p1 >= p0);
    if ok {
        Ok(())
    } else {
        Err(LlamaError::InvalidArgument(format!("position range {p0}..{p1:?} is invalid")))
    }
}
