//! Time accounting of one call into the guest.
//!
//! A call may take at most `call_time` of *guest* time: its own code, its
//! sleeps, its waits on background jobs. The host's own work for it —
//! loading, decoding, tokenizing, hashing — is not charged (imports run it
//! inside [`CallClock::work`]). The epoch callback stops the guest when the
//! budget is spent; waits and sleeps are clamped to what is left, so a
//! guest cannot block a call by waiting either.
//!
//! The host's work is bounded per import (batch sizes, tokenize bytes), but
//! a guest can ask for it again and again; so a call also has a wall-clock
//! limit for everything, host work included (`call_wall_time`), checked by
//! the same callback between the guest's instructions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Inner {
    start: Mutex<Instant>,
    work_ns: AtomicU64,
    budget_ns: AtomicU64,
    wall_ns: AtomicU64,
}

/// The clock of the current call, shared by the store and the imports.
#[derive(Debug, Clone)]
pub struct CallClock(Arc<Inner>);

impl CallClock {
    /// A clock with this guest-time budget and this wall-clock limit per call.
    pub fn new(budget: Duration, wall: Duration) -> Self {
        CallClock(Arc::new(Inner {
            start: Mutex::new(Instant::now()),
            work_ns: AtomicU64::new(0),
            budget_ns: AtomicU64::new(budget.as_nanos() as u64),
            wall_ns: AtomicU64::new(wall.as_nanos().min(u64::MAX as u128) as u64),
        }))
    }

    /// A call into the guest starts.
    pub fn start_call(&self) {
        *self.0.start.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.work_ns.store(0, Ordering::Relaxed);
    }

    /// Change the budget.
    pub fn set_budget(&self, budget: Duration) {
        self.0.budget_ns.store(budget.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The budget.
    pub fn budget(&self) -> Duration {
        Duration::from_nanos(self.0.budget_ns.load(Ordering::Relaxed))
    }

    /// Guest time used in this call.
    pub fn guest_time(&self) -> Duration {
        let start = *self.0.start.lock().unwrap_or_else(|e| e.into_inner());
        start.elapsed().saturating_sub(Duration::from_nanos(self.0.work_ns.load(Ordering::Relaxed)))
    }

    /// Guest time left in this call.
    pub fn remaining(&self) -> Duration {
        self.budget().saturating_sub(self.guest_time())
    }

    /// How long a wait of `asked` may block: at most `cap` and what is
    /// left. With nothing left it still blocks for one epoch tick, so the
    /// epoch callback stops the guest at its next check instead of letting
    /// it spin through zero-length waits.
    pub fn clamp_wait(&self, asked: Duration, cap: Duration) -> Duration {
        let left = self.remaining();
        let left = if left.is_zero() { super::store::EPOCH_TICK } else { left };
        asked.min(cap).min(left)
    }

    /// Why the guest must stop, once it has used more than its budget or
    /// the call has run longer than its wall-clock limit.
    pub fn over_budget(&self) -> Option<String> {
        let start = *self.0.start.lock().unwrap_or_else(|e| e.into_inner());
        let wall = Duration::from_nanos(self.0.wall_ns.load(Ordering::Relaxed));
        if start.elapsed() > wall {
            return Some(format!(
                "the call ran for {} s, the host's work for it included (limit `call_wall_time`, {} s)",
                start.elapsed().as_secs(),
                wall.as_secs()
            ));
        }
        let used = self.guest_time();
        (used > self.budget()).then(|| {
            format!(
                "the guest used {} ms of CPU time and waiting in one call (budget {} ms, limit `call_time`)",
                used.as_millis(),
                self.budget().as_millis()
            )
        })
    }

    /// Run host work for the guest, not charged to its time.
    pub fn work<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0.work_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_work_is_not_charged_and_waits_are_clamped() {
        let c = CallClock::new(Duration::from_millis(200), Duration::from_secs(60));
        c.start_call();
        c.work(|| std::thread::sleep(Duration::from_millis(300)));
        assert!(c.guest_time() < Duration::from_millis(100), "{:?}", c.guest_time());
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.clamp_wait(Duration::from_secs(10), Duration::from_secs(1)) <= Duration::from_millis(80));
        assert_eq!(c.clamp_wait(Duration::from_millis(5), Duration::from_secs(1)), Duration::from_millis(5));
    }

    #[test]
    fn host_work_counts_against_the_wall_clock_limit() {
        let c = CallClock::new(Duration::from_secs(5), Duration::from_millis(150));
        c.start_call();
        for _ in 0..2 {
            c.work(|| std::thread::sleep(Duration::from_millis(100)));
        }
        let why = c.over_budget().expect("200 ms of host work against a 150 ms wall limit");
        assert!(why.contains("call_wall_time"), "{why}");
        c.start_call();
        assert_eq!(c.over_budget(), None, "a new call starts afresh");
    }
}
