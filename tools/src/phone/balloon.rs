//! Memory pressure: a balloon that leaves about N MB of `MemAvailable` for
//! the page cache and the bench process, as on a phone with little free RAM.
//!
//! The balloon is a child process forked from the bench. Between `fork`
//! and its end the child makes raw system calls only (it is the copy of a
//! multi-threaded process, so no allocation or locking): it asks for
//! `PR_SET_PDEATHSIG(SIGKILL)`, closes every inherited descriptor but its
//! two pipes (so it holds no `/dev/fuse` or model file open), and then
//! serves "grow by B bytes" commands: `mmap` anonymous memory, `mlock` it
//! where allowed, write to every page, acknowledge. The parent grows it in
//! steps of at most 256 MiB, reading `MemAvailable` after each, until
//! about N MB are left.
//!
//! It always ends with the bench: [`Balloon`]'s drop kills and reaps it
//! (also on error and panic), the signal handler kills it (SIGINT/SIGTERM),
//! it is killed by the kernel when the parent dies (`PR_SET_PDEATHSIG`;
//! note: when the *thread* that created it ends, so create it on a thread
//! that outlives the measurement), and it exits when its command pipe
//! closes. A watchdog thread in the parent kills it if `MemAvailable` ever
//! falls below [`HARD_FLOOR_MB`], so a misjudged N cannot take the machine
//! down.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cleanup;

/// The least N accepted: what the bench process itself needs besides the
/// model's pages (wasmtime and the guest, llama.cpp's compute buffers and
/// KV cache at the bench's context: 150–450 MB measured on the two models
/// here) plus the system's own working set.
pub const MIN_AVAILABLE_MB: u64 = 600;

/// If `MemAvailable` falls below this while the balloon is up, the
/// watchdog kills the balloon.
pub const HARD_FLOOR_MB: u64 = 250;

const STEP: u64 = 256 << 20;
const MB: u64 = 1 << 20;

/// `MemAvailable` from `/proc/meminfo`, in MiB.
pub fn mem_available_mb() -> Option<u64> {
    meminfo("MemAvailable:")
}

/// `MemTotal` from `/proc/meminfo`, in MiB.
pub fn mem_total_mb() -> Option<u64> {
    meminfo("MemTotal:")
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// Errors of the balloon.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// N is too small for the bench to run.
    #[error(
        "--available-mb {0} is too little: the bench itself needs about {MIN_AVAILABLE_MB} MB (runtime, compute buffers, KV cache) besides the model's pages; use at least {MIN_AVAILABLE_MB}"
    )]
    TooLittle(u64),
    /// The kernel would not give the memory.
    #[error("the balloon could not grow: {0}")]
    Grow(String),
    /// Reading `/proc/meminfo` or a system call failed.
    #[error("{0}")]
    System(String),
}

/// What the balloon did, for the bench report.
#[derive(Debug, Clone, Serialize)]
pub struct BalloonReport {
    /// The N asked for, MiB.
    pub target_available_mb: u64,
    /// `MemAvailable` before inflating, MiB.
    pub available_before_mb: u64,
    /// `MemAvailable` once inflated, MiB.
    pub available_after_mb: u64,
    /// Memory the balloon holds, MiB.
    pub balloon_mb: u64,
    /// Whether the pages are locked (`mlock`).
    pub locked: bool,
    /// Lowest `MemAvailable` the watchdog saw while the balloon was up, MiB.
    pub lowest_available_mb: u64,
    /// Whether the watchdog had to kill the balloon.
    pub released_by_watchdog: bool,
}

/// A running balloon; killed on drop.
pub struct Balloon {
    pid: i32,
    cmd: Option<File>,
    ack: File,
    slot: Option<usize>,
    held: u64,
    locked: bool,
    report: BalloonReport,
    stop: Arc<AtomicBool>,
    lowest: Arc<AtomicU64>,
    released: Arc<AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon").field("pid", &self.pid).field("held_mb", &(self.held / MB)).finish()
    }
}

