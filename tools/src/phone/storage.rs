//! Slow storage: a read-only FUSE file system that serves a model file (or
//! the regular files of a directory) from a backing path at the speed of a
//! phone's flash.
//!
//! The throttle models one flash device:
//! - every request costs a fixed **latency** (command, FTL lookup, the
//!   file-system and page-fault path); up to `queue_depth` requests wait out
//!   their latency in parallel, as UFS serves a command queue;
//! - the **transfer** of the request's bytes is serialised on one channel of
//!   `mbps` MB/s, so parallel requests share the sequential throughput;
//! - no request is larger than **max_request** bytes: the kernel is told so
//!   (`max_read`, `max_readahead`, and `max_write`, which sets FUSE's
//!   `max_pages`), and a larger read is charged as several requests.
//!
//! A reply is sent no earlier than the model says; the backing read itself
//! runs inside that window (it is `O_DIRECT` where the backing file system
//! allows it, so the backing file does not fill the page cache a second
//! time next to the FUSE file's, which matters under a memory balloon).
//! Only the lower bound is guaranteed: a backing read slower than the
//! profile makes the reply later, never earlier.
//!
//! Files are opened with `FOPEN_KEEP_CACHE`. Without it the kernel drops the
//! FUSE file's page cache on **every `open()`**, including the pages that
//! llama.cpp has mapped: each residency probe, warmup pass or `cat` then
//! threw the whole model out of memory and the next decode step faulted it
//! back in request by request (the cause of the earlier trial's residency
//! cases running past 10 minutes). Eviction is explicit instead:
//! [`Mount::invalidate`] asks the kernel (`FUSE_NOTIFY_INVAL_INODE`) to drop
//! the pages, mapped ones included, for the cases where `MADV_PAGEOUT` +
//! `POSIX_FADV_DONTNEED` leave pages behind.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use serde::Serialize;

use super::cleanup;

/// One flash device's speed: what a request costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// Name (`ufs2`, `emmc`, `custom`).
    pub name: String,
    /// Sequential throughput, MB/s (10^6 bytes per second).
    pub mbps: f64,
    /// Latency per request, ms.
    pub latency_ms: f64,
    /// Largest request, bytes.
    pub max_request: u32,
    /// Requests served in parallel (their latencies overlap; the transfer does not).
    pub queue_depth: usize,
}

/// The named profiles, with their assumptions.
///
/// `ufs2` — the Galaxy A25 class (Exynos 1280, UFS 2.2, 2 lanes HS-G3):
/// the interface peaks near 1.2 GB/s and vendors quote 800–1000 MB/s
/// sequential read, but a page fault on the phone goes through f2fs/ext4,
/// inline file encryption and the fault path, so a working figure of
/// **500 MB/s**; **0.15 ms** per request (UFS 2.x random 4 KiB reads at
/// queue depth 1 run at 25–40 MB/s, i.e. 0.1–0.16 ms each); requests of at
/// most **512 KiB** (the block layer's usual `max_sectors_kb` for UFS);
/// **4** requests in flight (UFS has a 32-deep command queue; readahead and
/// llama.cpp's threads rarely keep more than a few busy).
///
/// `emmc` — a budget phone's eMMC 5.1: **250 MB/s** sequential (HS400 peaks
/// at 400 MB/s on the bus, parts deliver 250–300), **0.4 ms** per request
/// (random 4 KiB reads at 10–15 MB/s), at most **128 KiB** per request,
/// **1** in flight (no command queue in common use).
pub fn named(name: &str) -> Option<Profile> {
    match name {
        "ufs2" => Some(Profile {
            name: "ufs2".into(),
            mbps: 500.0,
            latency_ms: 0.15,
            max_request: 512 << 10,
            queue_depth: 4,
        }),
        "emmc" => Some(Profile {
            name: "emmc".into(),
            mbps: 250.0,
            latency_ms: 0.4,
            max_request: 128 << 10,
            queue_depth: 1,
        }),
        _ => None,
    }
}

