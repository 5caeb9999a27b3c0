//! HTTP(S) download into a `.part` file: resumable with `Range`, hashed
//! while written, fsynced at the end. One attempt per call; whether and when
//! to retry is the guest's policy.
//!
//! - An existing `.part` is resumed: its bytes are hashed once (not
//!   downloaded again) and the request asks for the rest.
//! - A server that answers 200 to a range request sends the whole file: the
//!   `.part` is truncated and written from the start.
//! - Redirects are followed (GitHub release URLs redirect to a CDN).
//! - On any failure or cancellation the `.part` keeps every byte written, so
//!   the next attempt — in this process or after a restart — resumes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::hashing::{CHUNK, Sha256, hash_prefix};
use crate::jobs::JobCtx;

/// What to download.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    /// http:// or https:// URL.
    pub url: String,
    /// The `.part` file.
    pub dest: PathBuf,
    /// The size the file must have, when known.
    pub expected_size: Option<u64>,
}

/// Progress of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes in the `.part` file.
    pub done: u64,
    /// Size of the whole file, once known.
    pub total: Option<u64>,
    /// Bytes that were already there when this attempt started.
    pub resumed_from: u64,
}

/// A completed transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// File size.
    pub bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Bytes reused from an earlier attempt.
    pub resumed_from: u64,
    /// The server ignored the range and the file was written from the start.
    pub restarted: bool,
}

/// Why a transfer stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    NoNetwork(String),
    /// 404 or 410.
    #[error("not found (HTTP {0})")]
    NotFound(u16),
    /// Any other HTTP error status.
    #[error("HTTP error {0}")]
    Http(u16),
    /// The connection broke during the body (the `.part` keeps what arrived).
    #[error("connection lost after {done} bytes: {detail}")]
    Interrupted {
        /// Bytes in the `.part`.
        done: u64,
        /// What happened.
        detail: String,
    },
    /// The server's file is not the expected size.
    #[error("the server's file has {server} bytes, expected {expected}")]
    SizeMismatch {
        /// Size announced by the server.
        server: u64,
        /// Size wanted.
        expected: u64,
    },
    /// The disk is full (the `.part` keeps what was written).
    #[error("no space left on the device after {done} bytes")]
    DiskFull {
        /// Bytes in the `.part`.
        done: u64,
    },
    /// A local file operation failed.
    #[error("{0}")]
    Io(String),
    /// Stopped on request (the `.part` is kept).
    #[error("cancelled")]
    Cancelled,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(10)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .user_agent(concat!("bittybot/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn io(e: std::io::Error) -> DownloadError {
    DownloadError::Io(e.to_string())
}

fn connect_error(e: ureq::Error) -> DownloadError {
    DownloadError::NoNetwork(e.to_string())
}

/// `bytes START-END/TOTAL` → (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Run one attempt. Progress and cancellation go through `ctx`.
pub fn run(req: &DownloadRequest, ctx: &JobCtx<Progress>) -> Result<Finished, DownloadError> {
    // Nothing is created until the server answers with the file: a 404 or a
    // refused connection leaves no stray `.part`.
    let mut existing = match std::fs::metadata(&req.dest) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(e)),
    };
    if req.expected_size.is_some_and(|s| existing > s) {
        // Longer than the file can be: not ours to trust.
        std::fs::remove_file(&req.dest).map_err(io)?;
        existing = 0;
    }

    // Hash what is already there, once.
    let mut hasher = Sha256::new();
    let total_hint = req.expected_size;
    ctx.progress(Progress { done: existing, total: total_hint, resumed_from: existing });
    if existing > 0 {
        let mut part = std::fs::File::open(&req.dest).map_err(io)?;
        hash_prefix(&mut part, existing, &mut hasher, |_| !ctx.cancelled()).map_err(|e| match e {
            crate::hashing::HashError::Cancelled => DownloadError::Cancelled,
            other => DownloadError::Io(other.to_string()),
        })?;
    }
    if existing > 0 && req.expected_size == Some(existing) {
        // Complete already (e.g. stopped between the last byte and the rename).
        return Ok(Finished {
            bytes: existing,
            sha256: hasher.finalize_hex(),
            resumed_from: existing,
            restarted: false,
        });
    }

    let agent = agent();
    let mut request = agent.get(&req.url);
    if existing > 0 {
        request = request.header("Range", format!("bytes={existing}-"));
    }
    let mut response = request.call().map_err(connect_error)?;
    let status = response.status().as_u16();
    // 206 with the range we asked for continues our prefix. Anything else
    // starts over from byte 0: a 200 is the whole file already; another
    // range, or a 416 (our prefix is not that file's), is fetched again
    // without a range.
    let (continued, refetch) = match status {
        206 => {
            let range = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            match range {
                Some((start, total)) if start == existing => (Some(total), false),
                _ => (None, true),
            }
        }
        200 => (None, false),
        416 => (None, true),
        s => {
            check_status(s)?;
            return Err(DownloadError::Http(s));
        }
    };
    let mut restarted = false;
    let total = match continued {
        Some(total) => total,
        None => {
            if refetch {
                drop(response);
                response = agent.get(&req.url).call().map_err(connect_error)?;
                check_status(response.status().as_u16())?;
            }
            if refetch || existing > 0 {
                existing = 0;
                hasher = Sha256::new();
                restarted = true;
            }
            response.body().content_length()
        }
    };
    let total = total.or(total_hint);
    if let (Some(server), Some(expected)) = (total, req.expected_size) {
        if server != expected {
            return Err(DownloadError::SizeMismatch { server, expected });
        }
    }

    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&req.dest).map_err(io)?;
    // Keep exactly the prefix the response continues from (all of it, or none after a restart).
    file.set_len(existing).map_err(io)?;
    file.seek(SeekFrom::Start(existing)).map_err(io)?;
    let resumed_from = existing;
    let mut done = existing;
    ctx.progress(Progress { done, total, resumed_from });
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; CHUNK.min(256 << 10)];
    let result = loop {
        if ctx.cancelled() {
            break Err(DownloadError::Cancelled);
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(DownloadError::Interrupted { done, detail: e.to_string() }),
        };
        if let Err(e) = file.write_all(&buf[..n]) {
            break Err(if e.raw_os_error() == Some(libc::ENOSPC) {
                DownloadError::DiskFull { done }
            } else {
                io(e)
            });
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        ctx.progress(Progress { done, total, resumed_from });
    };
    // Whatever happened, what was written stays, durably, for the next attempt.
    let synced = file.sync_all();
    result?;
    synced.map_err(io)?;
    if let Some(total) = total {
        if done != total {
            return Err(DownloadError::Interrupted {
                done,
                detail: format!("body ended at {done} of {total} bytes"),
            });
        }
    }
    Ok(Finished { bytes: done, sha256: hasher.finalize_hex(), resumed_from, restarted })
}

fn check_status(status: u16) -> Result<(), DownloadError> {
    match status {
        200..=299 => Ok(()),
        404 | 410 => Err(DownloadError::NotFound(status)),
        s => Err(DownloadError::Http(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
