//! Chunked evaluation of texts, the way llama.cpp's `llama-imatrix` and
//! `llama-perplexity` do it: each text tokenized on its own (BOS once at
//! its start, no special-token parsing), cut into non-overlapping chunks of
//! `n_ctx` tokens, each chunk evaluated from an empty KV cache with BOS in
//! place of its first token. Used by `imatrix` and `quality`.
//!
//! A chunk is decoded in steps of at most [`STEP`] tokens, so llama.cpp's
//! output buffer holds at most `STEP × n_vocab` logits at a time (64 MiB for
//! a 262,144-token vocabulary), whatever the chunk size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bittybot_host::llama::ffi::{
    Batch, Context, ContextParams, EvalCallback, KvStorage, Model, Token, Vocab,
};

/// Tokens decoded per step (and logits rows held at once).
pub const STEP: usize = 64;

/// Errors of the tools that evaluate texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A model cannot be used.
    #[error("{path}: {reason}")]
    Model {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A text cannot be used.
    #[error("{path}: {reason}")]
    Text {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// llama.cpp failed.
    #[error("{0}")]
    Llama(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// A text, tokenized.
#[derive(Debug, Clone)]
pub struct Text {
    /// Its name (the file name, e.g. `ar.txt`).
    pub name: String,
    /// Its tokens (BOS first when the model wants one).
    pub tokens: Vec<Token>,
}

impl Text {
    /// The chunks it makes at `n_ctx` (a shorter tail is not evaluated).
    pub fn chunks(&self, n_ctx: usize) -> impl Iterator<Item = &[Token]> {
        self.tokens.chunks_exact(n_ctx)
    }

    /// Number of chunks at `n_ctx`.
    pub fn n_chunks(&self, n_ctx: usize) -> usize {
        self.tokens.len() / n_ctx
    }
}

/// Load a model for evaluation (mapped).
pub fn load_model(path: &Path) -> Result<Arc<Model>, EvalError> {
    bittybot_host::llama::backend();
    let fail = |reason: String| EvalError::Model { path: path.to_owned(), reason };
    let s = path.to_str().ok_or_else(|| fail("the path is not UTF-8".into()))?;
    bittybot_host::gguf::Gguf::open(path).map_err(|e| fail(e.to_string()))?;
    let model = Model::load(s, true).map_err(fail)?;
    let model = model.ok_or_else(|| {
        fail(bittybot_host::llama::log::reason().unwrap_or_else(|| "llama.cpp cannot load it".into()))
    })?;
    Ok(Arc::new(model))
}

/// Read and tokenize texts; each must hold at least one chunk.
pub fn load_texts(vocab: &Vocab<'_>, paths: &[PathBuf], n_ctx: usize) -> Result<Vec<Text>, EvalError> {
    if paths.is_empty() {
        return Err(EvalError::Io("no text given (--text FILE…)".into()));
    }
    paths
        .iter()
        .map(|path| {
            let fail = |reason: String| EvalError::Text { path: path.clone(), reason };
            let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
            if text.trim().is_empty() {
                return Err(fail("the text is empty".into()));
            }
            let mut tokens = vocab.tokenize(&text, false).map_err(fail)?;
            if let Some(bos) = vocab.bos().filter(|_| vocab.add_bos()) {
                tokens.insert(0, bos);
            }
            if tokens.len() < n_ctx {
                return Err(fail(format!(
                    "{} tokens, fewer than one chunk of {n_ctx}: give a longer text or a smaller --ctx",
                    tokens.len()
                )));
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(Text { name, tokens })
        })
        .collect()
}

/// A context that evaluates chunks.
pub struct Evaluator {
    ctx: Context,
    batch: Batch,
    bos: Option<Token>,
}

impl Evaluator {
    /// A context of one sequence of `n_ctx` tokens; `eval` sees every tensor computed.
    pub fn new(
        model: Arc<Model>,
        n_ctx: u32,
        threads: u32,
        eval: Option<EvalCallback>,
    ) -> Result<Self, EvalError> {
        let vocab = model.vocab();
        let bos = vocab.bos().filter(|_| vocab.add_bos());
        let params = ContextParams {
            n_ctx,
            n_batch: STEP as u32,
            n_ubatch: STEP as u32,
            n_seq_max: 1,
            threads: threads as i32,
            threads_batch: threads as i32,
            kv: KvStorage::F16,
            embeddings: false,
        };
        let ctx = Context::new(model, &params, None, eval).map_err(EvalError::Llama)?;
        Ok(Evaluator { ctx, batch: Batch::default(), bos })
    }

    /// Evaluate one chunk from an empty cache; `row(i, logits)` gets the
    /// logits at each position `i >= first_out` (they predict token `i + 1`).
    pub fn chunk(
        &mut self,
        tokens: &[Token],
        first_out: usize,
        mut row: impl FnMut(usize, &[f32]),
    ) -> Result<(), EvalError> {
        self.ctx.clear();
        for (step, part) in tokens.chunks(STEP).enumerate() {
            self.batch.clear();
            let base = step * STEP;
            for (k, &t) in part.iter().enumerate() {
                let pos = base + k;
                let t = if pos == 0 { self.bos.unwrap_or(t) } else { t };
                self.batch.add(t, pos as i32, 0, pos >= first_out);
            }
            match self.ctx.decode(&mut self.batch).map_err(EvalError::Llama)? {
                0 => {}
                code => return Err(EvalError::Llama(format!("llama_decode returned {code}"))),
            }
            for k in (0..part.len()).filter(|k| base + k >= first_out) {
                // llama.cpp takes the batch position and finds its output row.
                let logits = self
                    .ctx
                    .logits(k as i32)
                    .ok_or_else(|| EvalError::Llama("no logits for an output row".into()))?;
                row(base + k, logits);
            }
        }
        Ok(())
    }
}

/// Peak resident memory of this process, bytes (`getrusage`).
pub fn peak_rss() -> u64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `u` is writable memory of the right type; getrusage only fills it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let u = unsafe { u.assume_init() };
    u.ru_maxrss as u64 * 1024
}
