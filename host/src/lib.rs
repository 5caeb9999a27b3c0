//! BittyBot's native host: runs the guest component (all app policy) in
//! wasmtime and gives it llama.cpp inference, storage, device facts,
//! downloads and page warmup as imported WIT functions, under the limits
//! and the network policy the embedding app sets. The guest is untrusted
//! code: a swapped or signed guest can still have a bug or come from a
//! leaked key, so no import trusts what it is given (README, "Guest
//! swapping and the sandbox").
//!
//! [`Runtime`] runs one guest; [`Service`] puts it on its own thread for
//! apps (the Android JNI library is a thin layer over it). The `bittybot`
//! CLI and the release tools are in the `bittybot-tools` crate.

pub mod bindings;
pub mod device;
pub mod download;
pub mod errors;
pub mod fs;
pub mod gguf;
pub mod guest;
pub mod hashing;
pub mod imports;
pub mod jobs;
pub mod limits;
pub mod llama;
pub mod net;
pub mod runtime;
pub mod service;
pub mod sessions;
pub mod setup;
pub mod warmup;

pub use bindings::app::{
    AppError, GenerationStats, InputTooLong, LoadOptions, LoadReport, MemoryOutlook, Message, ModelReady,
    ModelSpec, RenderedPrompt, SessionKind, SessionOptions, SetupError, SetupProgress, SetupState,
    StopReason, VerifiedBy,
};
pub use bindings::inference::{KvType, LoadSettings, ModelInfo};
pub use bindings::types::ModelSource;
pub use errors::{RuntimeError, describe, describe_setup};
pub use guest::{CacheOutcome, GuestError, GuestPolicy, GuestSource};
pub use limits::Limits;
pub use net::NetworkPolicy;
pub use runtime::{
    CancelHandle, Generation, ModelSetup, Reply, Runtime, RuntimeOptions, Session, StartReport,
};
pub use service::{
    ErrorKind, ReadyInfo, ReplyListener, Service, ServiceError, ServiceOptions, ServiceState, StateListener,
};
pub use sessions::Sessions;
pub use setup::SetupMode;

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

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
