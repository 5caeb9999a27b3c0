//! Page warmup and residency of the memory-mapped model file.
//!
//! On the phone the kernel evicts the model's pages after a few minutes of
//! idle, and the next reply pays for reading them back one fault at a time
//! (TTFT 2 s → 5–20 s). These are the mechanisms the guest's policy uses:
//! how much of the file is in memory, bring it all back with one sequential
//! pass, and (for benchmarks) push it out again.

#[cfg(unix)]
mod linux;
#[cfg(unix)]
pub use linux::{evict, residency, warm_up};

#[cfg(not(unix))]
mod fallback;
#[cfg(not(unix))]
pub use fallback::{evict, residency, warm_up};

/// Result of a warmup pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupReport {
    /// Bytes of the file.
    pub bytes: u64,
    /// Wall time of the pass, ms.
    pub millis: f64,
    /// Bytes per second over the pass.
    pub bytes_per_s: f64,
    /// Fraction of pages in memory before.
    pub residency_before: f32,
    /// Fraction of pages in memory after.
    pub residency_after: f32,
}

/// The order a forward pass first needs a model's weights: the layers'
/// tensors (`blk.N.*`, by layer), then the rest (embeddings, output head).
/// With Tiny Aya's tied embedding the 400 MB `token_embd` is needed only
/// row by row until the output head at the very end; reading it first
/// would make the first layers wait.
pub fn forward_pass_order(gguf: &crate::gguf::Gguf) -> Vec<std::ops::Range<u64>> {
    let layer = |name: &str| -> Option<u32> { name.strip_prefix("blk.")?.split('.').next()?.parse().ok() };
    let mut tensors: Vec<(u32, u64, u64)> = gguf
        .tensors
        .iter()
        .map(|t| (layer(&t.name).unwrap_or(u32::MAX), t.offset, t.offset + t.size))
        .collect();
    tensors.sort_by_key(|t| (t.0, t.1));
    tensors.into_iter().map(|(_, a, b)| a..b).collect()
}

/// [`forward_pass_order`] of a GGUF file; no order (file order) when the
/// file is not a GGUF the reader accepts.
pub fn forward_pass_order_of(file: &std::fs::File) -> std::io::Result<Vec<std::ops::Range<u64>>> {
    let size = file.metadata()?.len();
    let mut reader = std::io::BufReader::new(file);
    Ok(crate::gguf::Gguf::read(&mut reader, size).map(|g| forward_pass_order(&g)).unwrap_or_default())
}

/// Errors of warmup and residency.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WarmupError {
    /// The file is missing or unreadable.
    #[error("{0}")]
    Io(String),
    /// Stopped on request.
    #[error("cancelled")]
    Cancelled,
}
