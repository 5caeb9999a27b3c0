//! Memory fit: will the model run in the memory this device has free, and
//! with how much context?
//!
//! need = weights (the mapped file, all of it resident while generating)
//!      + KV cache (context × sequences × layers × KV heads × head size × K and V
//!        × 2 bytes for f16, 34/32 bytes for q8_0)
//!      + compute working set
//!      + runtime overhead (guest, wasmtime, llama.cpp buffers)
//!
//! The compute term is the working set, not llama.cpp's reservation: the
//! reservation is sized for logits of a whole batch (262,144 × 512 × 4 bytes
//! = 512 MiB for Tiny Aya) but only the last token's logits are computed, so
//! those pages are never touched. Calibrated against llama.cpp's reported
//! compute buffers (SmolLM2 and the tiny cohere2 model, n_ubatch 512).

use crate::host::KvType;

/// What the estimate needs about a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// File size (weights).
    pub file_size: u64,
    /// Layers.
    pub n_layer: u32,
    /// KV heads.
    pub n_head_kv: u32,
    /// Head size.
    pub head_dim: u32,
    /// Embedding width.
    pub n_embd: u32,
    /// Vocabulary.
    pub n_vocab: u32,
}

/// Context sizes (per session) the policy picks from, largest first.
pub const CONTEXTS: [u32; 4] = [4096, 2048, 1024, 512];
/// Share of available memory kept free (other apps, the kernel's own needs).
pub const HEADROOM_DIVISOR: u64 = 20;
/// Guest, wasmtime, thread stacks, llama.cpp's small buffers.
pub const RUNTIME_OVERHEAD: u64 = 64 << 20;

/// KV cache bytes (K and V).
pub fn kv_bytes(s: &Shape, n_ctx: u32, n_seq: u32, kv: KvType) -> u64 {
    let values = n_ctx as u64 * n_seq as u64 * s.n_layer as u64 * s.n_head_kv as u64 * s.head_dim as u64 * 2;
    match kv {
        KvType::F16 => values * 2,
        // q8_0: blocks of 32 values in 34 bytes (32 × i8 and an f16 scale).
        KvType::Q80 => values.div_ceil(32) * 34,
    }
}

/// Compute working set for a prompt batch of `n_ubatch` tokens.
pub fn compute_bytes(s: &Shape, n_ubatch: u32) -> u64 {
    n_ubatch as u64 * s.n_embd as u64 * 64 + s.n_vocab as u64 * 4 * 2
}

/// Bytes needed to run with `n_ctx` per session.
pub fn need(s: &Shape, n_ctx: u32, n_seq: u32, n_ubatch: u32, kv: KvType) -> u64 {
    s.file_size + kv_bytes(s, n_ctx, n_seq, kv) + compute_bytes(s, n_ubatch) + RUNTIME_OVERHEAD
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// The largest context that fits in available memory.
    Fits {
        /// Context per session.
        n_ctx: u32,
        /// KV cache type.
        kv_type: KvType,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        available: u64,
    },
    /// Not even the smallest context fits in *available* memory, but the
    /// device has enough in total: it runs, with paging (slower).
    Tight {
        /// Context per session (the smallest).
        n_ctx: u32,
        /// KV cache type (the smallest).
        kv_type: KvType,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        available: u64,
    },
    /// The device does not have the memory at all.
    TooBig {
        /// Bytes needed with the smallest context.
        need: u64,
        /// Physical memory.
        total: u64,
    },
}

/// Context below which a q8_0 KV cache (about half the bytes of f16) is
/// preferred to a smaller context: a conversation of 1024 tokens per
/// session holds several exchanges; 512 barely one.
pub const MIN_COMFORTABLE_CTX: u32 = 1024;

/// The (context, KV type) pairs tried, best first: every context down to
/// [`MIN_COMFORTABLE_CTX`] with f16, then that context with q8_0, then the
/// smaller contexts with f16 and q8_0.
fn candidates(n_ctx_train: u32) -> Vec<(u32, KvType)> {
    let contexts: Vec<u32> = CONTEXTS.iter().copied().filter(|&c| c <= n_ctx_train.max(512)).collect();
    let mut out: Vec<(u32, KvType)> = Vec::new();
    for &c in contexts.iter().filter(|&&c| c >= MIN_COMFORTABLE_CTX) {
        out.push((c, KvType::F16));
    }
    if let Some(&c) = contexts.iter().filter(|&&c| c >= MIN_COMFORTABLE_CTX).last() {
        out.push((c, KvType::Q80));
    }
    for &c in contexts.iter().filter(|&&c| c < MIN_COMFORTABLE_CTX) {
        out.extend([(c, KvType::F16), (c, KvType::Q80)]);
    }
    out
}

