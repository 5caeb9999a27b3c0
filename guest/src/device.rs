//! Device-fit policy: how many threads to use on this CPU.
//!
//! Token generation on a phone is limited by memory bandwidth and by the
//! slowest thread: llama.cpp splits each matrix evenly, so a little core
//! holds back the big ones. The default is therefore one thread per *fast*
//! core — the Exynos 1280 (2 × A78 + 6 × A55) gets 2, not 8. A tuned value
//! (from `bittybot tune`) wins over the default; an explicit one wins over both.

/// One CPU as the host read it from sysfs (the WIT's `cpu-core`).
pub type Core = crate::host::CpuCore;

/// Most threads the default ever picks.
pub const MAX_DEFAULT_THREADS: u32 = 8;

/// Where a thread count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadSource {
    /// Asked for explicitly.
    Explicit,
    /// Stored by `bittybot tune`.
    Tuned,
    /// Derived from the CPU topology.
    Topology,
}

impl ThreadSource {
    /// Short name for stats lines.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadSource::Explicit => "explicit",
            ThreadSource::Tuned => "tuned",
            ThreadSource::Topology => "topology",
        }
    }
}

/// Number of fast cores: the online cores above the slowest class when the
/// cores differ (by `cpu_capacity`, else by maximum frequency); every online
/// core when they are alike or the files are missing.
pub fn fast_cores(cores: &[Core], online: u32) -> u32 {
    let live: Vec<&Core> = cores.iter().filter(|c| c.online).collect();
    if live.is_empty() {
        return online.max(1);
    }
    // Only trust a ranking every online core has.
    let ranks: Option<Vec<u32>> = if live.iter().all(|c| c.capacity.is_some()) {
        Some(live.iter().filter_map(|c| c.capacity).collect())
    } else if live.iter().all(|c| c.max_freq_khz.is_some()) {
        Some(live.iter().filter_map(|c| c.max_freq_khz).collect())
    } else {
        None
    };
    let Some(ranks) = ranks else {
        return live.len() as u32;
    };
    let slowest = ranks.iter().copied().min().unwrap_or(0);
    let fast = ranks.iter().filter(|&&r| r > slowest).count() as u32;
    if fast == 0 { live.len() as u32 } else { fast }
}

/// Thread counts for generation and for prompt processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// Generation threads.
    pub decode: u32,
    /// Prompt-processing threads.
    pub batch: u32,
    /// Where `decode` came from.
    pub source: ThreadSource,
}

/// Choose thread counts: explicit > tuned > topology.
pub fn choose_threads(
    cores: &[Core],
    online: u32,
    tuned: Option<(u32, u32)>,
    explicit_decode: Option<u32>,
    explicit_batch: Option<u32>,
) -> Threads {
    let fast = fast_cores(cores, online).clamp(1, MAX_DEFAULT_THREADS);
    let (mut decode, mut batch, mut source) = (fast, fast, ThreadSource::Topology);
    if let Some((d, b)) = tuned {
        (decode, batch, source) = (d.max(1), b.max(1), ThreadSource::Tuned);
    }
    if let Some(d) = explicit_decode.filter(|&d| d > 0) {
        decode = d;
        source = ThreadSource::Explicit;
        // An explicit decode count without a batch count sets both.
        if explicit_batch.is_none() && tuned.is_none() {
            batch = d;
        }
    }
    if let Some(b) = explicit_batch.filter(|&b| b > 0) {
        batch = b;
    }
    Threads { decode, batch, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(id: u32, freq: Option<u32>, cap: Option<u32>, cluster: u32) -> Core {
        Core { id, online: true, max_freq_khz: freq, capacity: cap, cluster: Some(cluster) }
    }

    /// Exynos 1280: CPUs 0-5 are A55 @ 2.0 GHz, 6-7 are A78 @ 2.4 GHz.
    fn exynos_1280() -> Vec<Core> {
        (0..8)
            .map(
                |i| {
                    if i < 6 { core(i, Some(2_002_000), None, 0) } else { core(i, Some(2_400_000), None, 1) }
                },
            )
            .collect()
    }

    #[test]
    fn exynos_1280_gets_two_threads() {
        assert_eq!(fast_cores(&exynos_1280(), 8), 2);
        let t = choose_threads(&exynos_1280(), 8, None, None, None);
        assert_eq!((t.decode, t.source), (2, ThreadSource::Topology));
    }

    #[test]
    fn capacity_wins_over_frequency() {
        let mut cores = exynos_1280();
        for c in &mut cores {
            c.capacity = Some(if c.id < 6 { 400 } else { 1024 });
            c.max_freq_khz = Some(2_000_000); // misleading, ignored
        }
        assert_eq!(fast_cores(&cores, 8), 2);
    }

    #[test]
    fn three_classes_keep_prime_and_performance_cores() {
        let cores: Vec<Core> = (0..8)
            .map(|i| match i {
                0..=2 => core(i, Some(2_000_000), None, 0),
                3..=6 => core(i, Some(2_800_000), None, 1),
                _ => core(i, Some(3_200_000), None, 2),
            })
            .collect();
        assert_eq!(fast_cores(&cores, 8), 5);
    }

    #[test]
    fn uniform_cores_all_count() {
        let cores: Vec<Core> = (0..8).map(|i| core(i, Some(2_500_000), None, 0)).collect();
        assert_eq!(fast_cores(&cores, 8), 8);
    }

    #[test]
    fn missing_frequency_files_fall_back_to_online_count() {
        let mut cores: Vec<Core> = (0..4).map(|i| core(i, None, None, 0)).collect();
        cores[0].max_freq_khz = Some(3_000_000);
        assert_eq!(fast_cores(&cores, 4), 4);
        assert_eq!(fast_cores(&[], 6), 6);
        assert_eq!(fast_cores(&[], 0), 1);
    }

    #[test]
    fn offline_cores_are_ignored() {
        let mut cores = exynos_1280();
        cores[7].online = false;
        assert_eq!(fast_cores(&cores, 7), 1);
    }

    #[test]
    fn precedence_explicit_over_tuned_over_topology() {
        let cores = exynos_1280();
        let tuned = choose_threads(&cores, 8, Some((3, 6)), None, None);
        assert_eq!((tuned.decode, tuned.batch, tuned.source), (3, 6, ThreadSource::Tuned));
        let explicit = choose_threads(&cores, 8, Some((3, 6)), Some(4), None);
        assert_eq!((explicit.decode, explicit.batch, explicit.source), (4, 6, ThreadSource::Explicit));
        let both = choose_threads(&cores, 8, None, Some(1), Some(5));
        assert_eq!((both.decode, both.batch), (1, 5));
    }
}
