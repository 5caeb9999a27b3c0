//! Background jobs the guest polls: hashing, downloading, warming up.
//!
//! A job runs on its own thread and publishes progress; the guest (which
//! cannot be called back) asks `wait(timeout)` and gets the latest progress
//! or the result. Cancelling sets a flag the job checks between chunks; the
//! app-wide cancel flag stops it too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Most jobs of one kind a guest may hold at once (each is a thread).
pub const MAX_LIVE: usize = 8;

/// What a job's body sees.
pub struct JobCtx<P> {
    shared: Arc<Shared<P>>,
    app_cancel: Option<Arc<AtomicBool>>,
}

impl<P: Clone> JobCtx<P> {
    /// Publish progress.
    pub fn progress(&self, p: P) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.progress = p;
        }
        self.shared.changed.notify_all();
    }

    /// Whether the job should stop.
    pub fn cancelled(&self) -> bool {
        self.shared.cancel.load(Ordering::Relaxed)
            || self.app_cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

struct State<P> {
    progress: P,
    done: bool,
}

struct Shared<P> {
    state: Mutex<State<P>>,
    changed: Condvar,
    cancel: AtomicBool,
}

/// What `wait` saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll<P, R> {
    /// Still running, with the latest progress.
    Running(P),
    /// Finished.
    Done(R),
}

/// A running job producing `R`, reporting `P`.
pub struct Job<P, R> {
    shared: Arc<Shared<P>>,
    result: Arc<Mutex<Option<R>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<P, R> std::fmt::Debug for Job<P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl<P: Clone + Send + 'static, R: Clone + Send + 'static> Job<P, R> {
    /// Start `body` on a new thread. `app_cancel` is the app-wide cancel flag.
    pub fn spawn(
        name: &str,
        initial: P,
        app_cancel: Option<Arc<AtomicBool>>,
        body: impl FnOnce(&JobCtx<P>) -> R + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { progress: initial, done: false }),
            changed: Condvar::new(),
            cancel: AtomicBool::new(false),
        });
        let result = Arc::new(Mutex::new(None));
        let ctx = JobCtx { shared: shared.clone(), app_cancel };
        let out = result.clone();
        let thread = std::thread::Builder::new().name(format!("bittybot-{name}")).spawn(move || {
            let r = body(&ctx);
            if let Ok(mut slot) = out.lock() {
                *slot = Some(r);
            }
            if let Ok(mut s) = ctx.shared.state.lock() {
                s.done = true;
            }
            ctx.shared.changed.notify_all();
        })?;
        Ok(Job { shared, result, thread: Some(thread) })
    }

    /// Wait up to `timeout` for the job to finish; return its result or the
    /// latest progress.
    pub fn wait(&self, timeout: Duration) -> Poll<P, R> {
        let guard = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .shared
            .changed
            .wait_timeout_while(guard, timeout, |s| !s.done)
            .unwrap_or_else(|e| e.into_inner());
        if !guard.done {
            return Poll::Running(guard.progress.clone());
        }
        drop(guard);
        match self.result() {
            Some(r) => Poll::Done(r),
            None => unreachable!("a job marks itself done only after storing its result"),
        }
    }

    fn result(&self) -> Option<R> {
        self.result.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ask the job to stop.
    pub fn cancel(&self) {
        self.shared.cancel.store(true, Ordering::Relaxed);
    }
}

impl<P, R> Drop for Job<P, R> {
    fn drop(&mut self) {
        // A dropped job stops and is joined, so no thread outlives its handle.
        self.shared.cancel.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_then_result() {
        let job = Job::spawn("t", 0u32, None, |ctx| {
            ctx.progress(5);
            std::thread::sleep(Duration::from_millis(50));
            "done"
        })
        .unwrap();
        assert!(matches!(job.wait(Duration::from_millis(5)), Poll::Running(_)));
        assert_eq!(job.wait(Duration::from_secs(5)), Poll::Done("done"));
        assert_eq!(job.wait(Duration::ZERO), Poll::Done("done"));
    }

    #[test]
    fn cancel_reaches_the_body() {
        let job = Job::spawn("t", (), None, |ctx| {
            while !ctx.cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            true
        })
        .unwrap();
        job.cancel();
        assert_eq!(job.wait(Duration::from_secs(5)), Poll::Done(true));
    }

    #[test]
    fn the_app_flag_cancels_too() {
        let flag = Arc::new(AtomicBool::new(false));
        let job = Job::spawn("t", (), Some(flag.clone()), |ctx| {
            while !ctx.cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            1
        })
        .unwrap();
        flag.store(true, Ordering::Relaxed);
        assert_eq!(job.wait(Duration::from_secs(5)), Poll::Done(1));
    }
}
