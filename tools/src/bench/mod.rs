//! `bittybot bench`: the full path through the guest against a raw
//! llama.cpp loop with no guest (`raw.rs`), on the same model, threads,
//! prompt tokens and greedy sampling, alternating repetition by repetition
//! so drift in the machine hits both alike, and compared pair by pair; then
//! the page-residency cases (`residency.rs`) and the prefix cache across
//! restarts (`prefix.rs`).
//!
//! Definitions (the same for both paths):
//! - load: model file → ready context;
//! - TTFT: from handing over the prompt to the first visible text (raw: the
//!   first sampled token's text), measured on the host;
//! - prompt tok/s: prompt tokens ÷ prompt evaluation time;
//! - decode tok/s: (generated − 1) ÷ time from the first to the last sampled token.

mod prefix;
mod raw;
mod residency;
mod table;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bittybot_host::{
    GenerationStats, GuestSource, KvType, LoadOptions, MemoryOutlook, Message, ModelSource, Runtime,
    RuntimeError, RuntimeOptions, Session, SessionKind, SessionOptions,
};
use serde::Serialize;

pub use table::table;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The GGUF model.
    pub model: PathBuf,
    /// The runtime's data directory.
    pub data_dir: PathBuf,
    /// The guest.
    pub guest: GuestSource,
    /// Generation threads (default: the guest's choice, used for both paths).
    pub threads: Option<u32>,
    /// Prompt threads (default: the guest's choice).
    pub threads_batch: Option<u32>,
    /// Context per sequence; `None`: the guest's device-fit policy picks
    /// the context and KV type for the memory available, as in the app
    /// (the raw loop then gets the same).
    pub n_ctx: Option<u32>,
    /// Logical batch.
    pub n_batch: u32,
    /// Repetitions.
    pub reps: usize,
    /// The user message.
    pub prompt: String,
    /// The system prompt.
    pub system: String,
    /// Most tokens generated per repetition.
    pub max_tokens: u32,
    /// Repetitions of the eviction cases (0 skips them).
    pub evict_reps: usize,
    /// Think time between `prepare` and send in case (d).
    pub think: Duration,
    /// Repetitions of the prefix-cache restarts (0 skips them).
    pub prefix_reps: usize,
    /// Drops the model's pages when it is served through the throttled
    /// mount and `MADV_PAGEOUT` + `POSIX_FADV_DONTNEED` leave some behind.
    pub invalidator: Option<crate::phone::storage::Invalidator>,
}

/// One repetition's figures.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Sample {
    /// ms.
    pub ttft_ms: f64,
    /// tokens/s.
    pub prompt_tps: f64,
    /// tokens/s.
    pub decode_tps: f64,
    /// Prompt tokens evaluated.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated: u32,
}

impl Sample {
    /// The prompt evaluation's time, ms (from its tokens and speed).
    fn prompt_ms(&self) -> f64 {
        if self.prompt_tps > 0.0 { self.prompt_tokens as f64 / self.prompt_tps * 1000.0 } else { 0.0 }
    }
}

/// Median and spread of a series.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// A 95 % confidence interval of the median (distribution-free, from
    /// the order statistics), when there are 6 values or more.
    pub median_ci95: Option<[f64; 2]>,
}

