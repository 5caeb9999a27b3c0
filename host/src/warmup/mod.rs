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

/// Errors of warmup and residency.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarmupError {
    /// The file is missing or unreadable.
    #[error("{0}")]
    Io(String),
    /// Stopped on request.
    #[error("cancelled")]
    Cancelled,
}
