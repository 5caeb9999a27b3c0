//! SHA-256 of files at disk speed, with progress and cancellation.
//!
//! Bulk hashing uses `ring`'s SHA-256 rather than `sha2`: without SHA
//! instructions (this x86 machine) ring's assembly is faster than sha2's
//! portable code, and ring is already linked for TLS. On ARMv8 both use the
//! CPU's SHA-2 instructions.

use std::io::Read;
use std::path::Path;

use crate::guest::hex;

/// Incremental SHA-256.
#[derive(Clone)]
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// An empty hash.
    pub fn new() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }

    /// Add bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest, lowercase hex.
    pub fn finalize_hex(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

/// Bytes read per step: large enough to amortise syscalls, small enough
/// that cancellation and progress stay responsive.
pub const CHUNK: usize = 4 << 20;

/// Errors of hashing a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// No such file.
    #[error("{0}: no such file")]
    NotFound(String),
    /// A read failed.
    #[error("{0}")]
    Io(String),
    /// Stopped on request.
    #[error("cancelled")]
    Cancelled,
}

/// Feed the first `len` bytes of `reader` into `hasher`, calling `step`
/// with the bytes done after each chunk; `step` returning false cancels.
pub fn hash_prefix(
    reader: &mut impl Read,
    len: u64,
    hasher: &mut Sha256,
    mut step: impl FnMut(u64) -> bool,
) -> Result<(), HashError> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(CHUNK as u64) as usize;
        let n = reader.read(&mut buf[..want]).map_err(|e| HashError::Io(e.kind().to_string()))?;
        if n == 0 {
            return Err(HashError::Io(format!("file ended after {done} of {len} bytes")));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if !step(done) {
            return Err(HashError::Cancelled);
        }
    }
    Ok(())
}

/// SHA-256 (lowercase hex) of a whole file; `step(done, total)` after each
/// chunk, returning false to cancel.
pub fn hash_file(path: &Path, step: impl FnMut(u64, u64) -> bool) -> Result<String, HashError> {
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HashError::NotFound(path.display().to_string()),
        _ => HashError::Io(format!("{}: {e}", path.display())),
    })?;
    hash_open(&mut file, step)
}

/// SHA-256 (lowercase hex) of an open file, from its start.
pub fn hash_open(
    file: &mut std::fs::File,
    mut step: impl FnMut(u64, u64) -> bool,
) -> Result<String, HashError> {
    use std::io::Seek;
    let total = file.metadata().map_err(|e| HashError::Io(e.kind().to_string()))?.len();
    file.seek(std::io::SeekFrom::Start(0)).map_err(|e| HashError::Io(e.kind().to_string()))?;
    advise_sequential(file);
    let mut hasher = Sha256::new();
    hash_prefix(file, total, &mut hasher, |done| step(done, total))?;
    Ok(hasher.finalize_hex())
}

/// SHA-256 (lowercase hex) of bytes in memory.
pub fn hash_bytes(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finalize_hex()
}

/// Tell the kernel we read front to back (larger read-ahead).
fn advise_sequential(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the lifetime of `file`; the call
    // only sets an advisory flag on it.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hash_file(&p, |_, _| true).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::write(&p, vec![7u8; CHUNK * 2 + 3]).unwrap();
        let mut calls = Vec::new();
        let digest = hash_file(&p, |d, t| {
            calls.push((d, t));
            true
        })
        .unwrap();
        let mut h = Sha256::new();
        h.update(&vec![7u8; CHUNK * 2 + 3]);
        assert_eq!(digest, h.finalize_hex());
        assert_eq!(calls.last(), Some(&((CHUNK * 2 + 3) as u64, (CHUNK * 2 + 3) as u64)));
        assert_eq!(hash_file(&p, |_, _| false), Err(HashError::Cancelled));
        assert!(matches!(hash_file(&dir.path().join("nope"), |_, _| true), Err(HashError::NotFound(_))));
    }
}