/// The names [`named`] knows.
pub const PROFILES: &[&str] = &["ufs2", "emmc"];

impl Profile {
    /// A profile from figures; `max_request` and `queue_depth` as `ufs2`'s.
    pub fn custom(mbps: f64, latency_ms: f64) -> Profile {
        Profile { name: "custom".into(), mbps, latency_ms, max_request: 512 << 10, queue_depth: 4 }
    }

    /// The least time the device can take to serve `bytes` in requests of
    /// `max_request`, however they overlap: the transfer is serialised
    /// (plus at least one latency), and each request holds one of
    /// `queue_depth` slots for its latency and its own transfer. With a
    /// queue depth of 1 that is latency × requests + transfer. What a test
    /// may assert as a lower bound.
    pub fn min_time(&self, bytes: u64) -> Duration {
        let requests = bytes.div_ceil(self.max_request as u64).max(1) as f64;
        let latency = self.latency_ms / 1000.0;
        let transfer = bytes as f64 / (self.mbps * 1e6);
        let slots = (requests * latency + transfer) / self.queue_depth as f64;
        Duration::from_secs_f64((transfer + latency).max(slots))
    }

    fn check(&self) -> Result<(), String> {
        if !(self.mbps.is_finite() && self.mbps > 0.0) {
            return Err(format!("storage throughput must be > 0 MB/s, not {}", self.mbps));
        }
        if !(self.latency_ms.is_finite() && self.latency_ms >= 0.0 && self.latency_ms < 10_000.0) {
            return Err(format!("storage latency must be 0–10000 ms, not {}", self.latency_ms));
        }
        if self.max_request < 4096 || self.max_request > (1 << 20) {
            return Err(format!("max request must be 4 KiB–1 MiB, not {} bytes", self.max_request));
        }
        if self.queue_depth == 0 || self.queue_depth > 64 {
            return Err(format!("queue depth must be 1–64, not {}", self.queue_depth));
        }
        Ok(())
    }
}

/// The device: a queue of `queue_depth` slots and one transfer channel.
struct Throttle {
    profile: Profile,
    slots: Mutex<usize>,
    freed: Condvar,
    /// When the transfer channel is next free.
    busy_until: Mutex<Instant>,
}

impl Throttle {
    fn new(profile: Profile) -> Throttle {
        Throttle {
            slots: Mutex::new(profile.queue_depth),
            freed: Condvar::new(),
            busy_until: Mutex::new(Instant::now()),
            profile,
        }
    }

    /// Take a queue slot; returns when the request may start.
    fn acquire(&self) {
        let mut free = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }

    fn release(&self) {
        *self.slots.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.freed.notify_one();
    }

    /// When a request of `bytes` arriving now is done: its latency, then its
    /// turn on the transfer channel.
    fn deadline(&self, bytes: u64) -> Instant {
        let ready = Instant::now() + Duration::from_secs_f64(self.profile.latency_ms / 1000.0);
        let transfer = Duration::from_secs_f64(bytes as f64 / (self.profile.mbps * 1e6));
        let mut busy = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
        let start = ready.max(*busy);
        *busy = start + transfer;
        *busy
    }
}

fn sleep_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        std::thread::sleep(t - now);
    }
}

