//! The guest's folders on disk, `models/` and `state/` under the app's data
//! directory, as the host reaches them for the guest.
//!
//! - A guest names a file by one plain component (no `/`, no `..`, not
//!   hidden). It is opened relative to the folder's descriptor with
//!   `O_NOFOLLOW`: with a single component, no symbolic link is ever
//!   followed, wherever it points (the guest has no file system of its own
//!   to make one, but a link could be put there by anything else).
//! - Each folder has a byte quota; a write that would exceed it is refused
//!   before a byte is written.
//! - Files in use by a mapping (the loaded model, a warmup pass) are never
//!   written, truncated or replaced: writers check the inode, not the name,
//!   so a hard link or a rename cannot get around it.
//! - Errors name files as the guest does (`models/x.gguf`), never by host path.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::bindings::types::{ModelSource, Root};

mod in_use;
pub use in_use::{InUse, InUseGuard};

/// Errors of the guest's file operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// No such file.
    #[error("{0}: no such file")]
    NotFound(String),
    /// Refused: a bad name, a link, a file in use, a limit.
    #[error("{0}")]
    NotPermitted(String),
    /// The folder's quota would be exceeded.
    #[error("the {root} folder's quota of {limit} bytes would be exceeded ({used} used, {requested} more)")]
    Quota {
        /// The folder.
        root: &'static str,
        /// The quota.
        limit: u64,
        /// Bytes used.
        used: u64,
        /// Bytes asked for.
        requested: u64,
    },
    /// The disk is full.
    #[error("no space left on the device for {0}")]
    DiskFull(String),
    /// Another failure.
    #[error("{0}")]
    Io(String),
}

/// One of the guest's folders.
#[derive(Debug, Clone)]
pub struct Folder {
    root: Root,
    path: PathBuf,
    dir: Arc<OwnedFd>,
    quota: u64,
    in_use: InUse,
}

/// A file's size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Bytes.
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub modified_ns: u64,
}

fn root_name(root: Root) -> &'static str {
    match root {
        Root::Models => "models",
        Root::State => "state",
    }
}

/// Accept only a single plain, visible path component.
pub fn check_name(name: &str) -> Result<(), String> {
    let plain =
        !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']) && name.len() <= 255;
    if plain {
        Ok(())
    } else {
        Err(format!("`{name}` is not a plain file name (no folders, `..` or leading `.`)"))
    }
}

