//! HTTP(S) download into a `.part` file: resumable with `Range`, hashed
//! while written, fsynced at the end. One attempt per call; whether and when
//! to retry is the guest's policy.
//!
//! - The URL and every redirect hop are checked against the host's
//!   [`NetworkPolicy`] before they are requested; the connection goes only to
//!   addresses the policy allows (see `net.rs`).
//! - An existing `.part` is resumed: its bytes are hashed once (not
//!   downloaded again) and the request asks for the rest.
//! - A server that answers 200 to a range request sends the whole file: the
//!   `.part` is truncated and written from the start.
//! - Never more than the expected size is written.
//! - On any failure or cancellation the `.part` keeps every byte written, so
//!   the next attempt — in this process or after a restart — resumes.
//!   Cancelling shuts the connection down, so a stalled read ends at once.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use url::Url;

use crate::hashing::{CHUNK, Sha256, hash_prefix};
use crate::jobs::JobCtx;
use crate::net::{NetworkPolicy, PolicyResolver};

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;

/// What to download.
#[derive(Debug)]
pub struct DownloadRequest {
    /// The URL (checked against `policy`).
    pub url: String,
    /// The `.part` file, opened for appending.
    pub part: File,
    /// Its writing mark (it cannot be mapped while the transfer runs).
    pub writing: crate::fs::InUseGuard,
    /// The size the file must have.
    pub expected_size: u64,
    /// What may be fetched.
    pub policy: NetworkPolicy,
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
#[non_exhaustive]
pub enum DownloadError {
    /// The network policy refuses the URL or a redirect.
    #[error("not allowed: {0}")]
    NotAllowed(String),
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
    /// More than the host allows would be written.
    #[error("{0}")]
    TooLarge(String),
    /// A local file operation failed.
    #[error("{0}")]
    Io(String),
    /// Stopped on request (the `.part` is kept).
    #[error("cancelled")]
    Cancelled,
}

fn agent(policy: &NetworkPolicy) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .user_agent(concat!("bittybot/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        PolicyResolver::new(policy),
    )
}

fn io(e: std::io::Error) -> DownloadError {
    DownloadError::Io(e.kind().to_string())
}

/// `bytes START-END/TOTAL` → (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// GET `url`, following redirects only where the policy allows.
fn fetch(
    agent: &ureq::Agent,
    policy: &NetworkPolicy,
    url: &Url,
    from: Option<u64>,
    ctx: &JobCtx<Progress>,
) -> Result<ureq::http::Response<ureq::Body>, DownloadError> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        if ctx.cancelled() {
            return Err(DownloadError::Cancelled);
        }
        let mut request = agent.get(url.as_str());
        if let Some(from) = from {
            request = request.header("Range", format!("bytes={from}-"));
        }
        let response = request.call().map_err(|e| match e {
            _ if ctx.cancelled() => DownloadError::Cancelled,
            ureq::Error::ConnectionFailed => DownloadError::NotAllowed(format!(
                "{} resolves to no allowed address",
                url.host_str().unwrap_or("the host")
            )),
            e => DownloadError::NoNetwork(e.to_string()),
        })?;
        if !response.status().is_redirection() {
            return Ok(response);
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or(DownloadError::Http(response.status().as_u16()))?;
        let next = url.join(location).map_err(|e| DownloadError::NotAllowed(format!("bad redirect: {e}")))?;
        policy.check_redirect(&next).map_err(DownloadError::NotAllowed)?;
        url = next;
    }
    Err(DownloadError::NotAllowed(format!("more than {MAX_REDIRECTS} redirects")))
}

/// Run one attempt. Progress and cancellation go through `ctx`.
pub fn run(req: DownloadRequest, ctx: &JobCtx<Progress>) -> Result<Finished, DownloadError> {
    let url = req.policy.check_url(&req.url).map_err(DownloadError::NotAllowed)?;
    let mut part = req.part;
    let mut existing = part.metadata().map_err(io)?.len();
    if existing > req.expected_size {
        // Longer than the file can be: not ours to trust.
        part.set_len(0).map_err(io)?;
        existing = 0;
    }

    // Hash what is already there, once.
    let mut hasher = Sha256::new();
    ctx.progress(Progress { done: existing, total: Some(req.expected_size), resumed_from: existing });
    if existing > 0 {
        part.seek(SeekFrom::Start(0)).map_err(io)?;
        hash_prefix(&mut part, existing, &mut hasher, |_| !ctx.cancelled()).map_err(|e| match e {
            crate::hashing::HashError::Cancelled => DownloadError::Cancelled,
            other => DownloadError::Io(other.to_string()),
        })?;
    }
    if existing > 0 && existing == req.expected_size {
        // Complete already (e.g. stopped between the last byte and the rename).
        return Ok(Finished {
            bytes: existing,
            sha256: hasher.finalize_hex(),
            resumed_from: existing,
            restarted: false,
        });
    }

    let agent = agent(&req.policy);
    let shutdown = agent.clone();
    ctx.on_cancel(move || shutdown.clone().shutdown());
    let mut response = fetch(&agent, &req.policy, &url, (existing > 0).then_some(existing), ctx)?;
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
                response = fetch(&agent, &req.policy, &url, None, ctx)?;
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
    if let Some(server) = total {
        if server != req.expected_size {
            return Err(DownloadError::SizeMismatch { server, expected: req.expected_size });
        }
    }

    // Keep exactly the prefix the response continues from (all of it, or none after a restart).
    part.set_len(existing).map_err(io)?;
    part.seek(SeekFrom::Start(existing)).map_err(io)?;
    let resumed_from = existing;
    let mut done = existing;
    ctx.progress(Progress { done, total: Some(req.expected_size), resumed_from });
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; CHUNK.min(256 << 10)];
    let result = loop {
        if ctx.cancelled() {
            break Err(DownloadError::Cancelled);
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(_) if ctx.cancelled() => break Err(DownloadError::Cancelled),
            Err(e) => break Err(DownloadError::Interrupted { done, detail: e.to_string() }),
        };
        if done + n as u64 > req.expected_size {
            break Err(DownloadError::TooLarge(format!(
                "the server sent more than the expected {} bytes",
                req.expected_size
            )));
        }
        if let Err(e) = part.write_all(&buf[..n]) {
            break Err(if e.raw_os_error() == Some(libc::ENOSPC) {
                DownloadError::DiskFull { done }
            } else {
                io(e)
            });
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        ctx.progress(Progress { done, total: Some(req.expected_size), resumed_from });
    };
    // Whatever happened, what was written stays, durably, for the next attempt.
    let synced = part.sync_all();
    result?;
    synced.map_err(io)?;
    if done != req.expected_size {
        return Err(DownloadError::Interrupted {
            done,
            detail: format!("body ended at {done} of {} bytes", req.expected_size),
        });
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
