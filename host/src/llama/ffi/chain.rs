//! Batches and sampler chains.

use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{Context, Token, caught};

unsafe extern "C" {
    fn bb_sampler_sample(
        smpl: *mut sys::llama_sampler,
        ctx: *mut sys::llama_context,
        idx: i32,
        caught: *mut bool,
    ) -> Token;
    fn bb_sampler_init_penalties(
        n_vocab: i32,
        last_n: i32,
        repeat: f32,
        freq: f32,
        present: f32,
    ) -> *mut sys::llama_sampler;
    fn bb_sampler_init_logit_bias(
        n_vocab: i32,
        n: i32,
        bias: *const sys::llama_logit_bias,
    ) -> *mut sys::llama_sampler;
    fn bb_sampler_init_simple(kind: i32, p: f32, k: i32, seed: u32) -> *mut sys::llama_sampler;
    fn bb_sampler_chain() -> *mut sys::llama_sampler;
    fn bb_sampler_chain_add(chain: *mut sys::llama_sampler, smpl: *mut sys::llama_sampler) -> bool;
}

/// A batch of tokens, each in one sequence, owned by Rust.
#[derive(Default)]
pub struct Batch {
    tokens: Vec<Token>,
    pos: Vec<i32>,
    n_seq_id: Vec<i32>,
    seq_ids: Vec<i32>,
    seq_ptrs: Vec<*mut i32>,
    logits: Vec<i8>,
}

// SAFETY: `seq_ptrs` only holds pointers into `seq_ids` made by `raw` for
// the decode that follows it; they are rebuilt each time and never read
// otherwise, so the batch is plain owned data wherever it moves.
unsafe impl Send for Batch {}

impl Batch {
    /// Empty it.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.pos.clear();
        self.n_seq_id.clear();
        self.seq_ids.clear();
        self.logits.clear();
    }

    /// Add a token at `pos` in sequence `seq`; `logits`: compute its output row.
    pub fn add(&mut self, token: Token, pos: i32, seq: i32, logits: bool) {
        self.tokens.push(token);
        self.pos.push(pos);
        self.n_seq_id.push(1);
        self.seq_ids.push(seq);
        self.logits.push(i8::from(logits));
    }

    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub(super) fn raw(&mut self) -> sys::llama_batch {
        self.seq_ptrs.clear();
        let base = self.seq_ids.as_mut_ptr();
        // SAFETY: `i` < seq_ids.len(); the pointers are used only during this decode.
        self.seq_ptrs.extend((0..self.seq_ids.len()).map(|i| unsafe { base.add(i) }));
        sys::llama_batch {
            n_tokens: self.tokens.len() as i32,
            token: self.tokens.as_mut_ptr(),
            embd: std::ptr::null_mut(),
            pos: self.pos.as_mut_ptr(),
            n_seq_id: self.n_seq_id.as_mut_ptr(),
            seq_id: self.seq_ptrs.as_mut_ptr(),
            logits: self.logits.as_mut_ptr(),
        }
    }
}

/// A sampler chain.
pub struct Chain {
    ptr: NonNull<sys::llama_sampler>,
}

// SAFETY: a sampler is plain data owned by one thread at a time.
unsafe impl Send for Chain {}

impl Drop for Chain {
    fn drop(&mut self) {
        // SAFETY: the chain owns its samplers; freed once.
        unsafe { sys::llama_sampler_free(self.ptr.as_ptr()) }
    }
}

/// One link of a chain (arguments checked by the caller).
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Add biases to logits.
    LogitBias(Vec<(Token, f32)>),
    /// Repetition penalty over the last `n` tokens.
    Penalties {
        /// Window.
        last_n: i32,
        /// Penalty.
        repeat: f32,
    },
    /// Top-k.
    TopK(i32),
    /// Top-p.
    TopP(f32),
    /// Min-p.
    MinP(f32),
    /// Temperature.
    Temp(f32),
    /// Random choice.
    Dist(u32),
    /// Most likely token.
    Greedy,
}

impl Chain {
    /// Build a chain for a vocabulary of `n_vocab` tokens.
    pub fn new(n_vocab: i32, links: &[Link]) -> Result<Chain, String> {
        // SAFETY: no arguments.
        let chain = NonNull::new(unsafe { bb_sampler_chain() }).ok_or_else(caught)?;
        let chain = Chain { ptr: chain };
        for link in links {
            // SAFETY: plain values; the bias pointer is valid for `len` entries during the call.
            let s = unsafe {
                match link {
                    Link::LogitBias(b) => {
                        let biases: Vec<sys::llama_logit_bias> =
                            b.iter().map(|&(token, bias)| sys::llama_logit_bias { token, bias }).collect();
                        bb_sampler_init_logit_bias(n_vocab, biases.len() as i32, biases.as_ptr())
                    }
                    Link::Penalties { last_n, repeat } => {
                        bb_sampler_init_penalties(n_vocab, *last_n, *repeat, 0.0, 0.0)
                    }
                    Link::Greedy => bb_sampler_init_simple(0, 0.0, 0, 0),
                    Link::Dist(seed) => bb_sampler_init_simple(1, 0.0, 0, *seed),
                    Link::TopK(k) => bb_sampler_init_simple(2, 0.0, *k, 0),
                    Link::TopP(p) => bb_sampler_init_simple(3, *p, 0, 0),
                    Link::MinP(p) => bb_sampler_init_simple(4, *p, 0, 0),
                    Link::Temp(t) => bb_sampler_init_simple(5, *t, 0, 0),
                }
            };
            let s = NonNull::new(s).ok_or_else(caught)?;
            // SAFETY: the chain takes ownership of `s` (the shim frees it on failure).
            if !unsafe { bb_sampler_chain_add(chain.ptr.as_ptr(), s.as_ptr()) } {
                return Err(caught());
            }
        }
        Ok(chain)
    }

    /// Pick (and record) a token from the logits of output row `idx`; the
    /// caller checks the row exists (llama.cpp asserts otherwise).
    pub fn sample(&mut self, ctx: &Context, idx: i32) -> Result<Token, String> {
        let mut threw = false;
        // SAFETY: a live chain and context; the shim catches exceptions.
        let t = unsafe { bb_sampler_sample(self.ptr.as_ptr(), ctx.raw(), idx, &mut threw) };
        if threw { Err(caught()) } else { Ok(t) }
    }
}
