//! `bittybot:core/download`: transfers into the guest's `models` folder.

use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::download::{
    self as wit, DownloadError, Finished, Progress, Request, SizeMismatch, TransferState,
};
use crate::download::{self, DownloadError as E, DownloadRequest};
use crate::folders::Folders;
use crate::jobs::{Job, Poll};
use crate::llama::CancelFlag;

/// The host data behind a guest `transfer`.
pub type TransferJob = Job<download::Progress, Result<download::Finished, E>>;

/// What the download interface needs.
pub struct DownloadCtx {
    folders: Folders,
    cancel: CancelFlag,
    table: ResourceTable,
    live: usize,
}

impl DownloadCtx {
    /// A context over the guest's folders.
    pub fn new(folders: Folders, cancel: CancelFlag) -> Self {
        DownloadCtx { folders, cancel, table: ResourceTable::new(), live: 0 }
    }
}

fn wit_error(e: E) -> DownloadError {
    match e {
        E::NoNetwork(m) => DownloadError::NoNetwork(m),
        E::NotFound(s) => DownloadError::NotFound(s),
        E::Http(s) => DownloadError::HttpError(s),
        e @ E::Interrupted { .. } => DownloadError::Interrupted(e.to_string()),
        E::SizeMismatch { server, expected } => {
            DownloadError::SizeMismatch(SizeMismatch { server, expected })
        }
        E::DiskFull { .. } => DownloadError::DiskFull,
        E::Io(m) => DownloadError::Io(m),
        E::Cancelled => DownloadError::Cancelled,
    }
}

impl wit::Host for DownloadCtx {}

impl wit::HostTransfer for DownloadCtx {
    fn new(&mut self, req: Request) -> wasmtime::Result<Resource<TransferJob>> {
        if self.live >= crate::jobs::MAX_LIVE {
            wasmtime::bail!("the guest holds more than {} transfers", crate::jobs::MAX_LIVE);
        }
        self.live += 1;
        let dest = self.folders.resolve(&req.dest);
        let url = req.url;
        let expected_size = req.expected_size;
        let job =
            Job::spawn("download", download::Progress::default(), Some(self.cancel.clone()), move |ctx| {
                let dest = dest.map_err(|e| E::Io(e.to_string()))?;
                download::run(&DownloadRequest { url, dest, expected_size }, ctx)
            })?;
        Ok(self.table.push(job)?)
    }

    fn wait(&mut self, this: Resource<TransferJob>, timeout_ms: u32) -> Result<TransferState, DownloadError> {
        let job = self.table.get(&this).map_err(|e| DownloadError::Io(e.to_string()))?;
        match job.wait(Duration::from_millis(timeout_ms.min(10_000) as u64)) {
            Poll::Running(p) => Ok(TransferState::Running(Progress {
                done: p.done,
                total: p.total,
                resumed_from: p.resumed_from,
            })),
            Poll::Done(Ok(f)) => Ok(TransferState::Finished(Finished {
                bytes: f.bytes,
                sha256: f.sha256,
                resumed_from: f.resumed_from,
                restarted: f.restarted,
            })),
            Poll::Done(Err(e)) => Err(wit_error(e)),
        }
    }

    fn cancel(&mut self, this: Resource<TransferJob>) {
        if let Ok(job) = self.table.get(&this) {
            job.cancel();
        }
    }

    fn drop(&mut self, rep: Resource<TransferJob>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.live -= 1;
        Ok(())
    }
}