/// Median, min and max of values (zeros when empty).
pub fn summarize(values: &[f64]) -> Summary {
    if values.is_empty() {
        return Summary { median: 0.0, min: 0.0, max: 0.0, median_ci95: None };
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    let median_ci95 = median_ci_rank(n).map(|k| [v[k], v[n - 1 - k]]);
    Summary { median, min: v[0], max: v[n - 1], median_ci95 }
}

/// The largest 0-based rank `k` for which [v(k), v(n−1−k)] of `n` sorted
/// values covers the median with at least 95 % probability. It misses only
/// when at most `k` values fall on one side of the median: probability
/// 2·P(X ≤ k) for X ~ Binomial(n, ½). `None` below 6 values, where no
/// such interval exists. (Hand-written: a dozen lines, no crate needed.)
fn median_ci_rank(n: usize) -> Option<usize> {
    // ln C(n, i) − n ln 2, summed as probabilities; n is small (repetitions).
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_c = 0.0f64; // ln C(n, 0)
    let mut below = 0.0f64; // P(X ≤ i)
    let mut best = None;
    for i in 0..n / 2 {
        below += (ln_c + ln_half_n).exp();
        if 2.0 * below > 0.05 {
            break;
        }
        best = Some(i);
        ln_c += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    best
}

/// One path's results.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    /// Model load, ms.
    pub load_ms: f64,
    /// TTFT.
    pub ttft_ms: Summary,
    /// Prompt speed.
    pub prompt_tps: Summary,
    /// Decode speed.
    pub decode_tps: Summary,
    /// Every repetition.
    pub samples: Vec<Sample>,
}

impl PathReport {
    fn new(load_ms: f64, samples: Vec<Sample>) -> Self {
        let col = |f: fn(&Sample) -> f64| summarize(&samples.iter().map(f).collect::<Vec<_>>());
        PathReport {
            load_ms,
            ttft_ms: col(|s| s.ttft_ms),
            prompt_tps: col(|s| s.prompt_tps),
            decode_tps: col(|s| s.decode_tps),
            samples,
        }
    }
}

/// Guest start-up figures.
#[derive(Debug, Clone, Serialize)]
pub struct StartFigures {
    /// First start: component load (compile when the cache was empty), ms.
    pub first_component_ms: f64,
    /// First start: how the component was obtained.
    pub first_outcome: String,
    /// Second start: component from the cache, ms.
    pub cached_component_ms: f64,
    /// Second start: how the component was obtained.
    pub cached_outcome: String,
    /// Second start: link + instantiate, ms.
    pub cached_instantiate_ms: f64,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Model file.
    pub model: String,
    /// Model bytes.
    pub model_bytes: u64,
    /// Generation threads.
    pub threads: u32,
    /// Prompt threads.
    pub threads_batch: u32,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Context per session, and who chose it (`-c` or the device fit).
    pub n_ctx: u32,
    /// KV cache type (`f16` or `q8_0`).
    pub kv_type: String,
    /// Repetitions.
    pub reps: usize,
    /// Raw llama-cpp-2.
    pub raw: PathReport,
    /// Through the guest.
    pub guest: PathReport,
    /// guest decode tok/s ÷ raw (medians).
    pub decode_ratio: f64,
    /// guest decode tok/s ÷ raw of each repetition (the two run back to back).
    pub decode_ratio_paired: Summary,
    /// guest prompt tok/s ÷ raw (medians).
    pub prompt_ratio: f64,
    /// guest TTFT − raw TTFT (medians), ms.
    pub ttft_overhead_ms: f64,
    /// guest TTFT − raw TTFT of each repetition (the two run back to back), ms.
    pub ttft_overhead_paired_ms: Summary,
    /// guest TTFT ÷ raw TTFT of each repetition.
    pub ttft_ratio_paired: Summary,
    /// The paired TTFT overhead split in two, ms: the guest's prompt
    /// evaluation − raw's (the same `llama_decode` on the same tokens)...
    pub prompt_eval_overhead_paired_ms: Summary,
    /// ...and the rest, the TTFT outside the prompt evaluation (guest:
    /// rendering, tokenizing, KV and residency checks, the first token to
    /// the first chunk; raw: tokenizing and the first token).
    pub outside_prompt_overhead_paired_ms: Summary,
    /// Guest start-up.
    pub start: StartFigures,
    /// Whether both paths generated the same number of tokens every time.
    pub same_tokens: bool,
    /// The device-fit policy's judgement at load (`resident` or `paging`)
    /// for the memory available then, and its remarks.
    pub fit_outlook: String,
    /// The device-fit policy's remarks at load.
    pub fit_notes: Vec<String>,
    /// The page-residency cases, when run.
    pub residency: Option<ResidencyReport>,
    /// First-turn TTFT after a restart with and without the prefix cache, when run.
    pub prefix: Option<PrefixReport>,
    /// The phone conditions it ran under (`run_under`).
    pub conditions: ConditionsReport,
}

/// The phone conditions of a run: slow storage, memory pressure.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConditionsReport {
    /// The storage profile and what the mount served, when the model was
    /// served through the throttled mount.
    pub storage: Option<crate::phone::storage::StorageReport>,
    /// The memory asked to be left available, MB, when a balloon ran.
    pub available_mb: Option<u64>,
    /// What the balloon did.
    pub balloon: Option<crate::phone::balloon::BalloonReport>,
    /// Wall time of the whole run, s.
    pub wall_s: f64,
}

