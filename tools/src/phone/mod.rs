//! Phone conditions on a desktop: the model served at the speed of a
//! phone's flash (`storage`: a throttled FUSE file system), the phone's
//! RAM instead of this machine's (`balloon`: a child process holding
//! anonymous memory), and the plot of a memory sweep (`plot`).
//!
//! Both conditions are always undone: the mount and the balloon are RAII
//! guards (unmounted / killed on drop, also when a case fails or panics),
//! and [`cleanup::install`] adds a SIGINT/SIGTERM/SIGHUP handler that
//! detaches every live mount and kills every balloon before the process
//! ends. The balloon also dies with its parent (`PR_SET_PDEATHSIG`).

pub mod balloon;
pub mod plot;
pub mod storage;

/// What a signal must undo, kept where an async-signal-safe handler can
/// reach it: fixed slots of leaked C strings (mount points) and pids.
pub mod cleanup {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::Once;
    use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

    const SLOTS: usize = 16;
    /// Each string is one flag byte (`b'1'`: we created the directory, so the
    /// handler removes it once the mount is detached; `b'0'`: we did not)
    /// followed by the mount point: both are published by one store.
    static MOUNTS: [AtomicPtr<libc::c_char>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
    static PIDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
    static INSTALL: Once = Once::new();

    /// Remember a mount point (and whether we created its directory);
    /// returns its slot (None when all are taken: then only the guard's drop
    /// unmounts it).
    pub fn register_mount(path: &Path, made_dir: bool) -> Option<usize> {
        install();
        let mut bytes = vec![if made_dir { b'1' } else { b'0' }];
        bytes.extend_from_slice(path.as_os_str().as_bytes());
        let c = CString::new(bytes).ok()?.into_raw();
        for (i, slot) in MOUNTS.iter().enumerate() {
            if slot.compare_exchange(std::ptr::null_mut(), c, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Some(i);
            }
        }
        // SAFETY: `c` came from `into_raw` above and was not published.
        drop(unsafe { CString::from_raw(c) });
        None
    }

    /// Forget a mount point (it was unmounted). The string is leaked: the
    /// handler may be reading it right now.
    pub fn unregister_mount(slot: usize) {
        MOUNTS[slot].store(std::ptr::null_mut(), Ordering::SeqCst);
    }

    /// Remember a child to kill.
    pub fn register_pid(pid: i32) -> Option<usize> {
        install();
        for (i, slot) in PIDS.iter().enumerate() {
            if slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Some(i);
            }
        }
        None
    }

    /// Forget a child (it was killed and reaped).
    pub fn unregister_pid(slot: usize) {
        PIDS[slot].store(0, Ordering::SeqCst);
    }

    /// Kill every registered child, detach every registered mount and
    /// remove the mount point directories we created. Only
    /// async-signal-safe calls (`kill`, `umount2`, `rmdir`).
    pub fn undo_all() {
        for p in &PIDS {
            let pid = p.swap(0, Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for m in &MOUNTS {
            let c = m.swap(std::ptr::null_mut(), Ordering::SeqCst);
            if !c.is_null() {
                // SAFETY: a leaked NUL-terminated string (flag byte, then the
                // path) that is never freed. A detached mount no longer
                // covers its directory, so the (empty) directory can go at once.
                unsafe {
                    let path = c.add(1);
                    if libc::umount2(path, libc::MNT_DETACH) == 0 && *c == b'1' as libc::c_char {
                        libc::rmdir(path);
                    }
                }
            }
        }
    }

    extern "C" fn on_signal(sig: libc::c_int) {
        undo_all();
        const MSG: &[u8] =
            b"\nbittybot: interrupted; phone conditions undone (mount detached and removed, balloon killed)\n";
        // SAFETY: async-signal-safe calls only; the default action then ends the process.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }

    /// Install the SIGINT/SIGTERM/SIGHUP handler (once; also done by the
    /// first registration).
    pub fn install() {
        INSTALL.call_once(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                // SAFETY: installs a handler that only makes async-signal-safe calls.
                unsafe {
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = on_signal as *const () as usize;
                    libc::sigemptyset(&mut sa.sa_mask);
                    sa.sa_flags = libc::SA_RESTART;
                    libc::sigaction(sig, &sa, std::ptr::null_mut());
                }
            }
        });
    }
}
