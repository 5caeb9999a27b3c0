//! `bittybot:core/download`: transfers into the guest's `models` folder,
//! under the host's network policy and the folder's quota.

use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::download::{self as wit, DownloadError, Finished, Progress, Request, TransferState};
use crate::bindings::types::Root;
use crate::download::{self, DownloadRequest};
use crate::fs::Folders;
use crate::jobs::{Job, Poll};
use crate::limits::Limits;
use crate::llama::ffi::AbortFlag;
use crate::net::NetworkPolicy;
use crate::runtime::clock::CallClock;

/// The host data behind a guest `transfer`.
pub type TransferJob = Job<download::Progress, Result<Finished, DownloadError>>;

/// What the download interface needs.
pub struct DownloadCtx {
    folders: Folders,
    limits: Limits,
    policy: NetworkPolicy,
    cancel: AbortFlag,
    clock: CallClock,
    table: ResourceTable,
    live: usize,
}

impl DownloadCtx {
    /// A context over the guest's folders.
    pub fn new(
        folders: Folders,
        limits: Limits,
        policy: NetworkPolicy,
        cancel: AbortFlag,
        clock: CallClock,
    ) -> Self {
        DownloadCtx { folders, limits, policy, cancel, clock, table: ResourceTable::new(), live: 0 }
    }

    /// Everything checked before a byte moves: the URL, the folder, the
    /// size against the quota, the `.part` (no link, not in use).
    fn prepare(&self, req: Request) -> Result<DownloadRequest, DownloadError> {
        self.policy.check_url(&req.url).map_err(DownloadError::NotAllowed)?;
        if req.dest.root != Root::Models {
            return Err(DownloadError::Io("downloads go into the models folder".into()));
        }
        let models = &self.folders.models;
        let have = models.stat(&req.dest.name)?.map_or(0, |s| s.size);
        models.check_quota(req.expected_size.saturating_sub(have), 0)?;
        let (part, writing) = models.open_append(&req.dest.name)?;
        Ok(DownloadRequest {
            url: req.url,
            part,
            writing,
            expected_size: req.expected_size,
            policy: self.policy.clone(),
        })
    }
}

impl wit::Host for DownloadCtx {}

impl wit::HostTransfer for DownloadCtx {
    fn new(&mut self, req: Request) -> wasmtime::Result<Resource<TransferJob>> {
        let job = if self.live >= self.limits.jobs {
            let why = format!("the guest holds {} transfers (limit `jobs`)", self.live);
            Job::finished(download::Progress::default(), Err(DownloadError::TooLarge(why)))
        } else {
            match self.prepare(req) {
                Err(e) => Job::finished(download::Progress::default(), Err(e)),
                Ok(request) => {
                    let spawned = Job::spawn(
                        "download",
                        download::Progress::default(),
                        Some(self.cancel.clone()),
                        move |ctx| {
                            download::run(request, ctx)
                                .map(|f| Finished {
                                    bytes: f.bytes,
                                    sha256: f.sha256,
                                    resumed_from: f.resumed_from,
                                    restarted: f.restarted,
                                })
                                .map_err(DownloadError::from)
                        },
                    );
                    match spawned {
                        Ok(job) => {
                            self.live += 1;
                            job
                        }
                        Err(e) => Job::finished(
                            download::Progress::default(),
                            Err(DownloadError::Io(e.to_string())),
                        ),
                    }
                }
            }
        };
        Ok(self.table.push(job)?)
    }

    fn wait(&mut self, this: Resource<TransferJob>, timeout_ms: u32) -> Result<TransferState, DownloadError> {
        let wait = self.clock.clamp_wait(Duration::from_millis(timeout_ms.into()), self.limits.wait);
        let job = self.table.get(&this).map_err(|e| DownloadError::Io(e.to_string()))?;
        match job.wait(wait) {
            Poll::Running(p) => Ok(TransferState::Running(Progress {
                done: p.done,
                total: p.total,
                resumed_from: p.resumed_from,
            })),
            Poll::Done(r) => r.map(TransferState::Finished),
        }
    }

    fn cancel(&mut self, this: Resource<TransferJob>) {
        if let Ok(job) = self.table.get(&this) {
            job.cancel();
        }
    }

    fn drop(&mut self, rep: Resource<TransferJob>) -> wasmtime::Result<()> {
        let job = self.table.delete(rep)?;
        if job.started() {
            self.live = self.live.saturating_sub(1);
        }
        Ok(())
    }
}