/// First turn after a restart: the system turn evaluated, or restored from
/// the saved state; against a later turn of the same length.
#[derive(Debug, Clone, Serialize)]
pub struct PrefixReport {
    /// Prompt tokens of the first turn without the cache.
    pub prompt_tokens: u32,
    /// Prompt tokens evaluated with the cache.
    pub cached_prompt_tokens: u32,
    /// First turn after a restart, cache off.
    pub first_uncached_ttft_ms: Summary,
    /// First turn after a restart, cache on.
    pub first_cached_ttft_ms: Summary,
    /// A later turn with the same message.
    pub later_ttft_ms: Summary,
    /// cached first turn ÷ later turn (medians).
    pub cached_vs_later: f64,
}

/// One eviction case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// What the case does.
    pub case: String,
    /// TTFT.
    pub ttft_ms: Summary,
    /// Prompt speed.
    pub prompt_tps: Summary,
    /// Decode speed.
    pub decode_tps: Summary,
    /// Model residency when the turn started.
    pub residency: Summary,
    /// Re-warm time inside the turn.
    pub warmup_ms: Summary,
    /// Turns of the case whose reply said the model cannot stay resident.
    pub paging_turns: usize,
    /// Turns of the case.
    pub turns: usize,
}

/// The page-residency benchmark: what the phone's "after idle" costs and
/// what warmup and `prepare` win back.
#[derive(Debug, Clone, Serialize)]
pub struct ResidencyReport {
    /// Residency right after an eviction (how well eviction works here).
    pub after_evict: f32,
    /// (a) fully resident, (b) evicted without warmup, (c) evicted with
    /// re-warm at send, (d) evicted with `prepare` and a think time.
    pub cases: Vec<CaseReport>,
    /// (d) TTFT ÷ (a) TTFT (medians).
    pub prepared_vs_resident: f64,
    /// (b) TTFT ÷ (a) TTFT (medians).
    pub evicted_vs_resident: f64,
    /// (c) TTFT ÷ (a) TTFT (medians).
    pub rewarm_vs_resident: f64,
    /// Whether (c) was faster than (b) in every repetition (each pair ran back to back).
    pub rewarm_beats_evicted_every_run: bool,
    /// How the pages were dropped: "pageout+fadvise", or "fuse-inval" when
    /// the mount had to invalidate what those left behind.
    pub eviction: String,
    /// A full warmup pass over the evicted file, ms.
    pub warm_pass_ms: Summary,
    /// Warmup pass on an evicted file, bytes/s (median).
    pub warmup_bytes_per_s: f64,
    /// `cat FILE > /dev/null` on an evicted file, bytes/s (median).
    pub cat_bytes_per_s: f64,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn runtime_options(cfg: &BenchConfig) -> RuntimeOptions {
    let mut o = RuntimeOptions::new(&cfg.data_dir);
    o.guest = cfg.guest.clone();
    o.model = Some(cfg.model.clone());
    o
}

/// Run the benchmark.
pub fn run(cfg: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<BenchReport, BenchError> {
    if cfg.reps == 0 {
        return Err(BenchError::Other("at least one repetition is needed".into()));
    }
    // Start-up: a first start (compiles when the cache is empty), then a
    // second one that must come from the cache.
    let first = Runtime::start(runtime_options(cfg))?;
    let first_report = first.start_report().clone();
    drop(first);
    let mut rt = Runtime::start(runtime_options(cfg))?;
    let second = rt.start_report().clone();

    progress("loading the model through the guest");
    let t = Instant::now();
    let load = rt.load_model(&LoadOptions {
        source: ModelSource::Provided,
        n_ctx: cfg.n_ctx,
        n_batch: Some(cfg.n_batch),
        threads: cfg.threads,
        threads_batch: cfg.threads_batch,
        use_mmap: Some(true),
    })?;
    let (info, fit_outlook, fit_notes) = (load.info, outlook_name(load.outlook), load.notes);
    let guest_load_ms = ms(t.elapsed());
    let threads = info.settings.threads;
    let threads_batch = info.settings.threads_batch;

    let session = rt.open_session(SessionKind::Chat)?;
    let mut opts = SessionOptions::unchanged();
    opts.temperature = Some(0.0);
    opts.repeat_penalty = Some(1.0);
    opts.max_tokens = Some(cfg.max_tokens);
    opts.system_prompt = Some(cfg.system.clone());
    // The raw loop evaluates the whole prompt every time; so must the guest here.
    opts.prefix_cache = Some(false);
    rt.configure(&session, &opts)?;
    let rendered = rt.render_prompt(
        &[
            Message { role: "system".into(), content: cfg.system.clone() },
            Message { role: "user".into(), content: cfg.prompt.clone() },
        ],
        true,
    )?;
    let prompt_tokens = rendered.tokens;
    if prompt_tokens.is_empty() {
        return Err(BenchError::Other("the prompt rendered to no tokens".into()));
    }

    progress("loading the model for the raw loop");
    // The same context shape as the guest's (sequences × context), so only
    // the path differs.
    let shape = raw::RawShape {
        n_ctx: info.settings.n_ctx,
        n_seq: info.settings.n_seq_max,
        kv: info.settings.kv_type,
        n_batch: cfg.n_batch,
        threads,
        threads_batch,
    };
    let (mut raw, raw_load_ms) = raw::RawLoop::load(&cfg.model, &shape)?;

    // One unmeasured round each: first-touch of pages, thread pools, caches.
    raw.run(&prompt_tokens, cfg.max_tokens.min(8))?;
    rt.reset(&session)?;
    turn(&mut rt, &session, &cfg.prompt)?;

    let mut raw_samples = Vec::new();
    let mut guest_samples = Vec::new();
    let mut same_tokens = true;
    for rep in 0..cfg.reps {
        progress(&format!("repetition {}/{}", rep + 1, cfg.reps));
        // Alternate which path goes first, so neither always runs on a warmer machine.
        let (r, g) = if rep % 2 == 0 {
            let r = raw.run(&prompt_tokens, cfg.max_tokens)?;
            rt.reset(&session)?;
            (r, turn(&mut rt, &session, &cfg.prompt)?.0)
        } else {
            rt.reset(&session)?;
            let g = turn(&mut rt, &session, &cfg.prompt)?.0;
            (raw.run(&prompt_tokens, cfg.max_tokens)?, g)
        };
        same_tokens &= g.generated == r.generated && g.prompt_tokens == r.prompt_tokens;
        raw_samples.push(r);
        guest_samples.push(g);
    }
    // The raw loop's context (its KV cache and compute buffers) is not the
    // app's: under a memory balloon it would take memory the residency
    // cases, which measure the app's conditions, should have.
    drop(raw);
    let residency = if cfg.evict_reps > 0 {
        progress("page residency cases");
        Some(residency::cases(cfg, &mut rt, &session, &mut progress)?)
    } else {
        None
    };
    rt.close_session(session)?;
    drop(rt);
    let prefix = if cfg.prefix_reps > 0 {
        progress("prefix cache restarts");
        Some(prefix::restarts(cfg, threads, threads_batch)?)
    } else {
        None
    };

    let pairs = raw_samples.iter().zip(&guest_samples);
    let overhead: Vec<f64> = pairs.clone().map(|(r, g)| g.ttft_ms - r.ttft_ms).collect();
    let ratios: Vec<f64> = pairs.clone().map(|(r, g)| g.ttft_ms / r.ttft_ms.max(1e-9)).collect();
    let prompt_overhead: Vec<f64> = pairs.clone().map(|(r, g)| g.prompt_ms() - r.prompt_ms()).collect();
    let outside: Vec<f64> =
        pairs.clone().map(|(r, g)| (g.ttft_ms - g.prompt_ms()) - (r.ttft_ms - r.prompt_ms())).collect();
    let decode_ratios: Vec<f64> = pairs.map(|(r, g)| g.decode_tps / r.decode_tps.max(1e-9)).collect();
    let raw = PathReport::new(raw_load_ms, raw_samples);
    let guest = PathReport::new(guest_load_ms, guest_samples);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(BenchReport {
        model: cfg.model.display().to_string(),
        model_bytes: std::fs::metadata(&cfg.model).map(|m| m.len()).unwrap_or(0),
        threads,
        threads_batch,
        prompt_tokens: prompt_tokens.len() as u32,
        n_ctx: info.settings.n_ctx,
        kv_type: match info.settings.kv_type {
            KvType::F16 => "f16",
            KvType::Q80 => "q8_0",
        }
        .to_owned(),
        reps: cfg.reps,
        decode_ratio: ratio(guest.decode_tps.median, raw.decode_tps.median),
        decode_ratio_paired: summarize(&decode_ratios),
        prompt_ratio: ratio(guest.prompt_tps.median, raw.prompt_tps.median),
        ttft_overhead_ms: guest.ttft_ms.median - raw.ttft_ms.median,
        ttft_overhead_paired_ms: summarize(&overhead),
        ttft_ratio_paired: summarize(&ratios),
        prompt_eval_overhead_paired_ms: summarize(&prompt_overhead),
        outside_prompt_overhead_paired_ms: summarize(&outside),
        raw,
        guest,
        start: StartFigures {
            first_component_ms: first_report.component.component_ms,
            first_outcome: format!("{:?}", first_report.component.outcome),
            cached_component_ms: second.component.component_ms,
            cached_outcome: format!("{:?}", second.component.outcome),
            cached_instantiate_ms: second.instantiate_ms,
        },
        same_tokens,
        fit_outlook,
        fit_notes,
        residency,
        prefix,
        conditions: ConditionsReport::default(),
    })
}

/// The phone conditions to run under.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Serve the model through the throttled FUSE mount with this profile.
    pub storage: Option<crate::phone::storage::Profile>,
    /// Leave about this many MB of MemAvailable (a balloon), before the model loads.
    pub available_mb: Option<u64>,
    /// Stop with an error when no stage reports progress for this long.
    pub stall_timeout: Option<Duration>,
}

/// Errors of a conditioned run.
impl From<crate::phone::storage::StorageError> for BenchError {
    fn from(e: crate::phone::storage::StorageError) -> Self {
        BenchError::Other(e.to_string())
    }
}

impl From<crate::phone::balloon::BalloonError> for BenchError {
    fn from(e: crate::phone::balloon::BalloonError) -> Self {
        BenchError::Other(e.to_string())
    }
}

/// Run the benchmark under phone conditions: the model served through the
/// throttled mount (every case, the restarts included), a balloon leaving
/// `available_mb`. Both are undone when this returns, also on error or
/// panic (guards), and on Ctrl-C (`phone::cleanup`). A stage that makes
/// no progress within `stall_timeout` ends the process with an error
/// naming it, after undoing both.
pub fn run_under(
    cfg: &BenchConfig,
    cond: &Conditions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    use crate::phone::{balloon::Balloon, cleanup, storage::Mount};
    cleanup::install();
    let started = Instant::now();
    let mount = match &cond.storage {
        Some(p) => {
            let m = Mount::new(&cfg.model, p.clone(), None)?;
            progress(&format!(
                "serving {} through {} ({} MB/s, {} ms per request, {} KiB max request, queue depth {})",
                cfg.model.display(),
                m.mountpoint().display(),
                p.mbps,
                p.latency_ms,
                p.max_request >> 10,
                p.queue_depth
            ));
            Some(m)
        }
        None => None,
    };
    let original = cfg.model.clone();
    let mut cfg = cfg.clone();
    if let Some(m) = &mount {
        cfg.model = m.path_of(&cfg.model);
        cfg.invalidator = Some(m.invalidator());
    }
    let balloon = match cond.available_mb {
        Some(n) => {
            let b = Balloon::leave_available(n)?;
            let r = b.report();
            progress(&format!(
                "balloon: {} MB held (locked: {}), MemAvailable {} → {} MB",
                r.balloon_mb, r.locked, r.available_before_mb, r.available_after_mb
            ));
            Some(b)
        }
        None => None,
    };
    let watchdog = cond.stall_timeout.map(Watchdog::start);
    let result = run(&cfg, |m| {
        if let Some(w) = &watchdog {
            w.stage(m);
        }
        progress(m)
    });
    drop(watchdog);
    let balloon_report = balloon.as_ref().map(|b| b.report());
    drop(balloon);
    let storage_report = mount.as_ref().map(|m| m.report());
    if let Some(m) = mount {
        m.unmount().map_err(|e| BenchError::Other(format!("unmounting the throttled storage: {e}")))?;
    }
    let mut report = result?;
    report.model = original.display().to_string();
    report.conditions = ConditionsReport {
        storage: storage_report,
        available_mb: cond.available_mb,
        balloon: balloon_report,
        wall_s: started.elapsed().as_secs_f64(),
    };
    Ok(report)
}

/// Ends the process when a stage stalls (after undoing the phone conditions).
struct Watchdog {
    state: std::sync::Arc<std::sync::Mutex<(String, Instant, bool)>>,
}

impl Watchdog {
    fn start(limit: Duration) -> Watchdog {
        let state = std::sync::Arc::new(std::sync::Mutex::new(("start".to_owned(), Instant::now(), false)));
        let s = state.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let st = s.lock().unwrap_or_else(|e| e.into_inner());
                if st.2 {
                    return;
                }
                if st.1.elapsed() > limit {
                    eprintln!(
                        "bench: stage \"{}\" made no progress in {:.0} s; stopping (mount detached, balloon killed)",
                        st.0,
                        limit.as_secs_f64()
                    );
                    crate::phone::cleanup::undo_all();
                    std::process::exit(3);
                }
            }
        });
        Watchdog { state }
    }

    fn stage(&self, name: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = name.to_owned();
        st.1 = Instant::now();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).2 = true;
    }
}

