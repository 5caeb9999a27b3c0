//! `bittybot:core/files`: SHA-256 of model files in the background.

use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::files::{self as wit, FileError, FileProgress, HashState, WarmupReport, WarmupState};
use crate::bindings::types::ModelSource;
use crate::folders::Folders;
use crate::hashing::{HashError, hash_file};
use crate::jobs::{Job, Poll};
use crate::llama::CancelFlag;

/// The host data behind a guest `hasher`.
pub type HashJob = Job<(u64, u64), Result<String, HashError>>;
/// The host data behind a guest `warmup`.
pub type WarmupJob = Job<(u64, u64), Result<crate::warmup::WarmupReport, crate::warmup::WarmupError>>;

/// What the files interface needs.
pub struct FilesCtx {
    folders: Folders,
    cancel: CancelFlag,
    table: ResourceTable,
    live: usize,
    /// Hash jobs started (the verified fast path is observable through it).
    pub hashes_started: u64,
}

impl FilesCtx {
    /// A context over the guest's folders.
    pub fn new(folders: Folders, cancel: CancelFlag) -> Self {
        FilesCtx { folders, cancel, table: ResourceTable::new(), live: 0, hashes_started: 0 }
    }
}

fn file_error(e: HashError) -> FileError {
    match e {
        HashError::NotFound(m) => FileError::NotFound(m),
        HashError::Io(m) => FileError::Io(m),
        HashError::Cancelled => FileError::Cancelled,
    }
}

impl wit::Host for FilesCtx {
    fn residency(&mut self, source: ModelSource) -> Result<f32, FileError> {
        let path = self.folders.model_path(&source).map_err(|e| FileError::Io(e.to_string()))?;
        crate::warmup::residency(&path).map_err(warmup_error)
    }
}

fn warmup_error(e: crate::warmup::WarmupError) -> FileError {
    match e {
        crate::warmup::WarmupError::Io(m) => FileError::Io(m),
        crate::warmup::WarmupError::Cancelled => FileError::Cancelled,
    }
}

impl wit::HostWarmup for FilesCtx {
    fn new(&mut self, source: ModelSource) -> wasmtime::Result<Resource<WarmupJob>> {
        if self.live >= crate::jobs::MAX_LIVE {
            wasmtime::bail!("the guest holds more than {} background jobs", crate::jobs::MAX_LIVE);
        }
        self.live += 1;
        let path = self.folders.model_path(&source);
        // Not tied to the app's cancel flag: a reply being cancelled must not
        // stop a background warmup; the guest cancels it explicitly.
        let job = Job::spawn("warmup", (0, 0), None, move |ctx| {
            let path = path.map_err(|e| crate::warmup::WarmupError::Io(e.to_string()))?;
            crate::warmup::warm_up(&path, |done, total| {
                ctx.progress((done, total));
                !ctx.cancelled()
            })
        })?;
        Ok(self.table.push(job)?)
    }

    fn wait(&mut self, this: Resource<WarmupJob>, timeout_ms: u32) -> Result<WarmupState, FileError> {
        let job = self.table.get(&this).map_err(|e| FileError::Io(e.to_string()))?;
        match job.wait(Duration::from_millis(timeout_ms.min(10_000) as u64)) {
            Poll::Running((done, total)) => Ok(WarmupState::Running(FileProgress { done, total })),
            Poll::Done(Ok(r)) => Ok(WarmupState::Done(WarmupReport {
                bytes: r.bytes,
                millis: r.millis,
                bytes_per_s: r.bytes_per_s,
                residency_before: r.residency_before,
                residency_after: r.residency_after,
            })),
            Poll::Done(Err(e)) => Err(warmup_error(e)),
        }
    }

    fn cancel(&mut self, this: Resource<WarmupJob>) {
        if let Ok(job) = self.table.get(&this) {
            job.cancel();
        }
    }

    fn drop(&mut self, rep: Resource<WarmupJob>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.live -= 1;
        Ok(())
    }
}

impl wit::HostHasher for FilesCtx {
    fn new(&mut self, source: ModelSource) -> wasmtime::Result<Resource<HashJob>> {
        if self.live >= crate::jobs::MAX_LIVE {
            wasmtime::bail!("the guest holds more than {} hash jobs", crate::jobs::MAX_LIVE);
        }
        self.live += 1;
        self.hashes_started += 1;
        let path = self.folders.model_path(&source);
        let job = Job::spawn("hash", (0, 0), Some(self.cancel.clone()), move |ctx| {
            let path = path.map_err(|e| HashError::Io(e.to_string()))?;
            hash_file(&path, |done, total| {
                ctx.progress((done, total));
                !ctx.cancelled()
            })
        })?;
        Ok(self.table.push(job)?)
    }

    fn wait(&mut self, this: Resource<HashJob>, timeout_ms: u32) -> Result<HashState, FileError> {
        let job = self.table.get(&this).map_err(|e| FileError::Io(e.to_string()))?;
        match job.wait(Duration::from_millis(timeout_ms.min(10_000) as u64)) {
            Poll::Running((done, total)) => Ok(HashState::Running(FileProgress { done, total })),
            Poll::Done(r) => r.map(HashState::Done).map_err(file_error),
        }
    }

    fn cancel(&mut self, this: Resource<HashJob>) {
        if let Ok(job) = self.table.get(&this) {
            job.cancel();
        }
    }

    fn drop(&mut self, rep: Resource<HashJob>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.live -= 1;
        Ok(())
    }
}
