//! Background jobs the guest polls: hashing, downloading, warming up.
//!
//! A job runs on its own thread and publishes progress; the guest (which
//! cannot be called back) asks `wait(timeout)` and gets the latest progress
//! or the result. Cancelling sets a flag the job checks between chunks (and
//! runs the job's cancel hook, e.g. shutting a connection down); the
//! app-wide cancel flag stops it too. Dropping a job cancels it and waits a
//! moment for it; a job still stuck after that (a connect in progress) is
//! left to end by itself, so the host never blocks on a stalled transfer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Job threads alive in the process, finished or not: at most
/// [`MAX_THREADS`], so dropped-but-stuck jobs cannot pile up.
static THREADS: AtomicUsize = AtomicUsize::new(0);
/// Most job threads alive at once.
pub const MAX_THREADS: usize = 32;
/// How long dropping a job waits for its thread.
const DROP_WAIT: Duration = Duration::from_millis(200);

type Hook = Box<dyn Fn() + Send>;

/// What a job's body sees.
pub struct JobCtx<P> {
    shared: Arc<JobCell<P>>,
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

    /// Run `hook` when the job is cancelled (at once if it already is).
    pub fn on_cancel(&self, hook: impl Fn() + Send + 'static) {
        if self.cancelled() {
            hook();
        }
        *self.shared.hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
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

struct JobCell<P> {
    state: Mutex<State<P>>,
    changed: Condvar,
    cancel: AtomicBool,
    hook: Mutex<Option<Hook>>,
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
    shared: Arc<JobCell<P>>,
    result: Arc<Mutex<Option<R>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    spawned: bool,
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
        if THREADS.fetch_add(1, Ordering::SeqCst) >= MAX_THREADS {
            THREADS.fetch_sub(1, Ordering::SeqCst);
            return Err(std::io::Error::other(format!(
                "more than {MAX_THREADS} background jobs are running"
            )));
        }
        let shared = Arc::new(JobCell {
            state: Mutex::new(State { progress: initial, done: false }),
            changed: Condvar::new(),
            cancel: AtomicBool::new(false),
            hook: Mutex::new(None),
        });
        let result = Arc::new(Mutex::new(None));
        let ctx = JobCtx { shared: shared.clone(), app_cancel };
        let out = result.clone();
        let spawned = std::thread::Builder::new().name(format!("bittybot-{name}")).spawn(move || {
            let r = body(&ctx);
            if let Ok(mut slot) = out.lock() {
                *slot = Some(r);
            }
            if let Ok(mut s) = ctx.shared.state.lock() {
                s.done = true;
            }
            ctx.shared.changed.notify_all();
            THREADS.fetch_sub(1, Ordering::SeqCst);
        });
        let thread = spawned.inspect_err(|_| {
            THREADS.fetch_sub(1, Ordering::SeqCst);
        })?;
        Ok(Job { shared, result, thread: Some(thread), spawned: true })
    }

    /// Whether the job ran on a thread (false for [`Job::finished`]).
    pub fn started(&self) -> bool {
        self.spawned
    }

    /// A job that is already over (e.g. refused before it started).
    pub fn finished(progress: P, result: R) -> Self {
        let shared = Arc::new(JobCell {
            state: Mutex::new(State { progress, done: true }),
            changed: Condvar::new(),
            cancel: AtomicBool::new(false),
            hook: Mutex::new(None),
        });
        Job { shared, result: Arc::new(Mutex::new(Some(result))), thread: None, spawned: false }
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
        cancel(&self.shared);
    }
}

fn cancel<P>(shared: &JobCell<P>) {
    shared.cancel.store(true, Ordering::Relaxed);
    if let Some(hook) = shared.hook.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        hook();
    }
}

impl<P, R> Drop for Job<P, R> {
    fn drop(&mut self) {
        cancel(&self.shared);
        let guard = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .shared
            .changed
            .wait_timeout_while(guard, DROP_WAIT, |s| !s.done)
            .unwrap_or_else(|e| e.into_inner());
        let done = guard.done;
        drop(guard);
        if let Some(t) = self.thread.take()
            && done
        {
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
    fn dropping_a_stuck_job_does_not_block_and_runs_its_hook() {
        let hooked = Arc::new(AtomicBool::new(false));
        let seen = hooked.clone();
        let job = Job::spawn("t", (), None, move |ctx| {
            let seen = seen.clone();
            ctx.on_cancel(move || seen.store(true, Ordering::Relaxed));
            std::thread::sleep(Duration::from_secs(2));
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = std::time::Instant::now();
        drop(job);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(hooked.load(Ordering::Relaxed));
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