/// `resident` or `paging`.
pub(crate) fn outlook_name(o: MemoryOutlook) -> String {
    match o {
        MemoryOutlook::Resident => "resident",
        MemoryOutlook::Paging => "paging",
    }
    .to_owned()
}

/// One turn through the guest: its figures and the guest's own stats.
/// TTFT is the host's: from the call to `send` to the first chunk.
pub(crate) fn turn(
    rt: &mut Runtime,
    session: &Session,
    prompt: &str,
) -> Result<(Sample, GenerationStats), BenchError> {
    let start = Instant::now();
    let reply = rt.reply(session, prompt, |_| true)?;
    let stats = reply.stats;
    let sample = Sample {
        ttft_ms: ms(reply.first_chunk.unwrap_or_else(|| start.elapsed())),
        prompt_tps: stats.prompt_tokens_per_s,
        decode_tps: stats.decode_tokens_per_s,
        prompt_tokens: stats.prompt_tokens,
        generated: stats.generated_tokens,
    };
    Ok((sample, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_interval_has_the_binomial_ranks() {
        // Ranks checked against exact binomial sums (Python's math.comb).
        let ranks: Vec<_> = [5, 6, 20, 21, 100, 101].into_iter().map(median_ci_rank).collect();
        assert_eq!(ranks, [None, Some(0), Some(5), Some(5), Some(39), Some(40)]);
        let values: Vec<f64> = (0..21).rev().map(f64::from).collect();
        let s = summarize(&values);
        assert_eq!((s.median, s.median_ci95), (10.0, Some([5.0, 15.0])));
        assert_eq!(summarize(&[1.0, 2.0, 3.0]).median_ci95, None);
    }
}
