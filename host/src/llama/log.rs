//! llama.cpp's log, captured in one place: the last warnings and errors are
//! kept so a failed call can say *why* (llama.cpp's C API often only
//! returns NULL), a tool can subscribe to every line while it runs (the
//! quantizer's progress comes from its log), and everything is forwarded to
//! stderr when `BITTYBOT_LLAMA_LOG=1`.

use std::collections::VecDeque;
use std::ffi::{CStr, c_char, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use llama_cpp_sys_2::{GGML_LOG_LEVEL_CONT, GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_WARN, ggml_log_level};

const KEEP: usize = 16;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
static LAST_LEVEL: AtomicU32 = AtomicU32::new(0);
static SUBSCRIBER: Mutex<Option<Sender<Line>>> = Mutex::new(None);

/// One line of llama.cpp's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// ggml's level (`GGML_LOG_LEVEL_*`; continuation lines carry the level they continue).
    pub level: ggml_log_level,
    /// The text, without the trailing newline.
    pub text: String,
}

/// Install the callback for llama.cpp and ggml (the backend does it once).
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
        LAST_LEVEL.load(Ordering::Relaxed)
    } else {
        LAST_LEVEL.store(level, Ordering::Relaxed);
        level
    };
    let line = text.trim_end();
    if let Ok(sub) = SUBSCRIBER.lock()
        && let Some(tx) = sub.as_ref()
    {
        let _ = tx.send(Line { level, text: line.to_owned() });
    }
    if level != GGML_LOG_LEVEL_WARN && level != GGML_LOG_LEVEL_ERROR {
        return;
    }
    let line = line.trim();
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

/// Every log line while it lives (one subscription at a time: llama.cpp
/// has one process-wide log).
pub struct Subscription {
    /// The lines.
    pub lines: Receiver<Line>,
}

/// Subscribe to the log; `None` while another subscription is alive.
pub fn subscribe() -> Option<Subscription> {
    let mut sub = SUBSCRIBER.lock().ok()?;
    if sub.is_some() {
        return None;
    }
    let (tx, rx) = channel();
    *sub = Some(tx);
    Some(Subscription { lines: rx })
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut sub) = SUBSCRIBER.lock() {
            *sub = None;
        }
    }
}
