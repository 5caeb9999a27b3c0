//! llama.cpp, behind one engine.
//!
//! The engine (`engine.rs`) owns the context, the sampler chains and the KV
//! snapshots, and runs each import's call on the caller's thread under a
//! lock and `catch_unwind`. The model and its vocabulary are read-only, so
//! tokenization needs no lock.
//!
//! Every input from the guest is checked before it reaches llama.cpp
//! (`context.rs`, `sampler.rs`): token ids, sequence ids, positions, batch
//! sizes, sampler parameters, sizes against the host's limits. The calls that
//! can throw go through a C++ shim that turns exceptions into errors (`ffi/`).

mod context;
mod engine;
pub mod ffi;
pub mod log;
mod sampler;
pub mod tokenize;

use std::sync::OnceLock;

pub use context::{ModelContext, StateFile};
pub use engine::{Engine, EngineState};
pub use sampler::{HostObjects, chain_links};

impl From<crate::bindings::inference::KvType> for ffi::KvStorage {
    fn from(t: crate::bindings::inference::KvType) -> Self {
        use crate::bindings::inference::KvType;
        match t {
            KvType::F16 => ffi::KvStorage::F16,
            KvType::Q80 => ffi::KvStorage::Q8_0,
        }
    }
}

/// The llama.cpp version this host is built with (the llama-cpp-sys-2 crate
/// pins one llama.cpp commit).
pub const LLAMA_CPP_VERSION: &str = env!("BITTYBOT_LLAMA_CPP_VERSION");

/// Errors of the inference engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaError {
    /// No model is loaded.
    #[error("no model is loaded")]
    NoModel,
    /// The model could not be loaded (the text names the file by its guest name).
    #[error("cannot load {name}: {reason}")]
    Load {
        /// The file, as the guest names it.
        name: String,
        /// Why.
        reason: String,
    },
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A limit of the embedding app was reached.
    #[error("limit reached: {0}")]
    Limit(String),
    /// A sequence has no room.
    #[error("sequence is full: {used} tokens used + {requested} requested > {capacity}")]
    ContextFull {
        /// Tokens in the sequence.
        used: u32,
        /// Tokens asked for.
        requested: u32,
        /// Capacity.
        capacity: u32,
    },
    /// llama.cpp failed to evaluate a batch.
    #[error("decode failed: {0}")]
    Decode(String),
    /// The app cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A saved state is unusable.
    #[error("{0}")]
    State(String),
    /// A call into llama.cpp panicked (the context was dropped).
    #[error("{0}")]
    Panicked(String),
}

/// Start llama.cpp once per process (its log goes to `log`).
pub fn backend() {
    static BACKEND: OnceLock<()> = OnceLock::new();
    BACKEND.get_or_init(|| {
        log::install();
        ffi::backend_init();
    });
}