impl Folder {
    /// Open (creating it if needed) a folder of the guest's.
    pub fn open(root: Root, path: &Path, quota: u64, in_use: InUse) -> std::io::Result<Folder> {
        std::fs::create_dir_all(path)?;
        let dir =
            rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Folder { root, path: path.to_owned(), dir: Arc::new(dir), quota, in_use })
    }

    /// Which folder.
    pub fn root(&self) -> Root {
        self.root
    }

    /// The folder's host path (for the host's own use, never for the guest).
    pub fn host_path(&self) -> &Path {
        &self.path
    }

    /// The guest's name of a file here (`models/x.gguf`).
    pub fn guest_name(&self, name: &str) -> String {
        format!("{}/{name}", root_name(self.root))
    }

    fn checked(&self, name: &str) -> Result<(), FsError> {
        check_name(name).map_err(|e| FsError::NotPermitted(format!("{}: {e}", root_name(self.root))))
    }

    fn io(&self, name: &str, e: std::io::Error) -> FsError {
        let who = self.guest_name(name);
        match e.raw_os_error() {
            Some(libc::ENOENT) => FsError::NotFound(who),
            Some(libc::ELOOP) => {
                FsError::NotPermitted(format!("{who} is a symbolic link; links are not followed"))
            }
            Some(libc::ENOSPC) => FsError::DiskFull(who),
            _ => FsError::Io(format!("{who}: {}", e.kind())),
        }
    }

    fn stat_raw(&self, name: &str) -> Result<Option<rustix::fs::Stat>, FsError> {
        self.checked(name)?;
        match rustix::fs::statat(self.dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io(name, e.into())),
        }
    }

    /// A hard link someone else made may be a file outside the data
    /// directory under a second name (the guest cannot make links).
    fn single_link(&self, name: &str, st: &rustix::fs::Stat) -> Result<(), FsError> {
        if st.st_nlink > 1 {
            return Err(FsError::NotPermitted(format!("{} has other hard links", self.guest_name(name))));
        }
        Ok(())
    }

    fn regular(&self, name: &str, st: &rustix::fs::Stat) -> Result<(), FsError> {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(()),
            FileType::Symlink => Err(FsError::NotPermitted(format!(
                "{} is a symbolic link; links are not followed",
                self.guest_name(name)
            ))),
            _ => Err(FsError::NotPermitted(format!("{} is not a regular file", self.guest_name(name)))),
        }
    }

    /// Size and modification time of a regular file; none when absent.
    pub fn stat(&self, name: &str) -> Result<Option<Stat>, FsError> {
        let Some(st) = self.stat_raw(name)? else { return Ok(None) };
        self.regular(name, &st)?;
        let modified_ns =
            (st.st_mtime as u64).saturating_mul(1_000_000_000).saturating_add(st.st_mtime_nsec as u64);
        Ok(Some(Stat { size: st.st_size as u64, modified_ns }))
    }

    /// Open a regular file for reading (never through a link).
    pub fn open_read(&self, name: &str) -> Result<File, FsError> {
        self.checked(name)?;
        let fd = rustix::fs::openat(
            self.dir.as_fd(),
            name,
            // NONBLOCK: opening a FIFO someone put here would otherwise wait
            // for a writer for ever; a regular file ignores the flag.
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io(name, e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| self.io(name, e.into()))?;
        self.regular(name, &st)?;
        self.single_link(name, &st)?;
        Ok(File::from(fd))
    }

    /// A whole file of at most `max` bytes.
    pub fn read(&self, name: &str, max: u64) -> Result<Vec<u8>, FsError> {
        use std::io::Read;
        let f = self.open_read(name)?;
        let size = f.metadata().map_err(|e| self.io(name, e))?.len();
        if size > max {
            return Err(FsError::NotPermitted(format!(
                "{} has {size} bytes, more than the read limit of {max}",
                self.guest_name(name)
            )));
        }
        let mut out = Vec::with_capacity(size as usize);
        f.take(max).read_to_end(&mut out).map_err(|e| self.io(name, e))?;
        Ok(out)
    }

    /// The regular, visible files, sorted.
    pub fn list(&self) -> Result<Vec<String>, FsError> {
        let mut names: Vec<String> =
            self.entries()?.into_iter().filter(|e| !e.0.starts_with('.')).map(|e| e.0).collect();
        names.sort();
        Ok(names)
    }

    /// (name, size) of every regular file, hidden ones included.
    fn entries(&self) -> Result<Vec<(String, u64)>, FsError> {
        let rd = std::fs::read_dir(&self.path)
            .map_err(|e| FsError::Io(format!("{}: {}", root_name(self.root), e.kind())))?;
        Ok(rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
            .collect())
    }

    /// Bytes the folder holds.
    pub fn used(&self) -> Result<u64, FsError> {
        Ok(self.entries()?.iter().map(|e| e.1).sum())
    }

    /// Bytes the guest may still add: the quota left or the disk's free space, whichever is less.
    pub fn free(&self) -> Result<u64, FsError> {
        let fs = rustix::fs::fstatvfs(self.dir.as_fd())
            .map_err(|e| FsError::Io(format!("{}: {e}", root_name(self.root))))?;
        let disk = (fs.f_bavail as u64).saturating_mul(fs.f_frsize as u64);
        Ok(disk.min(self.quota.saturating_sub(self.used()?)))
    }

    /// Refuse adding `more` bytes beyond what `replacing` frees.
    pub fn check_quota(&self, more: u64, replacing: u64) -> Result<(), FsError> {
        let used = self.used()?;
        if used.saturating_sub(replacing).saturating_add(more) > self.quota {
            return Err(FsError::Quota {
                root: root_name(self.root),
                limit: self.quota,
                used,
                requested: more,
            });
        }
        Ok(())
    }

    fn refuse_in_use(&self, name: &str) -> Result<u64, FsError> {
        match self.stat_raw(name)? {
            Some(st) if self.in_use.contains(&st) => {
                Err(FsError::NotPermitted(format!("{} is in use by the loaded model", self.guest_name(name))))
            }
            Some(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                self.regular(name, &st).map(|()| 0)
            }
            Some(st) => Ok(st.st_size as u64),
            None => Ok(0),
        }
    }

    /// Replace a file with `bytes`, atomically and durably, within the quota.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), FsError> {
        self.checked(name)?;
        let old = self.refuse_in_use(name)?;
        self.check_quota(bytes.len() as u64, old)?;
        let tmp = temp_name(name);
        let fd = rustix::fs::openat(
            self.dir.as_fd(),
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.io(name, e.into()))?;
        let mut f = File::from(fd);
        let written = f.write_all(bytes).and_then(|_| f.sync_all());
        drop(f);
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(self.dir.as_fd(), tmp.as_str(), AtFlags::empty());
            return Err(self.io(name, e));
        }
        rustix::fs::renameat(self.dir.as_fd(), tmp.as_str(), self.dir.as_fd(), name).map_err(|e| {
            let _ = rustix::fs::unlinkat(self.dir.as_fd(), tmp.as_str(), AtFlags::empty());
            self.io(name, e.into())
        })?;
        let _ = rustix::fs::fsync(self.dir.as_fd());
        Ok(())
    }

    /// Open (creating) a file to append to, e.g. a download's `.part`:
    /// never a link, never a file in use or with other hard links.
    /// The file comes with its writing mark: while the guard lives, the file
    /// cannot be mapped (loaded or warmed), so the job may truncate it.
    pub fn open_append(&self, name: &str) -> Result<(File, InUseGuard), FsError> {
        self.checked(name)?;
        let fd = rustix::fs::openat(
            self.dir.as_fd(),
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.io(name, e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| self.io(name, e.into()))?;
        self.regular(name, &st)?;
        self.single_link(name, &st)?;
        let guard = self
            .in_use
            .mark_writing(&fd)
            .map_err(|e| FsError::NotPermitted(format!("{} is {e}", self.guest_name(name))))?;
        Ok((File::from(fd), guard))
    }

    /// Delete a file (a link itself, never what it points to); false when absent.
    pub fn remove(&self, name: &str) -> Result<bool, FsError> {
        self.checked(name)?;
        match rustix::fs::unlinkat(self.dir.as_fd(), name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(self.io(name, e.into())),
        }
    }

    /// Rename inside the folder, replacing `to` unless it is in use.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        self.checked(from)?;
        self.refuse_in_use(to)?;
        let Some(st) = self.stat_raw(from)? else { return Err(FsError::NotFound(self.guest_name(from))) };
        self.regular(from, &st)?;
        rustix::fs::renameat(self.dir.as_fd(), from, self.dir.as_fd(), to)
            .map_err(|e| self.io(from, e.into()))?;
        let _ = rustix::fs::fsync(self.dir.as_fd());
        Ok(())
    }
}

