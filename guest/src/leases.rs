//! Sequence leasing: each open session holds one of the context's KV
//! sequences until it is closed (or its model is unloaded).

/// Which KV sequences are in use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leases {
    in_use: Vec<bool>,
}

impl Leases {
    /// `n` free sequences.
    pub fn new(n: u32) -> Self {
        Leases { in_use: vec![false; n as usize] }
    }

    /// Take the lowest free sequence.
    pub fn acquire(&mut self) -> Option<u32> {
        let free = self.in_use.iter().position(|used| !used)?;
        self.in_use[free] = true;
        Some(free as u32)
    }

    /// Give a sequence back.
    pub fn release(&mut self, seq: u32) {
        if let Some(slot) = self.in_use.get_mut(seq as usize) {
            *slot = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_leased_once_and_reused_after_release() {
        let mut l = Leases::new(2);
        assert_eq!((l.acquire(), l.acquire(), l.acquire()), (Some(0), Some(1), None));
        l.release(0);
        l.release(7);
        assert_eq!(l.acquire(), Some(0));
        assert_eq!(Leases::default().acquire(), None, "no model, no sequences");
    }
}
