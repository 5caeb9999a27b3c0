//! The model's pages in memory: when to bring evicted pages back.
//!
//! On the phone the kernel evicts the mapped model after a few idle
//! minutes, and the next reply then faults it back one page at a time
//! (TTFT 2 s → 5–20 s). Two mechanisms use the host's warmup pass: a
//! `prepare` hint (focus, typing) starts it ahead of the send, and a turn
//! that starts with low residency starts it alongside its prompt.
//!
//! Neither helps when memory cannot hold the model: a pass over a file
//! larger than the page cache it can have only evicts, front to back, the
//! pages the decode is about to use. So a pass that ends with the file
//! still below [`REWARM_BELOW`] means "this device cannot hold the model
//! now", and no further pass starts for this model until it is loaded
//! again or a turn finds it resident again (the pressure was passing:
//! another app's memory came back).
//!
//! The strongest evidence is the end of a reply: the prompt and every
//! decode step read all the weights, so a file still resident when a
//! reply ends is one memory holds, and one that is not was paged out
//! while it was in use. That judgement replaces the device-fit policy's
//! estimate at load, which is a margin on figures, not a measurement
//! (under a balloon leaving 1,800 MB the fit said `paging`, 1,747 MiB
//! needed of 1,727, and the model stayed resident through every case).

use crate::host::{Job, Jobs, ModelSource, WarmOrder, WarmupState};
use crate::wit::app::MemoryOutlook;

/// Below this fraction of model pages in memory, a turn or `prepare` re-warms.
pub const REWARM_BELOW: f32 = 0.9;

/// The loaded model's file and the warmup pass running on it, if any.
pub struct Pages<H: Jobs> {
    source: Option<ModelSource>,
    warmup: Option<H::Warmup>,
    /// What was measured since the load: `Paging` when a finished pass or
    /// reply left less than [`REWARM_BELOW`] of the file in memory,
    /// `Resident` when a reply ended with it resident (and nothing failed
    /// to since); `None` when nothing has been, or a turn found the file
    /// resident again after a `Paging`.
    measured: Option<MemoryOutlook>,
    /// The device-fit policy's judgement at load.
    at_load: MemoryOutlook,
}

impl<H: Jobs> Default for Pages<H> {
    fn default() -> Self {
        Pages { source: None, warmup: None, measured: None, at_load: MemoryOutlook::Resident }
    }
}

impl<H: Jobs> Pages<H> {
    /// Follow a newly loaded model (or none) and what the device-fit policy
    /// said of it; a pass on the old one is dropped.
    pub fn set_model(&mut self, source: Option<ModelSource>, at_load: MemoryOutlook) {
        self.warmup = None;
        self.measured = None;
        self.at_load = at_load;
        self.source = source;
    }

    /// Whether the model can stay resident, as known now: `Paging` when a
    /// finished pass or reply left the file below the threshold,
    /// `Resident` when a reply ended with it resident since, else what the
    /// device-fit policy said at load.
    pub fn outlook(&mut self) -> MemoryOutlook {
        self.poll();
        self.measured.unwrap_or(self.at_load)
    }

    /// A finished pass or reply found that memory cannot hold the model now.
    fn cannot_hold(&self) -> bool {
        self.measured == Some(MemoryOutlook::Paging)
    }

    /// A reply that evaluated its prompt has ended: whether the file is
    /// still resident says whether memory holds the model (module docs).
    pub fn observe_reply_end(&mut self, host: &H) {
        // A pass that finished during the reply reports an older state:
        // take it first, so that this fresher measurement wins.
        self.poll();
        let Some(r) = self.residency(host) else { return };
        self.measured = Some(if r >= REWARM_BELOW { MemoryOutlook::Resident } else { MemoryOutlook::Paging });
    }

    /// Look at the running pass: note a finished one that could not make
    /// the file resident. True while it runs.
    fn poll(&mut self) -> bool {
        let Some(w) = &self.warmup else { return false };
        match w.wait(0) {
            Ok(WarmupState::Running(_)) => true,
            Ok(WarmupState::Done(report)) => {
                if report.residency_after < REWARM_BELOW {
                    self.measured = Some(MemoryOutlook::Paging);
                }
                self.warmup = None;
                false
            }
            Err(_) => {
                self.warmup = None;
                false
            }
        }
    }

    /// Fraction of the model's pages in memory, when known.
    pub fn residency(&self, host: &H) -> Option<f32> {
        host.residency(self.source.as_ref()?).ok()
    }

    /// Start a background pass unless one runs; true if one started.
    pub fn warm_in_background(&mut self, host: &H) -> bool {
        if self.poll() || self.cannot_hold() {
            return false;
        }
        let Some(source) = &self.source else { return false };
        self.warmup = Some(host.warmup(source, WarmOrder::ForwardPass));
        true
    }

    /// A turn or hint found `residency` of the file in memory: at or above
    /// the threshold, memory holds the model now, whatever a pass found before.
    pub fn observe(&mut self, residency: f32) {
        if residency >= REWARM_BELOW && self.cannot_hold() {
            self.measured = None;
        }
    }

