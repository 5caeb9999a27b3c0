//! `bittybot:core/platform`: cancellation requests and device facts.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::bindings::platform::{self as wit, CpuCore, CpuTopology, MemoryInfo};
use crate::bindings::types::Root;
use crate::device;
use crate::folders::Folders;
use crate::llama::CancelFlag;

/// What the platform interface needs.
pub struct PlatformCtx {
    cancel: CancelFlag,
    sysfs_cpu: PathBuf,
    folders: Folders,
    /// Pretend the disk has this many free bytes (tests of the storage preflight).
    pub free_space_override: Option<u64>,
}

impl PlatformCtx {
    /// Platform facts from the real sysfs (or `sysfs_cpu`, for tests).
    pub fn new(cancel: CancelFlag, sysfs_cpu: Option<PathBuf>, folders: Folders) -> Self {
        PlatformCtx {
            cancel,
            sysfs_cpu: sysfs_cpu.unwrap_or_else(|| device::SYSFS_CPU.into()),
            folders,
            free_space_override: None,
        }
    }
}

impl wit::Host for PlatformCtx {
    fn cancel_requested(&mut self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn read_cpu_topology(&mut self) -> CpuTopology {
        let t = device::cpu_topology_at(&self.sysfs_cpu);
        CpuTopology {
            cores: t
                .cores
                .into_iter()
                .map(|c| CpuCore {
                    id: c.id,
                    online: c.online,
                    max_freq_khz: c.max_freq_khz,
                    capacity: c.capacity,
                    cluster: c.cluster,
                })
                .collect(),
            online: t.online,
        }
    }

    fn free_space(&mut self, folder: Root) -> Result<u64, String> {
        if let Some(bytes) = self.free_space_override {
            return Ok(bytes);
        }
        let dir = match folder {
            Root::Models => &self.folders.models,
            Root::State => &self.folders.state,
        };
        device::free_space(dir).map_err(|e| format!("{}: {e}", dir.display()))
    }

    fn read_memory(&mut self) -> MemoryInfo {
        let m = device::memory();
        MemoryInfo { total: m.total, available: m.available }
    }
}
