//! What the guest needs from the host: one trait per imported WIT interface
//! (`inference`, `storage`, `platform`, and `files` with `download`).
//!
//! The records and errors are the WIT's own generated types (`crate::wit`),
//! so each is defined once. `imports.rs` implements the traits over the real
//! imports; `testing.rs` implements them over fakes, so every policy module
//! runs natively under `cargo test -p bittybot-guest`.

use crate::wit::{download, files, inference, platform, types};

pub use download::{DownloadError, Request as TransferRequest, TransferState};
pub use files::{HashState, WarmOrder, WarmupState};
pub use inference::{InferenceError, KvType, LoadSettings, ModelInfo, ModelShape, SamplerConfig, SavedState};
pub use platform::{CpuCore, CpuTopology, MemoryInfo};
pub use types::{FileError, ModelSource, Root};

/// A token id of the loaded model.
pub type Token = i32;

/// Size and modification time of a file in one of the guest's folders.
pub use crate::wit::storage::FileStat;

/// The inference interface: tokens, decoding, the KV sequences, samplers.
pub trait Engine {
    /// A sampler chain on the host.
    type Sampler: Sampler;
    /// A KV snapshot kept in host memory.
    type Snapshot;

    /// A model file's shape from its header.
    fn inspect(&self, source: &ModelSource) -> Result<ModelShape, InferenceError>;
    /// Load a model, replacing the loaded one.
    fn load(&self, source: &ModelSource, settings: LoadSettings) -> Result<ModelInfo, InferenceError>;
    /// Free the model.
    fn unload(&self);
    /// Tokenize text (no BOS); `parse_special` turns control-token text into control tokens.
    fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<Token>, InferenceError>;
    /// The bytes a token shows as (control tokens show nothing unless `special`).
    fn token_bytes(&self, token: Token, special: bool) -> Vec<u8>;
    /// The id of the token spelled exactly `text`.
    fn token_id(&self, text: &str) -> Option<Token>;
    /// Whether the vocabulary marks the token as end-of-generation.
    fn is_eog(&self, token: Token) -> bool;
    /// Evaluate tokens at the end of a sequence.
    fn decode(&self, seq: u32, tokens: &[Token]) -> Result<(), InferenceError>;
    /// Positions used in a sequence.
    fn kv_len(&self, seq: u32) -> u32;
    /// Empty a sequence.
    fn kv_clear(&self, seq: u32);
    /// Remove positions [p0, p1) (to the end when `p1` is none).
    fn kv_remove(&self, seq: u32, p0: u32, p1: Option<u32>) -> bool;
    /// Move positions [p0, p1) by `delta`.
    fn kv_shift(&self, seq: u32, p0: u32, p1: Option<u32>, delta: i32);
    /// A new sampler chain.
    fn sampler(&self, config: &SamplerConfig) -> Result<Self::Sampler, InferenceError>;
    /// Copy a sequence into host memory.
    fn snapshot(&self, seq: u32) -> Result<Self::Snapshot, InferenceError>;
    /// Replace a sequence with a copy.
    fn restore(&self, snapshot: &Self::Snapshot, seq: u32) -> Result<(), InferenceError>;
    /// Save a sequence and its tokens to a file in the state folder.
    fn state_save(&self, seq: u32, name: &str, tokens: &[Token]) -> Result<SavedState, InferenceError>;
    /// Replace a sequence with a saved one (checked against `sha256`); its tokens.
    fn state_load(&self, seq: u32, name: &str, sha256: Option<&str>) -> Result<Vec<Token>, InferenceError>;
}

/// A sampler chain.
pub trait Sampler {
    /// Pick (and record) the next token from the last decoded logits.
    fn sample(&mut self) -> Result<Token, InferenceError>;
}

/// The storage interface: the guest's small files and folder management.
pub trait Storage {
    /// A file's size and modification time, if it exists.
    fn stat(&self, root: Root, name: &str) -> Result<Option<FileStat>, FileError>;
    /// The regular files of a folder, sorted.
    fn list(&self, root: Root) -> Result<Vec<String>, FileError>;
    /// A whole small file.
    fn read(&self, root: Root, name: &str) -> Result<Vec<u8>, FileError>;
    /// Replace a file atomically.
    fn write(&self, root: Root, name: &str, bytes: &[u8]) -> Result<(), FileError>;
    /// Delete a file; false when there was none.
    fn remove(&self, root: Root, name: &str) -> Result<bool, FileError>;
    /// Rename a file inside a folder.
    fn rename(&self, root: Root, from: &str, to: &str) -> Result<(), FileError>;
}

/// The platform interface: the app's cancel request and device facts.
pub trait Platform {
    /// Whether the app asked to cancel.
    fn cancel_requested(&self) -> bool;
    /// The CPUs.
    fn cpu_topology(&self) -> CpuTopology;
    /// The memory.
    fn memory(&self) -> MemoryInfo;
    /// Bytes the guest may still add to a folder.
    fn free_space(&self, root: Root) -> Result<u64, String>;
}

/// A background job the guest polls.
pub trait Job<S, E> {
    /// Wait up to `ms` for the end; else progress.
    fn wait(&self, ms: u32) -> Result<S, E>;
    /// Ask it to stop.
    fn cancel(&self);
}

/// The files and download interfaces: long jobs on model files.
pub trait Jobs {
    /// A hash job.
    type Hasher: Job<HashState, FileError>;
    /// A warmup pass.
    type Warmup: Job<WarmupState, FileError>;
    /// A download attempt.
    type Transfer: Job<TransferState, DownloadError>;

    /// Start hashing a model file.
    fn hasher(&self, source: &ModelSource) -> Self::Hasher;
    /// Start bringing a model file's pages into memory.
    fn warmup(&self, source: &ModelSource, order: WarmOrder) -> Self::Warmup;
    /// Start one download attempt.
    fn transfer(&self, request: &TransferRequest) -> Self::Transfer;
    /// Fraction of a model file's pages in memory.
    fn residency(&self, source: &ModelSource) -> Result<f32, FileError>;
}

/// Everything the host provides.
pub trait Host: Engine + Storage + Platform + Jobs {}

impl<T: Engine + Storage + Platform + Jobs> Host for T {}

/// The guest's name of a file in one of its folders (`state/settings.json`).
pub fn path(root: Root, name: &str) -> String {
    let folder = match root {
        Root::Models => "models",
        Root::State => "state",
    };
    format!("{folder}/{name}")
}