    /// The app's hint that a send is coming: re-warm if the pages were
    /// evicted. True if a pass started.
    pub fn prepare(&mut self, host: &H) -> bool {
        if self.poll() {
            return false;
        }
        let Some(r) = self.residency(host) else { return false };
        self.observe(r);
        r < REWARM_BELOW && self.warm_in_background(host)
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
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Resident);
        assert!(!pages.prepare(&host), "resident: nothing to do");
        host.residency.set(0.1);
        assert!(pages.prepare(&host));
        assert_eq!((host.warmups.get(), host.residency.get()), (1, 1.0));
    }

    #[test]
    fn a_pass_that_cannot_make_the_model_resident_is_not_repeated() {
        let host = FakeHost::default();
        let mut pages = Pages::<FakeHost>::default();
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Resident);
        host.residency.set(0.1);
        host.warm_reach.set(0.6); // memory holds 60 % of the file
        assert!(pages.warm_in_background(&host));
        assert_eq!(pages.outlook(), MemoryOutlook::Paging, "the app is told");
        assert!(pages.cannot_hold());
        host.residency.set(0.3);
        assert!(!pages.prepare(&host), "prepare after a pass that could not hold the model");
        assert!(!pages.warm_in_background(&host), "re-warm at send likewise");
        assert_eq!(host.warmups.get(), 1);
        // The pressure passes (the model is found resident again): the app
        // is told, and a later eviction is warmed again.
        host.residency.set(1.0);
        assert!(!pages.prepare(&host), "resident: nothing to do");
        assert_eq!(pages.outlook(), MemoryOutlook::Resident);
        host.residency.set(0.2);
        host.warm_reach.set(1.0);
        assert!(pages.prepare(&host), "evicted again, and memory holds it now");
        assert_eq!(host.warmups.get(), 2);
        host.warm_reach.set(0.6);
        host.residency.set(0.1);
        assert!(pages.warm_in_background(&host));
        assert_eq!(pages.outlook(), MemoryOutlook::Paging);
        // Another model (or the same one reloaded, e.g. with a smaller
        // context) is measured afresh.
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Resident);
        host.warm_reach.set(1.0);
        assert_eq!(pages.outlook(), MemoryOutlook::Resident);
        assert!(!pages.cannot_hold());
        assert!(pages.prepare(&host));
        assert_eq!((host.warmups.get(), host.residency.get()), (4, 1.0));
        assert_eq!(pages.outlook(), MemoryOutlook::Resident);
    }

    #[test]
    fn the_load_time_judgement_stands_until_a_reply_ends_or_another_load() {
        let host = FakeHost::default();
        let mut pages = Pages::<FakeHost>::default();
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Paging);
        assert_eq!(pages.outlook(), MemoryOutlook::Paging);
        host.residency.set(0.1);
        assert!(pages.prepare(&host), "a pass is still worth trying");
        assert_eq!(pages.outlook(), MemoryOutlook::Paging, "a full pass does not undo the fit's verdict");
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Resident);
        assert_eq!(pages.outlook(), MemoryOutlook::Resident);
        // A reply that ends with the model resident does: it read every weight.
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Paging);
        pages.observe_reply_end(&host);
        assert_eq!(pages.outlook(), MemoryOutlook::Resident);
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Paging);
        assert_eq!(pages.outlook(), MemoryOutlook::Paging, "a new load starts from its own verdict");
    }

    #[test]
    fn a_reply_that_ends_resident_outweighs_a_pass_that_finished_during_it() {
        let host = FakeHost::default();
        let mut pages = Pages::<FakeHost>::default();
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Resident);
        host.residency.set(0.1);
        host.warm_reach.set(0.6);
        assert!(pages.prepare(&host), "a pass starts");
        // The pass ended at 0.6 while the reply ran; the reply's own decode
        // then faulted the rest in, and the file is resident at its end.
        host.residency.set(1.0);
        pages.observe_reply_end(&host);
        assert_eq!(pages.outlook(), MemoryOutlook::Resident);
    }

    #[test]
    fn a_reply_that_ends_with_the_model_paged_out_says_paging() {
        let host = FakeHost::default();
        let mut pages = Pages::<FakeHost>::default();
        pages.set_model(Some(ModelSource::Provided), MemoryOutlook::Resident);
        pages.observe_reply_end(&host);
        assert_eq!(pages.outlook(), MemoryOutlook::Resident);
        // Paged out while the reply used it: memory does not hold it, and
        // no pass starts that would only evict what the decode needs.
        host.residency.set(0.5);
        pages.observe_reply_end(&host);
        assert_eq!(pages.outlook(), MemoryOutlook::Paging);
        assert!(!pages.prepare(&host) && !pages.warm_in_background(&host));
        assert_eq!(host.warmups.get(), 0);
        // A later reply that ends resident: memory holds it again.
        host.residency.set(1.0);
        pages.observe_reply_end(&host);
        assert_eq!(pages.outlook(), MemoryOutlook::Resident);
    }
}
