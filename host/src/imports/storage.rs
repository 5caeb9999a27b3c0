//! `bittybot:core/storage`: the guest's small files and folder management,
//! through `fs.rs` (plain names, no links followed, quotas, files in use
//! never written). The guest has no file system of its own.

use crate::bindings::storage::{self as wit, FileStat};
use crate::bindings::types::{FileError, FileRef, Root};
use crate::fs::Folders;
use crate::limits::Limits;
use crate::runtime::clock::CallClock;

/// What the storage interface needs.
pub struct StorageCtx {
    folders: Folders,
    limits: Limits,
    clock: CallClock,
}

impl StorageCtx {
    /// A context over the guest's folders.
    pub fn new(folders: Folders, limits: Limits, clock: CallClock) -> Self {
        StorageCtx { folders, limits, clock }
    }
}

impl wit::Host for StorageCtx {
    fn stat(&mut self, file: FileRef) -> Result<Option<FileStat>, FileError> {
        let stat = self.folders.folder(file.root).stat(&file.name)?;
        Ok(stat.map(|s| FileStat { size: s.size, modified_ns: s.modified_ns }))
    }

    fn list(&mut self, folder: Root) -> Result<Vec<String>, FileError> {
        Ok(self.folders.folder(folder).list()?)
    }

    fn read(&mut self, file: FileRef) -> Result<Vec<u8>, FileError> {
        let max = self.limits.read_bytes;
        self.clock.work(|| Ok(self.folders.folder(file.root).read(&file.name, max)?))
    }

    fn write(&mut self, file: FileRef, bytes: Vec<u8>) -> Result<(), FileError> {
        self.clock.work(|| Ok(self.folders.folder(file.root).write(&file.name, &bytes)?))
    }

    fn remove(&mut self, file: FileRef) -> Result<bool, FileError> {
        Ok(self.folders.folder(file.root).remove(&file.name)?)
    }

    fn rename(&mut self, folder: Root, from: String, to: String) -> Result<(), FileError> {
        Ok(self.folders.folder(folder).rename(&from, &to)?)
    }
}
