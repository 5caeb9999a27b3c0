//! `bittybot:core/platform`: cancellation requests and device facts.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::bindings::platform::{self as wit, CpuTopology, MemoryInfo};
use crate::bindings::types::Root;
use crate::device;
use crate::fs::Folders;
use crate::llama::ffi::AbortFlag;

/// What the platform interface needs.
pub struct PlatformCtx {
    cancel: AbortFlag,
    sysfs_cpu: PathBuf,
    folders: Folders,
    /// Pretend the disk has this many free bytes (tests of the storage preflight).
    #[cfg(feature = "test-hooks")]
    pub free_space_override: Option<u64>,
}

impl PlatformCtx {
    /// Platform facts from the real sysfs (or `sysfs_cpu`, for tests).
    pub fn new(cancel: AbortFlag, sysfs_cpu: Option<PathBuf>, folders: Folders) -> Self {
        PlatformCtx {
            cancel,
            sysfs_cpu: sysfs_cpu.unwrap_or_else(|| device::SYSFS_CPU.into()),
            folders,
            #[cfg(feature = "test-hooks")]
            free_space_override: None,
        }
    }
}

impl wit::Host for PlatformCtx {
    fn cancel_requested(&mut self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn read_cpu_topology(&mut self) -> CpuTopology {
        device::cpu_topology_at(&self.sysfs_cpu)
    }

    fn free_space(&mut self, folder: Root) -> Result<u64, String> {
        #[cfg(feature = "test-hooks")]
        if let Some(bytes) = self.free_space_override {
            return Ok(bytes);
        }
        self.folders.folder(folder).free().map_err(|e| e.to_string())
    }

    fn read_memory(&mut self) -> MemoryInfo {
        device::memory()
    }
}