fn temp_name(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(".{name}.{}-{}.tmp", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A path llama.cpp can open that names exactly the file behind `f`,
/// whatever happens to its name meanwhile.
pub fn fd_path(f: &File) -> String {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    if cfg!(any(target_os = "linux", target_os = "android")) {
        format!("/proc/self/fd/{fd}")
    } else {
        format!("/dev/fd/{fd}")
    }
}

/// Modification time of a file in nanoseconds since the epoch.
pub fn modified_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64)
}

/// A model file, open.
#[derive(Debug)]
pub struct ModelFile {
    /// The open file.
    pub file: File,
    /// How the guest names it (`models/x.gguf`).
    pub name: String,
    /// Its file name.
    pub file_name: String,
    /// Where it is on the host (for the host's own use).
    pub host_path: PathBuf,
}

/// The guest's folders under a data directory, and the model file the host was given.
#[derive(Debug, Clone)]
pub struct Folders {
    /// `models/`.
    pub models: Folder,
    /// `state/`.
    pub state: Folder,
    /// The model file chosen by the user of the host (`-m FILE`): a host path, trusted.
    pub provided_model: Option<PathBuf>,
    /// Files in use by mappings.
    pub in_use: InUse,
}

impl Folders {
    /// Open (creating) the folders under `data_dir`.
    pub fn open(
        data_dir: &Path,
        provided_model: Option<PathBuf>,
        models_quota: u64,
        state_quota: u64,
    ) -> std::io::Result<Self> {
        let in_use = InUse::default();
        Ok(Folders {
            models: Folder::open(Root::Models, &data_dir.join("models"), models_quota, in_use.clone())?,
            state: Folder::open(Root::State, &data_dir.join("state"), state_quota, in_use.clone())?,
            provided_model,
            in_use,
        })
    }