fn pipe() -> Result<(File, File), BalloonError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(BalloonError::System(format!("pipe: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: fresh descriptors we own.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// The child after `fork`: raw system calls only. Never returns.
///
/// Protocol: reads 8-byte little-endian byte counts from fd 0, maps and
/// touches that much more, writes back 8 bytes: bit 63 set if locked, the
/// rest the total held (or `u64::MAX` when the mapping failed). Exits on EOF.
fn child(parent: libc::pid_t) -> ! {
    // SAFETY: async-signal-safe system calls on plain memory and descriptors.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        // Default signal dispositions: the parent's SIGINT handler must not
        // run here (it would detach the parent's mounts).
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
        let mut total: u64 = 0;
        let mut all_locked = true;
        loop {
            let mut buf = [0u8; 8];
            let mut got = 0;
            while got < 8 {
                let n = libc::read(0, buf.as_mut_ptr().add(got).cast(), 8 - got);
                if n <= 0 {
                    if n < 0 && *libc::__errno_location() == libc::EINTR {
                        continue;
                    }
                    libc::_exit(0);
                }
                got += n as usize;
            }
            let bytes = u64::from_le_bytes(buf) as usize;
            let p = libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            let answer = if p == libc::MAP_FAILED {
                u64::MAX
            } else {
                let base = p as *mut u8;
                let mut off = 0;
                while off < bytes {
                    std::ptr::write_volatile(base.add(off), 1);
                    off += page;
                }
                all_locked &= libc::mlock(p, bytes) == 0;
                total += bytes as u64;
                total | if all_locked { 1 << 63 } else { 0 }
            };
            let out = answer.to_le_bytes();
            libc::write(1, out.as_ptr().cast(), 8);
        }
    }
}

impl Balloon {
    /// Inflate until about `target_mb` MiB of `MemAvailable` are left.
    /// Refuses `target_mb` below [`MIN_AVAILABLE_MB`]. When less than that
    /// is available already, the balloon holds nothing (see the report).
    pub fn leave_available(target_mb: u64) -> Result<Balloon, BalloonError> {
        if target_mb < MIN_AVAILABLE_MB {
            return Err(BalloonError::TooLittle(target_mb));
        }
        let before =
            mem_available_mb().ok_or_else(|| BalloonError::System("cannot read /proc/meminfo".into()))?;
        let (cmd_r, cmd_w) = pipe()?;
        let (ack_r, ack_w) = pipe()?;
        // SAFETY: plain syscall.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child runs `child`, which makes raw system calls only.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(BalloonError::System(format!("fork: {}", std::io::Error::last_os_error())));
        }
        if pid == 0 {
            // SAFETY: async-signal-safe dup2 onto 0 and 1 (the CLOEXEC flag is not copied).
            unsafe {
                libc::dup2(cmd_r.as_raw_fd(), 0);
                libc::dup2(ack_w.as_raw_fd(), 1);
            }
            child(parent);
        }
        drop(cmd_r);
        drop(ack_w);
        let slot = cleanup::register_pid(pid);
        let lowest = Arc::new(AtomicU64::new(before));
        let mut b = Balloon {
            pid,
            cmd: Some(cmd_w),
            ack: ack_r,
            slot,
            held: 0,
            locked: true,
            report: BalloonReport {
                target_available_mb: target_mb,
                available_before_mb: before,
                available_after_mb: before,
                balloon_mb: 0,
                locked: false,
                lowest_available_mb: before,
                released_by_watchdog: false,
            },
            stop: Arc::new(AtomicBool::new(false)),
            lowest,
            released: Arc::new(AtomicBool::new(false)),
            watchdog: None,
        };
        b.start_watchdog();
        // Grow in steps, re-reading MemAvailable: page cache given up
        // and other processes change what one step buys.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let avail = mem_available_mb().unwrap_or(0);
            if avail <= target_mb + 16 || Instant::now() > deadline {
                break;
            }
            let step = ((avail - target_mb) * MB).min(STEP);
            b.grow(step)?;
        }
        if b.released.load(Ordering::SeqCst) {
            return Err(BalloonError::Grow(format!(
                "MemAvailable fell below {HARD_FLOOR_MB} MB while inflating; the balloon was released"
            )));
        }
        // Let reclaim settle, then record.
        std::thread::sleep(Duration::from_millis(200));
        b.report.available_after_mb = mem_available_mb().unwrap_or(0);
        b.report.balloon_mb = b.held / MB;
        b.report.locked = b.locked && b.held > 0;
        Ok(b)
    }

    fn grow(&mut self, bytes: u64) -> Result<(), BalloonError> {
        let cmd = self.cmd.as_mut().ok_or_else(|| BalloonError::Grow("the balloon has ended".into()))?;
        cmd.write_all(&bytes.to_le_bytes())
            .map_err(|e| BalloonError::Grow(format!("the balloon child: {e}")))?;
        let mut out = [0u8; 8];
        self.ack
            .read_exact(&mut out)
            .map_err(|e| BalloonError::Grow(format!("the balloon child ended: {e}")))?;
        let v = u64::from_le_bytes(out);
        if v == u64::MAX {
            return Err(BalloonError::Grow(format!("mmap of {} MB failed", bytes / MB)));
        }
        self.locked = v >> 63 == 1;
        self.held = v & !(1 << 63);
        Ok(())
    }

    fn start_watchdog(&mut self) {
        let (stop, lowest, released, pid) =
            (self.stop.clone(), self.lowest.clone(), self.released.clone(), self.pid);
        self.watchdog = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(a) = mem_available_mb() {
                    lowest.fetch_min(a, Ordering::SeqCst);
                    if a < HARD_FLOOR_MB && !released.swap(true, Ordering::SeqCst) {
                        eprintln!("bench: MemAvailable {a} MB < {HARD_FLOOR_MB} MB: releasing the balloon");
                        // SAFETY: plain syscall on our child.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Bytes held.
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// The figures so far (lowest `MemAvailable`, watchdog) included.
    pub fn report(&self) -> BalloonReport {
        let mut r = self.report.clone();
        r.lowest_available_mb = self.lowest.load(Ordering::SeqCst);
        r.released_by_watchdog = self.released.load(Ordering::SeqCst);
        r
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cmd.take();
        if self.pid > 0 {
            // SAFETY: our own child; reaped right after.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
            self.pid = 0;
        }
        if let Some(slot) = self.slot.take() {
            cleanup::unregister_pid(slot);
        }
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Balloon {
    fn drop(&mut self) {
        self.end();
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the command name in parentheses.
            let state = s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("X");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}
