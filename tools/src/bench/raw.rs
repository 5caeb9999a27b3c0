//! The raw loop the guest path is measured against: llama.cpp through the
//! host's thin FFI layer, no guest, greedy sampling — what llama.cpp's
//! `examples/simple` does.

use std::sync::Arc;
use std::time::Instant;

use bittybot_host::KvType;
use bittybot_host::llama::ffi::{Batch, Chain, Context, ContextParams, Link, Model, Token};

use super::{BenchError, Sample, ms};

/// Model, context and sampler of the raw loop.
pub struct RawLoop {
    ctx: Context,
    n_batch: usize,
}

/// How the raw loop's context is shaped (the guest's, so only the path differs).
pub struct RawShape {
    /// Context per sequence.
    pub n_ctx: u32,
    /// Sequences.
    pub n_seq: u32,
    /// Logical batch.
    pub n_batch: u32,
    /// Generation threads.
    pub threads: u32,
    /// Prompt threads.
    pub threads_batch: u32,
    /// KV cache type.
    pub kv: KvType,
}

impl RawLoop {
    /// Load the model and create the context; the load time in ms.
    ///
    /// The weights are mapped, as the app maps them, sharing the page cache
    /// with the guest's mapping. Reading them into the loop's own memory,
    /// as this loop did before, is not the same memory: measured on the
    /// demo model (101 paired repetitions), the guest then decoded at 0.968
    /// of the raw loop [95 % CI 0.945…0.984], and at 1.025 [1.010…1.043]
    /// once both mapped; under a memory balloon a second copy also took the
    /// model's size from the page cache (0.3 tok/s beside 9.6). The loop is
    /// dropped before the residency cases, so its mapping does not keep the
    /// pages those cases evict.
    pub fn load(path: &std::path::Path, s: &RawShape) -> Result<(Self, f64), BenchError> {
        let t = Instant::now();
        bittybot_host::llama::backend();
        let path = path.to_str().ok_or_else(|| BenchError::Other("the model path is not UTF-8".into()))?;
        let model = Model::load(path, true)
            .map_err(BenchError::Other)?
            .ok_or_else(|| BenchError::Other("raw loop: llama.cpp cannot load the model".into()))?;
        let params = ContextParams {
            n_ctx: s.n_ctx * s.n_seq,
            n_batch: s.n_batch,
            n_ubatch: s.n_batch.min(512),
            n_seq_max: s.n_seq,
            threads: s.threads as i32,
            threads_batch: s.threads_batch as i32,
            kv: s.kv.into(),
            embeddings: false,
        };
        let ctx = Context::new(Arc::new(model), &params, None, None)
            .map_err(|e| BenchError::Other(format!("raw loop: {e}")))?;
        let n_batch = ctx.n_batch() as usize;
        Ok((RawLoop { ctx, n_batch }, ms(t.elapsed())))
    }

    /// One turn: the prompt, then up to `max_tokens` greedy tokens.
    pub fn run(&mut self, prompt: &[Token], max_tokens: u32) -> Result<Sample, BenchError> {
        let fail = |e: String| BenchError::Other(format!("raw loop: {e}"));
        self.ctx.clear();
        let model = self.ctx.model().clone();
        let vocab = model.vocab();
        let mut sampler = Chain::new(vocab.n_tokens(), &[Link::Greedy]).map_err(fail)?;
        let mut batch = Batch::default();
        let start = Instant::now();
        let last = prompt.len() - 1;
        for (c, chunk) in prompt.chunks(self.n_batch).enumerate() {
            batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                let pos = c * self.n_batch + i;
                batch.add(t, pos as i32, 0, pos == last);
            }
            match self.ctx.decode(&mut batch).map_err(fail)? {
                0 => {}
                code => return Err(fail(format!("decode returned {code}"))),
            }
        }
        let prompt_done = Instant::now();
        let mut pos = prompt.len() as i32;
        let mut generated = 0u32;
        let (mut first, mut ttft) = (None, None);
        let mut last_at = prompt_done;
        let mut pending = Vec::new();
        loop {
            let t = sampler.sample(&self.ctx, -1).map_err(fail)?;
            let now = Instant::now();
            first.get_or_insert(now);
            if vocab.is_eog(t) {
                break;
            }
            last_at = now;
            generated += 1;
            pending.extend(vocab.piece(t, false).map_err(fail)?);
            if ttft.is_none() && std::str::from_utf8(&pending).is_ok_and(|s| !s.is_empty()) {
                ttft = Some(Instant::now());
            }
            if generated >= max_tokens {
                break;
            }
            batch.clear();
            batch.add(t, pos, 0, true);
            pos += 1;
            match self.ctx.decode(&mut batch).map_err(fail)? {
                0 => {}
                code => return Err(fail(format!("decode returned {code}"))),
            }
        }
        let end = Instant::now();
        let decode_ms = first.map_or(0.0, |f| ms(last_at.duration_since(f)));
        Ok(Sample {
            ttft_ms: ms(ttft.unwrap_or(end).duration_since(start)),
            prompt_tps: prompt.len() as f64 / prompt_done.duration_since(start).as_secs_f64(),
            decode_tps: if decode_ms > 0.0 {
                generated.saturating_sub(1) as f64 * 1000.0 / decode_ms
            } else {
                0.0
            },
            prompt_tokens: prompt.len() as u32,
            generated,
        })
    }
}
