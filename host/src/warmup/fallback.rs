//! Platforms without `mincore`: residency is unknown and warmup is a plain
//! sequential read.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use super::{WarmupError, WarmupReport};

/// Unknown: report the file as resident so no policy re-warms in a loop.
pub fn residency(_file: &File) -> Result<f32, WarmupError> {
    Ok(1.0)
}

/// Read the file once, front to back (the order is not followed here).
pub fn warm_up(
    file: &File,
    _order: &[Range<u64>],
    mut step: impl FnMut(u64, u64) -> bool,
) -> Result<WarmupReport, WarmupError> {
    let start = Instant::now();
    let mut f = file;
    let total = f.metadata().map_err(|e| WarmupError::Io(e.kind().to_string()))?.len();
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| WarmupError::Io(e.kind().to_string()))?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if !step(done, total) {
            return Err(WarmupError::Cancelled);
        }
    }
    let millis = start.elapsed().as_secs_f64() * 1000.0;
    Ok(WarmupReport {
        bytes: total,
        millis,
        bytes_per_s: total as f64 / (millis / 1000.0).max(1e-9),
        residency_before: 1.0,
        residency_after: 1.0,
    })
}

/// Not possible here.
pub fn evict(_path: &Path) -> Result<f32, WarmupError> {
    Err(WarmupError::Io("eviction is not supported on this platform".into()))
}
