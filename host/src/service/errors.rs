//! The service's errors: a stable kind an app branches on, and a sentence.

use crate::bindings::app::{AppError, SetupError};
use crate::errors::RuntimeError;

/// What went wrong, as a stable string an app can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No model is loaded (it is still loading, or loading failed).
    NotReady,
    /// The model file could not be loaded.
    LoadFailed,
    /// No model was given and none is on the device.
    NoModel,
    /// The model has no chat template and no built-in format applies.
    NoChatTemplate,
    /// The message does not fit in the context.
    InputTooLong,
    /// A reply is still being generated.
    Busy,
    /// An argument is invalid (null, unknown session kind, unknown language…).
    InvalidArgument,
    /// The inference engine failed.
    Inference,
    /// A file operation failed.
    Io,
    /// The guest could not be loaded, is incompatible, or trapped.
    Guest,
    /// The turn was cancelled before it started.
    Cancelled,
    /// The service (or the handle) is closed.
    Closed,
    /// The host's network policy does not allow the model's download location.
    NotAllowed,
    /// No network (model download).
    NoNetwork,
    /// The server does not have the model file (404/410).
    NotFound,
    /// The server answered with another error status (model download).
    Http,
    /// Not enough free space (model download).
    InsufficientStorage,
    /// The model file's size or SHA-256 is wrong.
    VerificationFailed,
    /// A listener failed (e.g. a Java callback threw); the turn was cancelled.
    Listener,
    /// A bug: native code panicked.
    Panic,
}

impl ErrorKind {
    /// The stable name (kebab case), e.g. `load-failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotReady => "not-ready",
            ErrorKind::LoadFailed => "load-failed",
            ErrorKind::NoModel => "no-model",
            ErrorKind::NoChatTemplate => "no-chat-template",
            ErrorKind::InputTooLong => "input-too-long",
            ErrorKind::Busy => "busy",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::Inference => "inference",
            ErrorKind::Io => "io",
            ErrorKind::Guest => "guest",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Closed => "closed",
            ErrorKind::NotAllowed => "not-allowed",
            ErrorKind::NoNetwork => "no-network",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Http => "http",
            ErrorKind::InsufficientStorage => "insufficient-storage",
            ErrorKind::VerificationFailed => "verification-failed",
            ErrorKind::Listener => "listener",
            ErrorKind::Panic => "panic",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the service: a kind to branch on and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ServiceError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Why, for people and logs.
    pub message: String,
}

impl ServiceError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError { kind, message: message.into() }
    }

    pub(crate) fn closed() -> Self {
        ServiceError::new(ErrorKind::Closed, "the service is closed")
    }
}

impl From<RuntimeError> for ServiceError {
    fn from(e: RuntimeError) -> Self {
        let kind = match &e {
            RuntimeError::Guest(_) | RuntimeError::Trap(_) => ErrorKind::Guest,
            RuntimeError::App(app) => match app {
                AppError::NotReady => ErrorKind::NotReady,
                AppError::LoadFailed(_) => ErrorKind::LoadFailed,
                AppError::NoChatTemplate(_) => ErrorKind::NoChatTemplate,
                AppError::InputTooLong(_) => ErrorKind::InputTooLong,
                AppError::Busy => ErrorKind::Busy,
                AppError::InvalidArgument(_) => ErrorKind::InvalidArgument,
                AppError::Inference(_) => ErrorKind::Inference,
                AppError::Io(_) => ErrorKind::Io,
            },
            RuntimeError::Engine(_) => ErrorKind::Inference,
            RuntimeError::Setup(_) => ErrorKind::Io,
            RuntimeError::ModelSetup(setup) => match setup {
                SetupError::NotAllowed(_) => ErrorKind::NotAllowed,
                SetupError::NoNetwork(_) => ErrorKind::NoNetwork,
                SetupError::NotFound(_) => ErrorKind::NotFound,
                SetupError::HttpError(_) => ErrorKind::Http,
                SetupError::InsufficientStorage(_) => ErrorKind::InsufficientStorage,
                SetupError::VerificationFailed(_) => ErrorKind::VerificationFailed,
                SetupError::Cancelled => ErrorKind::Cancelled,
                SetupError::Io(_) => ErrorKind::Io,
                SetupError::InvalidSpec(_) => ErrorKind::InvalidArgument,
                SetupError::NotDownloaded => ErrorKind::NoModel,
            },
        };
        ServiceError::new(kind, e.to_string())
    }
}
