//! Errors: every subsystem's error mapped, in this one place, to the WIT
//! variant the guest sees; the runtime's own error; and a sentence for
//! each error the guest returns to the app.

use crate::bindings::app::{AppError, SetupError};
use crate::bindings::download::{DownloadError as WitDownloadError, SizeMismatch};
use crate::bindings::inference::{ContextFull, InferenceError};
use crate::bindings::types::{FileError, QuotaExceeded, Root};
use crate::download::DownloadError;
use crate::fs::FsError;
use crate::guest::GuestError;
use crate::hashing::HashError;
use crate::llama::LlamaError;
use crate::warmup::WarmupError;

impl From<LlamaError> for InferenceError {
    fn from(e: LlamaError) -> Self {
        match e {
            LlamaError::NoModel => InferenceError::NoModel,
            e @ LlamaError::Load { .. } => InferenceError::LoadFailed(e.to_string()),
            LlamaError::InvalidArgument(s) => InferenceError::InvalidArgument(s),
            LlamaError::Limit(s) => InferenceError::LimitExceeded(s),
            LlamaError::ContextFull { used, requested, capacity } => {
                InferenceError::ContextFull(ContextFull { used, requested, capacity })
            }
            LlamaError::Decode(s) => InferenceError::DecodeFailed(s),
            LlamaError::Cancelled => InferenceError::Cancelled,
            LlamaError::State(s) => InferenceError::File(FileError::Io(s)),
            e @ LlamaError::Panicked(_) => InferenceError::DecodeFailed(e.to_string()),
        }
    }
}

impl From<FsError> for FileError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::NotFound(m) => FileError::NotFound(m),
            FsError::NotPermitted(m) => FileError::NotPermitted(m),
            FsError::Quota { root, limit, used, requested } => FileError::QuotaExceeded(QuotaExceeded {
                root: if root == "models" { Root::Models } else { Root::State },
                limit,
                used,
                requested,
            }),
            e @ FsError::DiskFull(_) => FileError::Io(e.to_string()),
            FsError::Io(m) => FileError::Io(m),
        }
    }
}

impl From<FsError> for InferenceError {
    fn from(e: FsError) -> Self {
        InferenceError::File(e.into())
    }
}

impl From<HashError> for FileError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::NotFound(m) => FileError::NotFound(m),
            HashError::Io(m) => FileError::Io(m),
            HashError::Cancelled => FileError::Cancelled,
        }
    }
}

impl From<WarmupError> for FileError {
    fn from(e: WarmupError) -> Self {
        match e {
            WarmupError::Io(m) => FileError::Io(m),
            WarmupError::Cancelled => FileError::Cancelled,
        }
    }
}

impl From<DownloadError> for WitDownloadError {
    fn from(e: DownloadError) -> Self {
        match e {
            DownloadError::NotAllowed(m) => WitDownloadError::NotAllowed(m),
            DownloadError::NoNetwork(m) => WitDownloadError::NoNetwork(m),
            DownloadError::NotFound(s) => WitDownloadError::NotFound(s),
            DownloadError::Http(s) => WitDownloadError::HttpError(s),
            e @ DownloadError::Interrupted { .. } => WitDownloadError::Interrupted(e.to_string()),
            DownloadError::SizeMismatch { server, expected } => {
                WitDownloadError::SizeMismatch(SizeMismatch { server, expected })
            }
            DownloadError::DiskFull { .. } => WitDownloadError::DiskFull,
            DownloadError::TooLarge(m) => WitDownloadError::TooLarge(m),
            DownloadError::Io(m) => WitDownloadError::Io(m),
            DownloadError::Cancelled => WitDownloadError::Cancelled,
        }
    }
}

impl From<FsError> for WitDownloadError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::DiskFull(_) => WitDownloadError::DiskFull,
            e @ FsError::Quota { .. } => WitDownloadError::TooLarge(e.to_string()),
            e => WitDownloadError::Io(e.to_string()),
        }
    }
}

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The guest could not be loaded.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The guest answered with an error.
    #[error("{}", describe(.0))]
    App(AppError),
    /// The guest trapped (a bug, the memory cap, or the time budget); the
    /// instance is unusable and must be restarted.
    #[error("the guest failed: {0}")]
    Trap(String),
    /// The inference engine could not start.
    #[error(transparent)]
    Engine(#[from] LlamaError),
    /// A folder could not be prepared.
    #[error("{0}")]
    Setup(String),
    /// Getting the model failed.
    #[error("{}", describe_setup(.0))]
    ModelSetup(SetupError),
}

impl RuntimeError {
    /// The guest's error, if that is what this is.
    pub fn app(&self) -> Option<&AppError> {
        match self {
            RuntimeError::App(e) => Some(e),
            _ => None,
        }
    }
}

/// A human sentence for an app error.
pub fn describe(e: &AppError) -> String {
    match e {
        AppError::NotReady => "no model is loaded".into(),
        AppError::LoadFailed(m) => format!("model load failed: {m}"),
        AppError::NoChatTemplate(m) => format!("no chat template: {m}"),
        AppError::InputTooLong(t) => format!(
            "the message is too long: it needs {} prompt tokens, the context takes at most {}",
            t.tokens, t.limit
        ),
        AppError::Busy => "busy: a reply is still being generated".into(),
        AppError::InvalidArgument(m) => format!("invalid argument: {m}"),
        AppError::Inference(m) => format!("inference failed: {m}"),
        AppError::Io(m) => format!("i/o error: {m}"),
    }
}

/// A human sentence for a setup error.
pub fn describe_setup(e: &SetupError) -> String {
    match e {
        SetupError::NotAllowed(m) => format!("download not allowed by the host's network policy: {m}"),
        SetupError::NoNetwork(m) => format!("no network: {m}"),
        SetupError::NotFound(s) => format!("the model was not found on the server (HTTP {s})"),
        SetupError::HttpError(s) => format!("the server answered HTTP {s}"),
        SetupError::InsufficientStorage(s) => {
            format!("not enough free space: {} bytes needed, {} available", s.needed, s.available)
        }
        SetupError::VerificationFailed(m) => format!("verification failed: {m}"),
        SetupError::Cancelled => "cancelled (a partial download is kept and resumes next time)".into(),
        SetupError::Io(m) => format!("i/o error: {m}"),
        SetupError::InvalidSpec(m) => format!("invalid model spec: {m}"),
        SetupError::NotDownloaded => "the model is not on this device yet: run `bittybot download`".into(),
    }
}
