//! `bittybot:core/files`: SHA-256, warmup passes and residency of model
//! files, in the background. Files are opened beneath the guest's folder,
//! never through a link; a warmup marks its file in use while it maps it.

use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::files::{self as wit, FileProgress, HashState, WarmOrder, WarmupReport, WarmupState};
use crate::bindings::types::{FileError, ModelSource};
use crate::fs::Folders;
use crate::hashing::hash_open;
use crate::jobs::{Job, Poll};
use crate::limits::Limits;
use crate::llama::ffi::AbortFlag;
use crate::runtime::clock::CallClock;

/// A background job over a file: progress in bytes (done, total).
pub type FileJob<R> = Job<(u64, u64), Result<R, FileError>>;
/// The host data behind a guest `hasher`.
pub type HashJob = FileJob<String>;
/// The host data behind a guest `warmup`.
pub type WarmupJob = FileJob<WarmupReport>;

/// What the files interface needs.
pub struct FilesCtx {
    folders: Folders,
    limits: Limits,
    cancel: AbortFlag,
    clock: CallClock,
    table: ResourceTable,
    live: usize,
    /// Hash jobs started (the verified fast path is observable through it).
    pub hashes_started: u64,
}

impl FilesCtx {
    /// A context over the guest's folders.
    pub fn new(folders: Folders, limits: Limits, cancel: AbortFlag, clock: CallClock) -> Self {
        FilesCtx { folders, limits, cancel, clock, table: ResourceTable::new(), live: 0, hashes_started: 0 }
    }

    fn wait_time(&self, timeout_ms: u32) -> Duration {
        self.clock.clamp_wait(Duration::from_millis(timeout_ms.into()), self.limits.wait)
    }

    /// A job for the guest, or one already failed when the guest holds too many.
    fn job<R: Clone + Send + 'static>(
        &mut self,
        name: &str,
        app_cancel: Option<AbortFlag>,
        body: impl FnOnce(&crate::jobs::JobCtx<(u64, u64)>) -> Result<R, FileError> + Send + 'static,
    ) -> FileJob<R> {
        if self.live >= self.limits.jobs {
            let why = format!("the guest holds {} {name} jobs (limit `jobs`)", self.live);
            return Job::finished((0, 0), Err(FileError::NotPermitted(why)));
        }
        match Job::spawn(name, (0, 0), app_cancel, body) {
            Ok(job) => {
                self.live += 1;
                job
            }
            Err(e) => Job::finished((0, 0), Err(FileError::NotPermitted(e.to_string()))),
        }
    }

    /// Wait for a job: its result, or (as `Err`) its progress so far.
    fn wait_job<R: Clone + Send + 'static>(
        &self,
        this: &Resource<FileJob<R>>,
        timeout_ms: u32,
    ) -> Result<Result<R, FileProgress>, FileError> {
        let wait = self.wait_time(timeout_ms);
        let job = self.table.get(this).map_err(|e| FileError::Io(e.to_string()))?;
        match job.wait(wait) {
            Poll::Running((done, total)) => Ok(Err(FileProgress { done, total })),
            Poll::Done(r) => r.map(Ok),
        }
    }

    fn cancel_job<R: Clone + Send + 'static>(&self, this: &Resource<FileJob<R>>) {
        if let Ok(job) = self.table.get(this) {
            job.cancel();
        }
    }

    fn drop_job<R: Clone + Send + 'static>(&mut self, rep: Resource<FileJob<R>>) -> wasmtime::Result<()> {
        let job = self.table.delete(rep)?;
        if job.started() {
            self.live = self.live.saturating_sub(1);
        }
        Ok(())
    }
}

impl wit::Host for FilesCtx {
    fn residency(&mut self, source: ModelSource) -> Result<f32, FileError> {
        let m = self.folders.open_model(&source)?;
        Ok(self.clock.work(|| crate::warmup::residency(&m.file))?)
    }
}

impl wit::HostWarmup for FilesCtx {
    fn new(&mut self, source: ModelSource, order: WarmOrder) -> wasmtime::Result<Resource<WarmupJob>> {
        let opened = self.folders.open_model(&source).map_err(FileError::from);
        let in_use = self.folders.in_use.clone();
        // Not tied to the app's cancel flag: a reply being cancelled must not
        // stop a background warmup; the guest cancels it explicitly.
        let job = self.job("warmup", None, move |ctx| {
            let m = opened?;
            let _mapped = in_use.mark(&m.file).map_err(|e| FileError::Io(e.to_string()))?;
            let ranges = match order {
                WarmOrder::File => Vec::new(),
                WarmOrder::ForwardPass => crate::warmup::forward_pass_order_of(&m.file)
                    .map_err(|e| FileError::Io(e.kind().to_string()))?,
            };
            let r = crate::warmup::warm_up(&m.file, &ranges, |done, total| {
                ctx.progress((done, total));
                !ctx.cancelled()
            })?;
            Ok(WarmupReport {
                bytes: r.bytes,
                millis: r.millis,
                bytes_per_s: r.bytes_per_s,
                residency_before: r.residency_before,
                residency_after: r.residency_after,
            })
        });
        Ok(self.table.push(job)?)
    }

    fn wait(&mut self, this: Resource<WarmupJob>, timeout_ms: u32) -> Result<WarmupState, FileError> {
        Ok(match self.wait_job(&this, timeout_ms)? {
            Err(progress) => WarmupState::Running(progress),
            Ok(report) => WarmupState::Done(report),
        })
    }

    fn cancel(&mut self, this: Resource<WarmupJob>) {
        self.cancel_job(&this);
    }

    fn drop(&mut self, rep: Resource<WarmupJob>) -> wasmtime::Result<()> {
        self.drop_job(rep)
    }
}

impl wit::HostHasher for FilesCtx {
    fn new(&mut self, source: ModelSource) -> wasmtime::Result<Resource<HashJob>> {
        self.hashes_started += 1;
        let opened = self.folders.open_model(&source).map_err(FileError::from);
        let job = self.job("hash", Some(self.cancel.clone()), move |ctx| {
            let mut m = opened?;
            Ok(hash_open(&mut m.file, |done, total| {
                ctx.progress((done, total));
                !ctx.cancelled()
            })?)
        });
        Ok(self.table.push(job)?)
    }

    fn wait(&mut self, this: Resource<HashJob>, timeout_ms: u32) -> Result<HashState, FileError> {
        Ok(match self.wait_job(&this, timeout_ms)? {
            Err(progress) => HashState::Running(progress),
            Ok(sha256) => HashState::Done(sha256),
        })
    }

    fn cancel(&mut self, this: Resource<HashJob>) {
        self.cancel_job(&this);
    }

    fn drop(&mut self, rep: Resource<HashJob>) -> wasmtime::Result<()> {
        self.drop_job(rep)
    }
}