/// A page-aligned buffer for `O_DIRECT` reads.
struct Aligned {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the buffer is plain memory owned by one holder at a time.
unsafe impl Send for Aligned {}

const ALIGN: usize = 4096;

impl Aligned {
    fn new(cap: usize) -> Aligned {
        let cap = cap.div_ceil(ALIGN) * ALIGN;
        let layout = std::alloc::Layout::from_size_align(cap, ALIGN).expect("layout");
        // SAFETY: a non-zero size with a valid alignment.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, cap }
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `cap` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.cap) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.cap, ALIGN).expect("layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

struct Served {
    name: PathBuf,
    file: File,
    direct: bool,
    attr: FileAttr,
}

/// What the file system has served.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
}

struct ThrottledFs {
    files: BTreeMap<u64, Served>,
    root: FileAttr,
    throttle: Arc<Throttle>,
    /// Buffers taken and given back by the request threads, allocated up
    /// front so a request never maps memory while a page fault waits on it.
    pool: Mutex<Vec<Aligned>>,
    counters: Arc<Counters>,
    /// `FOPEN_KEEP_CACHE` on open (off only for the diagnosis below).
    keep_cache: bool,
}

/// `BITTYBOT_PHONE_FUSE_DIAG`: comma-separated switches that reproduce a
/// plain FUSE passthrough, for diagnosis only: `no-keep-cache` (the page
/// cache is dropped on every open), `single-thread` (one request at a time),
/// `kernel-readahead` (leave the 128 KiB default window).
fn diag(flag: &str) -> bool {
    std::env::var("BITTYBOT_PHONE_FUSE_DIAG").is_ok_and(|v| v.split(',').any(|f| f.trim() == flag))
}

const TTL: Duration = Duration::from_secs(3600);
/// Largest read the kernel sends (FUSE's `max_pages` limit is 256 pages).
const POOL_BUFFER: usize = (1 << 20) + ALIGN;

fn attr(ino: u64, meta: &std::fs::Metadata, kind: FileType) -> FileAttr {
    let t = |s: i64, ns: i64| {
        SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
    };
    FileAttr {
        ino: INodeNo(ino),
        size: if kind == FileType::Directory { 0 } else { meta.len() },
        blocks: meta.len().div_ceil(512),
        atime: t(meta.atime(), meta.atime_nsec()),
        mtime: t(meta.mtime(), meta.mtime_nsec()),
        ctime: t(meta.ctime(), meta.ctime_nsec()),
        crtime: t(meta.mtime(), meta.mtime_nsec()),
        kind,
        perm: if kind == FileType::Directory { 0o555 } else { 0o444 },
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl ThrottledFs {
    fn read_into(
        &self,
        file: &Served,
        offset: u64,
        size: usize,
        buf: &mut Aligned,
    ) -> std::io::Result<(usize, usize)> {
        // O_DIRECT wants aligned offsets and lengths: read the aligned
        // superset, hand back the requested part.
        let (start, skip) = if file.direct {
            let start = offset / ALIGN as u64 * ALIGN as u64;
            (start, (offset - start) as usize)
        } else {
            (offset, 0)
        };
        let want = if file.direct { (skip + size).div_ceil(ALIGN) * ALIGN } else { size };
        let dst = &mut buf.slice()[..want];
        let mut done = 0;
        while done < want {
            let n = file.file.read_at(&mut dst[done..], start + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        let end = done.min(skip + size);
        Ok((skip.min(end), end))
    }
}

impl Filesystem for ThrottledFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let max = self.throttle.profile.max_request;
        // FUSE derives max_pages (the largest read) from max(max_write,
        // max_readahead); a read-only file system writes nothing, so both
        // can carry the device's request size.
        let _ = config.set_max_write(max);
        if let Err(nearest) = config.set_max_readahead(max) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background((self.throttle.profile.queue_depth * 4).clamp(4, 64) as u16);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        match self.files.values().find(|f| f.name.as_os_str() == name) {
            Some(f) => reply.entry(&TTL, &f.attr, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == 1 {
            return reply.attr(&TTL, &self.root);
        }
        match self.files.get(&ino.0) {
            Some(f) => reply.attr(&TTL, &f.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if !self.files.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // FOPEN_NOFLUSH: a read-only file has nothing to flush on close, and
        // a FLUSH sent then can never be answered when this process is the
        // one exiting (Ctrl-C with the model open on the mount): the exiting
        // thread closes the file after the server threads are gone and waits
        // for the reply for ever (seen here: a zombie stuck in fuse_flush).
        let mut open = FopenFlags::FOPEN_NOFLUSH;
        if self.keep_cache {
            open |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        reply.opened(FileHandle(0), open);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.files.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let size = (size as u64).min(file.attr.size.saturating_sub(offset)) as usize;
        let profile = &self.throttle.profile;
        // Charged as the device would serve it: one request per max_request.
        let requests = (size as u64).div_ceil(profile.max_request as u64).max(1);
        let mut buf = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if buf.as_ref().is_none_or(|b| b.cap < size + 2 * ALIGN) {
            buf = Some(Aligned::new(size + 2 * ALIGN));
        }
        let mut buf = buf.expect("a buffer");
        let mut deadline = Instant::now();
        for i in 0..requests {
            self.throttle.acquire();
            let chunk = (size as u64 - i * profile.max_request as u64).min(profile.max_request as u64);
            deadline = self.throttle.deadline(chunk);
            if i + 1 < requests {
                sleep_until(deadline);
                self.throttle.release();
            }
        }
        let result = self.read_into(file, offset, size, &mut buf);
        sleep_until(deadline);
        self.throttle.release();
        self.counters.requests.fetch_add(requests, Ordering::Relaxed);
        match result {
            Ok((a, b)) => {
                self.counters.bytes.fetch_add((b - a) as u64, Ordering::Relaxed);
                reply.data(&buf.slice()[a..b]);
            }
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
        }
        if buf.cap <= POOL_BUFFER {
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries =
            vec![(1u64, FileType::Directory, PathBuf::from(".")), (1, FileType::Directory, "..".into())];
        entries.extend(self.files.iter().map(|(ino, f)| (*ino, FileType::RegularFile, f.name.clone())));
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Errors of the mount.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// `/dev/fuse` is missing (no FUSE in this kernel or container).
    #[error(
        "no /dev/fuse on this machine: the slow-storage conditions need FUSE (Debian: fuse3, run as root)"
    )]
    NoFuse,
    /// Bad profile figures.
    #[error("{0}")]
    Profile(String),
    /// Anything else, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
    let what = what.into();
    move |source| StorageError::Io { what, source }
}

/// Whether this machine can mount FUSE file systems.
pub fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists()
}

/// What a mount served, for the bench report.
#[derive(Debug, Clone, Serialize)]
pub struct StorageReport {
    /// The profile.
    pub profile: Profile,
    /// Requests served (as the device counts them: one per max_request).
    pub requests: u64,
    /// Bytes served.
    pub bytes: u64,
    /// Whether the backing file was read with `O_DIRECT`.
    pub direct_backing: bool,
}

/// A mounted, throttled view of a file or directory, unmounted on drop.
pub struct Mount {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    notifier: fuser::Notifier,
    inodes: Vec<(u64, PathBuf)>,
    profile: Profile,
    counters: Arc<Counters>,
    direct: bool,
    slot: Option<usize>,
    made_dir: bool,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount").field("mountpoint", &self.mountpoint).field("profile", &self.profile).finish()
    }
}

/// Mount points this process creates: `<tmp>/bittybot-phone-<pid>-<n>`.
fn default_mountpoint() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "bittybot-phone-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The FUSE mount points in this mount namespace (`/proc/self/mountinfo`).
pub fn fuse_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            if !fstype.starts_with("fuse") {
                return None;
            }
            let mp = left.split_whitespace().nth(4)?;
            Some(PathBuf::from(unescape_mount_path(mp)))
        })
        .collect()
}

fn unescape_mount_path(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a FUSE mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    fuse_mounts().iter().any(|m| *m == canonical || m == path)
}

fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `name` is a mount point name of ours (`bittybot-phone-<pid>-<n>`)
/// whose process is gone.
fn of_a_dead_run(name: &str) -> bool {
    match name.strip_prefix("bittybot-phone-").and_then(|r| r.split('-').next()) {
        Some(pid) => pid
            .parse::<u32>()
            .is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()),
        None => false,
    }
}

/// Unmount what earlier runs left behind: FUSE mounts named
/// `bittybot-phone-<pid>-*` whose process is gone, and a mount at `at`;
/// then remove such runs' empty mount point directories under the temp dir
/// (a run killed with SIGKILL can unmount nothing; the kernel ends its FUSE
/// connection, and the directory stays).
pub fn clean_stale(at: Option<&Path>) {
    for m in fuse_mounts() {
        let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stale = of_a_dead_run(&name);
        if stale || at.is_some_and(|a| a == m) {
            if lazy_unmount(&m).is_ok() {
                eprintln!("bench: unmounted a stale mount at {}", m.display());
            }
            if stale {
                let _ = std::fs::remove_dir(&m);
            }
        }
    }
    let mounted = fuse_mounts();
    for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let path = e.path();
        if of_a_dead_run(&e.file_name().to_string_lossy()) && !mounted.contains(&path) {
            // remove_dir: only an empty directory goes.
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// FUSE caps a new mount's readahead at the kernel default (128 KiB)
/// whatever `max_readahead` says; raise the mount's backing-device window
/// (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`) to the profile's
/// request size, as a phone's block device is set up. Best effort.
fn set_readahead(mountpoint: &Path, max_request: u32) {
    let Ok(meta) = std::fs::metadata(mountpoint) else { return };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let _ = std::fs::write(&knob, format!("{}", max_request / 1024));
}

impl Mount {
    /// Serve `backing` (a file, or the regular files of a directory) under
    /// `mountpoint` (default: a fresh directory under the temp dir) through
    /// the throttle of `profile`.
    pub fn new(backing: &Path, profile: Profile, mountpoint: Option<&Path>) -> Result<Mount, StorageError> {
        profile.check().map_err(StorageError::Profile)?;
        if !fuse_available() {
            return Err(StorageError::NoFuse);
        }
        let meta = std::fs::metadata(backing).map_err(io(format!("cannot read {}", backing.display())))?;
        let paths: Vec<PathBuf> = if meta.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(backing)
                .map_err(io(format!("cannot list {}", backing.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v
        } else {
            vec![backing.to_owned()]
        };
        let mut files = BTreeMap::new();
        let mut direct_all = true;
        for (i, p) in paths.iter().enumerate() {
            let ino = i as u64 + 2;
            let (file, direct) =
                match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(p) {
                    Ok(f) => (f, true),
                    Err(_) => (File::open(p).map_err(io(format!("cannot open {}", p.display())))?, false),
                };
            direct_all &= direct;
            let m = file.metadata().map_err(io(format!("cannot stat {}", p.display())))?;
            let name = PathBuf::from(p.file_name().unwrap_or_default());
            files.insert(ino, Served { name, file, direct, attr: attr(ino, &m, FileType::RegularFile) });
        }
        let inodes = files.iter().map(|(i, f)| (*i, f.name.clone())).collect();
        let dir_meta = std::fs::metadata(if meta.is_dir() {
            backing
        } else {
            backing.parent().unwrap_or(Path::new("/"))
        })
        .map_err(io("cannot stat the backing directory"))?;
        let counters = Arc::new(Counters::default());
        let throttle = Arc::new(Throttle::new(profile.clone()));
        let pool = (0..profile.queue_depth + 2).map(|_| Aligned::new(POOL_BUFFER)).collect();
        let fs = ThrottledFs {
            files,
            root: attr(1, &dir_meta, FileType::Directory),
            throttle,
            pool: Mutex::new(pool),
            counters: counters.clone(),
            keep_cache: !diag("no-keep-cache"),
        };

        let mountpoint = mountpoint.map(Path::to_owned).unwrap_or_else(default_mountpoint);
        clean_stale(Some(&mountpoint));
        let made_dir = !mountpoint.exists();
        std::fs::create_dir_all(&mountpoint)
            .map_err(io(format!("cannot create {}", mountpoint.display())))?;
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::NoAtime,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::FSName("bittybot-phone".into()),
            MountOption::Subtype(profile.name.clone()),
            MountOption::CUSTOM(format!("max_read={}", profile.max_request)),
        ];
        // Requests wait out their latency in parallel (the queue depth) and
        // readahead arrives while a fault is served: more threads than slots.
        config.n_threads = Some(if diag("single-thread") { 1 } else { profile.queue_depth + 2 });
        let session = match fuser::spawn_mount(fs, &mountpoint, &config) {
            Ok(s) => s,
            Err(e) => {
                if made_dir {
                    let _ = std::fs::remove_dir(&mountpoint);
                }
                return Err(StorageError::Io {
                    what: format!("cannot mount FUSE at {}", mountpoint.display()),
                    source: e,
                });
            }
        };
        let notifier = session.notifier();
        let slot = cleanup::register_mount(&mountpoint, made_dir);
        if !diag("kernel-readahead") {
            set_readahead(&mountpoint, profile.max_request);
        }
        Ok(Mount {
            mountpoint,
            session: Some(session),
            notifier,
            inodes,
            profile,
            counters,
            direct: direct_all,
            slot,
            made_dir,
        })
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Where a backing file is served (by its file name).
    pub fn path_of(&self, backing: &Path) -> PathBuf {
        self.mountpoint.join(backing.file_name().unwrap_or_default())
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Drop every served page from the kernel's cache, mapped pages
    /// included (`FUSE_NOTIFY_INVAL_INODE`).
    pub fn invalidate(&self) -> std::io::Result<()> {
        for (ino, _) in &self.inodes {
            self.notifier.inval_inode(INodeNo(*ino), 0, 0)?;
        }
        Ok(())
    }

    /// A handle that can invalidate while the mount lives elsewhere.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator { notifier: self.notifier.clone(), inodes: self.inodes.iter().map(|i| i.0).collect() }
    }

    /// What the mount served so far.
    pub fn report(&self) -> StorageReport {
        StorageReport {
            profile: self.profile.clone(),
            requests: self.counters.requests.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            direct_backing: self.direct,
        }
    }

    /// Unmount now (also what `drop` does), reporting failure.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        if let Some(slot) = self.slot.take() {
            cleanup::unregister_mount(slot);
        }
        let c = CString::new(self.mountpoint.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
        let result = if rc == 0 {
            // The server threads end with the connection.
            session.join()
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                // Still open or mapped somewhere: detach it from the tree now;
                // the connection (and the server threads) end when the last
                // user lets go.
                let r = lazy_unmount(&self.mountpoint);
                std::mem::forget(session);
                r
            } else if is_mounted(&self.mountpoint) {
                let r = lazy_unmount(&self.mountpoint);
                drop(session);
                r
            } else {
                drop(session);
                Ok(())
            }
        };
        if self.made_dir {
            let _ = std::fs::remove_dir(&self.mountpoint);
        }
        result
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("bench: unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

/// Invalidates the served files' page cache (see [`Mount::invalidate`]).
#[derive(Clone)]
pub struct Invalidator {
    notifier: fuser::Notifier,
    inodes: Vec<u64>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator").field("inodes", &self.inodes).finish()
    }
}

impl Invalidator {
    /// Drop the served pages from the kernel's cache.
    pub fn invalidate(&self) -> std::io::Result<()> {
        for ino in &self.inodes {
            self.notifier.inval_inode(INodeNo(*ino), 0, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_time_counts_requests_and_transfer() {
        let p =
            Profile { name: "t".into(), mbps: 100.0, latency_ms: 1.0, max_request: 1 << 20, queue_depth: 1 };
        let t = p.min_time(10 << 20);
        // 10 requests × 1 ms + 10.49 MB at 100 MB/s.
        assert!((t.as_secs_f64() - (0.010 + 10.0 * 1.048576 / 100.0)).abs() < 1e-9, "{t:?}");
        // Four in flight: the transfer (+ one latency) bounds it.
        let p4 = Profile { queue_depth: 4, ..p };
        assert!((p4.min_time(10 << 20).as_secs_f64() - (0.001 + 10.0 * 1.048576 / 100.0)).abs() < 1e-9);
        assert_eq!(named("ufs2").unwrap().max_request, 512 << 10);
        assert!(named("nvme").is_none());
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/tmp/plain"), "/tmp/plain");
    }
}