/// Pick the first candidate (see [`candidates`]) that fits in available
/// memory less a 5 % headroom; else the smallest, which runs with paging.
pub fn choose(s: &Shape, available: u64, total: u64, n_seq: u32, n_ubatch: u32, n_ctx_train: u32) -> Fit {
    let candidates = candidates(n_ctx_train);
    let budget = available - available / HEADROOM_DIVISOR;
    for &(n_ctx, kv_type) in &candidates {
        let need = need(s, n_ctx, n_seq, n_ubatch, kv_type);
        if need <= budget {
            return Fit::Fits { n_ctx, kv_type, need, available };
        }
    }
    let smallest = candidates.last().map_or(512, |c| c.0);
    let need = need(s, smallest, n_seq, n_ubatch, KvType::Q80);
    if need <= total {
        Fit::Tight { n_ctx: smallest, kv_type: KvType::Q80, need, available }
    } else {
        Fit::TooBig { need, total }
    }
}

/// Bytes in MiB, for messages.
pub fn mib(b: u64) -> u64 {
    b >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny Aya Global Q3_K_S (the release file: README, "Model distribution").
    const TINY_AYA: Shape = Shape {
        file_size: 1_660_984_928,
        n_layer: 36,
        n_head_kv: 4,
        head_dim: 128,
        n_embd: 2048,
        n_vocab: 262_144,
    };
    const GIB: u64 = 1 << 30;

    #[test]
    fn kv_per_token_matches_the_published_figure() {
        assert_eq!(kv_bytes(&TINY_AYA, 1, 1, KvType::F16), 72 * 1024);
        assert_eq!(kv_bytes(&TINY_AYA, 2048, 1, KvType::F16), 144 << 20);
        assert_eq!(kv_bytes(&TINY_AYA, 2048, 1, KvType::Q80), (144 << 20) / 32 * 17);
    }

    #[test]
    fn the_phone_gets_a_sensible_context() {
        // Samsung Galaxy A25: 5.5 GB total, about 2.1 GB available to the app.
        let total = 5_500_000_000;
        match choose(&TINY_AYA, 2_100_000_000, total, 2, 512, 8192) {
            Fit::Fits { n_ctx, kv_type, need, available } => {
                assert_eq!(
                    (n_ctx, kv_type),
                    (1024, KvType::F16),
                    "two sessions of 2048 need {} MiB",
                    mib(need)
                );
                assert!(need <= available);
            }
            other => panic!("{other:?}"),
        }
        // With 2.4 GB available, two sessions of 2048 with an f16 cache.
        assert!(matches!(
            choose(&TINY_AYA, 2_400_000_000, total, 2, 512, 8192),
            Fit::Fits { n_ctx: 2048, kv_type: KvType::F16, .. }
        ));
        // Less: 1024 with a q8_0 cache before a context of 512.
        assert!(matches!(
            choose(&TINY_AYA, 1_990_000_000, total, 2, 512, 8192),
            Fit::Fits { n_ctx: 1024, kv_type: KvType::Q80, .. }
        ));
        assert_eq!(
            candidates(8192),
            vec![
                (4096, KvType::F16),
                (2048, KvType::F16),
                (1024, KvType::F16),
                (1024, KvType::Q80),
                (512, KvType::F16),
                (512, KvType::Q80)
            ]
        );
        // Under memory pressure it still runs, with the smallest context.
        assert!(matches!(
            choose(&TINY_AYA, 1_500_000_000, total, 2, 512, 8192),
            Fit::Tight { n_ctx: 512, kv_type: KvType::Q80, .. }
        ));
        // A 1 GB device cannot run it at all.
        assert!(matches!(choose(&TINY_AYA, 700_000_000, GIB, 2, 512, 8192), Fit::TooBig { .. }));
    }

    #[test]
    fn this_machine_takes_the_largest_context() {
        // 24 GB, mostly free.
        assert!(matches!(choose(&TINY_AYA, 22 * GIB, 24 * GIB, 2, 512, 8192), Fit::Fits { n_ctx: 4096, .. }));
    }

    #[test]
    fn never_above_the_training_context() {
        let small = Shape { file_size: 1 << 20, ..TINY_AYA };
        assert!(matches!(choose(&small, 22 * GIB, 24 * GIB, 2, 512, 2048), Fit::Fits { n_ctx: 2048, .. }));
    }
}