    /// Open the model file a guest names, for reading.
    pub fn open_model(&self, source: &ModelSource) -> Result<ModelFile, FsError> {
        match source {
            ModelSource::Managed(name) => Ok(ModelFile {
                file: self.models.open_read(name)?,
                name: self.models.guest_name(name),
                file_name: name.clone(),
                host_path: self.models.host_path().join(name),
            }),
            ModelSource::Provided => {
                let path = self.provided_model.clone().ok_or_else(|| {
                    FsError::NotFound("the provided model (none was given to the host)".into())
                })?;
                // The guest learns the file's name, never the host's folders.
                let file_name =
                    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let file = File::open(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        FsError::NotFound(format!("the provided model {file_name}"))
                    }
                    k => FsError::Io(format!("the provided model {file_name}: {k}")),
                })?;
                Ok(ModelFile {
                    file,
                    name: format!("the provided model {file_name}"),
                    file_name,
                    host_path: path,
                })
            }
        }
    }

    /// A folder by root.
    pub fn folder(&self, root: Root) -> &Folder {
        match root {
            Root::Models => &self.models,
            Root::State => &self.state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(dir: &Path, quota: u64) -> Folder {
        Folder::open(Root::State, &dir.join("state"), quota, InUse::default()).unwrap()
    }

    #[test]
    fn plain_names_only() {
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\0b", ".hidden", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("settings.json").unwrap();
    }

    #[test]
    fn links_are_never_followed_and_quotas_hold() {
        let dir = tempfile::tempdir().unwrap();
        let f = folder(dir.path(), 100);
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("state/link")).unwrap();
        for r in [
            f.open_read("link").map(|_| ()),
            f.write("link", b"x"),
            f.open_append("link").map(|_| ()),
            f.stat("link").map(|_| ()),
        ] {
            assert!(
                matches!(r, Err(FsError::NotPermitted(ref m)) if m.contains("symbolic link") && !m.contains("/tmp")),
                "{r:?}"
            );
        }
        assert!(f.remove("link").unwrap(), "the link itself can be removed");
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        f.write("a", &[1; 60]).unwrap();
        assert!(matches!(f.write("b", &[1; 60]), Err(FsError::Quota { .. })));
        f.write("a", &[2; 90]).unwrap();
        assert_eq!(f.read("a", 1000).unwrap(), vec![2; 90]);
        assert!(f.read("a", 10).is_err());
        assert_eq!(f.list().unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn a_file_in_use_is_not_written_replaced_or_appended_to_even_through_a_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        let in_use = InUse::default();
        let f = Folder::open(Root::Models, &dir.path().join("models"), 1 << 20, in_use.clone()).unwrap();
        f.write("m.gguf", b"model").unwrap();
        let guard = in_use.mark(&f.open_read("m.gguf").unwrap()).unwrap();
        std::fs::hard_link(dir.path().join("models/m.gguf"), dir.path().join("models/twin")).unwrap();
        f.write("x", b"new").unwrap();
        assert!(f.write("m.gguf", b"evil").is_err());
        assert!(f.rename("x", "m.gguf").is_err());
        assert!(f.open_append("twin").is_err());
        let err = f.open_read("twin").unwrap_err().to_string();
        assert!(err.contains("has other hard links"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("models/m.gguf")).unwrap(), b"model");
        drop(guard);
        f.write("m.gguf", b"new model").unwrap();
    }

    #[test]
    fn a_fifo_put_in_a_folder_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::open(Root::Models, &dir.path().join("models"), 1 << 20, InUse::default()).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("models/fifo").to_str().unwrap()).unwrap();
        // SAFETY: a plain syscall on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        let err = f.open_read("fifo").unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(f.read("fifo", 100).is_err());
        assert!(f.open_append("fifo").is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_file_being_written_by_a_job_cannot_be_mapped_until_the_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        let in_use = InUse::default();
        let f = Folder::open(Root::Models, &dir.path().join("models"), 1 << 20, in_use.clone()).unwrap();
        let (part, writing) = f.open_append("d.gguf").unwrap();
        let err = in_use.mark(&f.open_read("d.gguf").unwrap()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy, "{err}");
        assert!(f.open_append("d.gguf").is_ok(), "two writers do not crash anything");
        drop((part, writing));
        let mapped = in_use.mark(&f.open_read("d.gguf").unwrap()).unwrap();
        let err = f.open_append("d.gguf").unwrap_err();
        assert!(err.to_string().contains("in use by the loaded model"), "{err}");
        drop(mapped);
    }
}
