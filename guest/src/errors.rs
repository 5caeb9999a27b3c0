//! Errors: each of the guest's error sources mapped, in this one place, to
//! the WIT error the app sees, and a sentence for each host error.

use crate::host::{DownloadError, FileError, InferenceError};
use crate::template::TemplateError;
use crate::wit::app::AppError;

/// A sentence for an inference error.
pub fn inference(e: &InferenceError) -> String {
    match e {
        InferenceError::NoModel => "no model is loaded".into(),
        InferenceError::LoadFailed(m)
        | InferenceError::InvalidArgument(m)
        | InferenceError::LimitExceeded(m)
        | InferenceError::DecodeFailed(m) => m.clone(),
        InferenceError::ContextFull(c) => {
            format!("context full: {} tokens used + {} requested > {}", c.used, c.requested, c.capacity)
        }
        InferenceError::Cancelled => "cancelled".into(),
        InferenceError::File(f) => file(f),
    }
}

/// A sentence for a file error.
pub fn file(e: &FileError) -> String {
    match e {
        FileError::NotFound(m) => format!("{m}: no such file"),
        FileError::NotPermitted(m) | FileError::Io(m) => m.clone(),
        FileError::QuotaExceeded(q) => format!(
            "the {} folder's quota of {} bytes is used up ({} used, {} more needed)",
            match q.root {
                crate::host::Root::Models => "models",
                crate::host::Root::State => "state",
            },
            q.limit,
            q.used,
            q.requested
        ),
        FileError::Cancelled => "cancelled".into(),
    }
}

/// A sentence for a download error.
pub fn download(e: &DownloadError) -> String {
    match e {
        DownloadError::NotAllowed(m) => format!("not allowed: {m}"),
        DownloadError::NoNetwork(m) => format!("cannot connect: {m}"),
        DownloadError::NotFound(s) => format!("not found (HTTP {s})"),
        DownloadError::HttpError(s) => format!("HTTP error {s}"),
        DownloadError::Interrupted(m) => format!("connection lost: {m}"),
        DownloadError::SizeMismatch(m) => {
            format!("the server's file has {} bytes, expected {}", m.server, m.expected)
        }
        DownloadError::DiskFull => "no space left on the device".into(),
        DownloadError::TooLarge(m) => m.clone(),
        DownloadError::Io(m) => m.clone(),
        DownloadError::Cancelled => "cancelled".into(),
    }
}

impl From<InferenceError> for AppError {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::NoModel => AppError::NotReady,
            InferenceError::LoadFailed(m) => AppError::LoadFailed(m),
            InferenceError::InvalidArgument(m) => AppError::InvalidArgument(m),
            other => AppError::Inference(inference(&other)),
        }
    }
}

impl From<TemplateError> for AppError {
    fn from(e: TemplateError) -> Self {
        match e {
            TemplateError::Missing(m) => AppError::NoChatTemplate(m),
            TemplateError::Render(m) => AppError::InvalidArgument(m),
        }
    }
}

impl From<FileError> for AppError {
    fn from(e: FileError) -> Self {
        AppError::Io(file(&e))
    }
}
