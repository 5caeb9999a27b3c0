//! llama.cpp's log, captured: the last warnings and errors are kept so a
//! failed load can say *why* (llama.cpp's own C API only returns NULL), and
//! everything is forwarded to stderr when `BITTYBOT_LLAMA_LOG=1`.

use std::collections::VecDeque;
use std::ffi::{CStr, c_char, c_void};
use std::sync::Mutex;

use llama_cpp_sys_2::{GGML_LOG_LEVEL_CONT, GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_WARN, ggml_log_level};

const KEEP: usize = 16;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
static LAST_LEVEL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Install the callback for llama.cpp and ggml.
pub fn install() {
    // SAFETY: `callback` is a plain `extern "C"` function valid for the whole
    // process and ignores `user_data`, so a null pointer is fine.
    unsafe {
        llama_cpp_sys_2::llama_log_set(Some(callback), std::ptr::null_mut());
        llama_cpp_sys_2::ggml_log_set(Some(callback), std::ptr::null_mut());
    }
}

fn forward() -> bool {
    static FORWARD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORWARD.get_or_init(|| std::env::var("BITTYBOT_LLAMA_LOG").is_ok_and(|v| v == "1"))
}

unsafe extern "C" fn callback(level: ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if forward() {
        eprint!("{text}");
    }
    let level = if level == GGML_LOG_LEVEL_CONT {
        LAST_LEVEL.load(std::sync::atomic::Ordering::Relaxed)
    } else {
        LAST_LEVEL.store(level, std::sync::atomic::Ordering::Relaxed);
        level
    };
    if level != GGML_LOG_LEVEL_WARN && level != GGML_LOG_LEVEL_ERROR {
        return;
    }
    let line = text.trim();
    if line.is_empty() {
        return;
    }
    if let Ok(mut recent) = RECENT.lock() {
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(line.to_owned());
    }
}

/// Forget what was captured (before an operation whose failure we want to explain).
pub fn clear() {
    if let Ok(mut recent) = RECENT.lock() {
        recent.clear();
    }
}

/// The warnings and errors captured since the last `clear`, oldest first.
pub fn recent() -> Vec<String> {
    RECENT.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
}

/// The most telling captured line: the last error, else the last warning.
pub fn reason() -> Option<String> {
    let lines = recent();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("error") || l.contains("failed") || l.contains("invalid"))
        .or(lines.last())
        .cloned()
}
