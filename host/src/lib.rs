//! BittyBot's native host: runs the guest component (all app policy) in
//! wasmtime and gives it llama.cpp inference, device facts and, later,
//! downloads and page warmup as imported WIT functions.
//!
//! The `bittybot` CLI (`src/main.rs`) and the Android JNI library are thin
//! layers over [`Runtime`].

pub mod bench;
pub mod bindings;
pub mod device;
pub mod download;
pub mod folders;
pub mod gguf;
pub mod guest;
pub mod hashing;
pub mod imports;
pub mod jobs;
pub mod llama;
pub mod quantize;
pub mod runtime;
pub mod service;
pub mod warmup;

pub use bindings::app::{
    AppError, GenerationStats, InputTooLong, LoadOptions, LoadReport, Message, ModelReady, ModelSpec,
    RenderedPrompt, SessionKind, SessionOptions, SetupError, SetupProgress, SetupState, StopReason,
    VerifiedBy,
};
pub use bindings::inference::{LoadSettings, ModelInfo};
pub use bindings::types::ModelSource;
pub use guest::{CacheOutcome, GuestError, GuestPolicy, GuestSource};
pub use runtime::{
    CancelHandle, Generation, ModelSetup, Runtime, RuntimeError, RuntimeOptions, Session, StartReport,
    describe_setup,
};
pub use service::{
    ErrorKind, ReadyInfo, ReplyListener, Service, ServiceError, ServiceOptions, ServiceState, StateListener,
};

impl LoadOptions {
    /// Load the model the host was given, with every setting left to the guest.
    pub fn provided() -> Self {
        LoadOptions {
            source: ModelSource::Provided,
            n_ctx: None,
            n_batch: None,
            threads: None,
            threads_batch: None,
            use_mmap: None,
        }
    }
}

impl SessionOptions {
    /// No changes.
    pub fn unchanged() -> Self {
        SessionOptions {
            max_tokens: None,
            temperature: None,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: None,
            seed: None,
            stop_strings: None,
            system_prompt: None,
            logit_bias: None,
            rewarm: None,
            prefix_cache: None,
        }
    }
}
