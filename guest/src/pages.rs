//! The model's pages in memory: when to bring evicted pages back.
//!
//! On the phone the kernel evicts the mapped model after a few idle
//! minutes, and the next reply then faults it back one page at a time
//! (TTFT 2 s → 5–20 s). Two mechanisms use the host's warmup pass: a
//! `prepare` hint (focus, typing) starts it ahead of the send, and a turn
//! that starts with low residency starts it alongside its prompt.

use crate::host::{Job, Jobs, ModelSource, WarmOrder, WarmupState};

/// Below this fraction of model pages in memory, a turn or `prepare` re-warms.
pub const REWARM_BELOW: f32 = 0.9;

/// The loaded model's file and the warmup pass running on it, if any.
pub struct Pages<H: Jobs> {
    source: Option<ModelSource>,
    warmup: Option<H::Warmup>,
}

impl<H: Jobs> Default for Pages<H> {
    fn default() -> Self {
        Pages { source: None, warmup: None }
    }
}

impl<H: Jobs> Pages<H> {
    /// Follow a newly loaded model (or none); a pass on the old one is dropped.
    pub fn set_model(&mut self, source: Option<ModelSource>) {
        self.warmup = None;
        self.source = source;
    }

    /// Fraction of the model's pages in memory, when known.
    pub fn residency(&self, host: &H) -> Option<f32> {
        host.residency(self.source.as_ref()?).ok()
    }

    /// Whether a warmup pass is running.
    pub fn warming(&self) -> bool {
        self.warmup.as_ref().is_some_and(|w| matches!(w.wait(0), Ok(WarmupState::Running(_))))
    }

    /// Start a background pass unless one runs; true if one started.
    pub fn warm_in_background(&mut self, host: &H) -> bool {
        if self.warming() {
            return false;
        }
        let Some(source) = &self.source else { return false };
        self.warmup = Some(host.warmup(source, WarmOrder::ForwardPass));
        true
    }

    /// The app's hint that a send is coming: re-warm if the pages were
    /// evicted. True if a pass started.
    pub fn prepare(&mut self, host: &H) -> bool {
        if self.warming() {
            return false;
        }
        let low = self.residency(host).is_some_and(|r| r < REWARM_BELOW);
        low && self.warm_in_background(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn prepare_warms_only_evicted_pages() {
        let host = FakeHost::default();
        let mut pages = Pages::<FakeHost>::default();
        assert!(!pages.prepare(&host), "no model");
        pages.set_model(Some(ModelSource::Provided));
        assert!(!pages.prepare(&host), "resident: nothing to do");
        host.residency.set(0.1);
        assert!(pages.prepare(&host));
        assert_eq!((host.warmups.get(), host.residency.get()), (1, 1.0));
    }
}
