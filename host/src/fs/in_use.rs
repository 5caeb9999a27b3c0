//! Marks on the files in use: mapped (the loaded model, a warm pass) or
//! being written by a background job (a download), so neither happens to a
//! file while the other does.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

/// Inodes mapped (a loaded model, a warm pass) and inodes held open for
/// writing by a background job (a download), with a count each. One lock
/// covers both, so a file is never mapped and written at once: a writer
/// truncating a mapped file would end the process with SIGBUS on the next
/// read of the mapping.
#[derive(Debug, Default, Clone)]
pub struct InUse(Arc<Mutex<Marks>>);

#[derive(Debug, Default)]
struct Marks {
    mapped: HashMap<(u64, u64), usize>,
    writing: HashMap<(u64, u64), usize>,
}

impl Marks {
    fn of(&mut self, what: Use) -> &mut HashMap<(u64, u64), usize> {
        match what {
            Use::Mapped => &mut self.mapped,
            Use::Writing => &mut self.writing,
        }
    }
}

/// What an [`InUseGuard`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Mapped,
    Writing,
}

impl Use {
    /// The use this one excludes, and what a refusal says of the file.
    fn excludes(self) -> (Use, &'static str) {
        match self {
            Use::Mapped => (Use::Writing, "being written by a download"),
            Use::Writing => (Use::Mapped, "in use by the loaded model"),
        }
    }
}

/// An inode marked in use until dropped.
#[derive(Debug)]
pub struct InUseGuard {
    set: InUse,
    key: (u64, u64),
    what: Use,
}

impl InUse {
    fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mark the file behind `fd` as mapped; refused (`ResourceBusy`) while a
    /// job writes it.
    pub fn mark(&self, fd: impl AsFd) -> std::io::Result<InUseGuard> {
        self.add(fd, Use::Mapped)
    }

    /// Mark the file behind `fd` as being written by a job; refused
    /// (`ResourceBusy`) while it is mapped.
    pub fn mark_writing(&self, fd: impl AsFd) -> std::io::Result<InUseGuard> {
        self.add(fd, Use::Writing)
    }

    fn add(&self, fd: impl AsFd, what: Use) -> std::io::Result<InUseGuard> {
        let st = rustix::fs::fstat(fd)?;
        let key = (st.st_dev as u64, st.st_ino as u64);
        let mut m = self.marks();
        let (other, why) = what.excludes();
        if m.of(other).contains_key(&key) {
            return Err(std::io::Error::new(std::io::ErrorKind::ResourceBusy, why));
        }
        *m.of(what).entry(key).or_default() += 1;
        Ok(InUseGuard { set: self.clone(), key, what })
    }

    /// Whether the file with this status is mapped.
    pub(super) fn contains(&self, st: &rustix::fs::Stat) -> bool {
        self.marks().mapped.contains_key(&(st.st_dev as u64, st.st_ino as u64))
    }
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        let mut m = self.set.marks();
        let map = m.of(self.what);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}
