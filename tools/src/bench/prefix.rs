//! The prefix cache across restarts: the first turn after a process start
//! with the system turn evaluated, or restored from its saved state, against
//! a later turn of the same length.

use bittybot_host::{LoadOptions, ModelSource, Runtime, Session, SessionKind, SessionOptions};

use super::{BenchConfig, BenchError, PrefixReport, runtime_options, summarize, turn};

/// A fresh runtime (a restart, as far as the guest knows) with a chat
/// session configured like the rest of the benchmark.
fn restart(
    cfg: &BenchConfig,
    threads: u32,
    threads_batch: u32,
    cache: bool,
) -> Result<(Runtime, Session), BenchError> {
    let mut rt = Runtime::start(runtime_options(cfg))?;
    rt.load_model(&LoadOptions {
        source: ModelSource::Provided,
        n_ctx: cfg.n_ctx,
        n_batch: Some(cfg.n_batch),
        threads: Some(threads),
        threads_batch: Some(threads_batch),
        use_mmap: Some(true),
    })?;
    let session = rt.open_session(SessionKind::Chat)?;
    let mut o = SessionOptions::unchanged();
    o.temperature = Some(0.0);
    o.max_tokens = Some(cfg.max_tokens.min(16));
    o.system_prompt = Some(cfg.system.clone());
    o.prefix_cache = Some(cache);
    rt.configure(&session, &o)?;
    Ok((rt, session))
}

pub(super) fn restarts(
    cfg: &BenchConfig,
    threads: u32,
    threads_batch: u32,
) -> Result<PrefixReport, BenchError> {
    let short = "What is the capital of France?";
    // Prime the saved state once.
    let (mut rt, s) = restart(cfg, threads, threads_batch, true)?;
    turn(&mut rt, &s, short)?;
    drop(rt);
    let (mut off, mut on, mut later) = (Vec::new(), Vec::new(), Vec::new());
    let (mut full, mut cached_tokens) = (0, 0);
    for _ in 0..cfg.prefix_reps {
        let (mut rt, s) = restart(cfg, threads, threads_batch, false)?;
        let (a, _) = turn(&mut rt, &s, short)?;
        full = a.prompt_tokens;
        off.push(a.ttft_ms);
        drop(rt);
        let (mut rt, s) = restart(cfg, threads, threads_batch, true)?;
        let (b, _) = turn(&mut rt, &s, short)?;
        cached_tokens = b.prompt_tokens;
        on.push(b.ttft_ms);
        let (c, _) = turn(&mut rt, &s, short)?;
        later.push(c.ttft_ms);
    }
    let (off, on, later) = (summarize(&off), summarize(&on), summarize(&later));
    Ok(PrefixReport {
        prompt_tokens: full,
        cached_prompt_tokens: cached_tokens,
        first_uncached_ttft_ms: off,
        first_cached_ttft_ms: on,
        later_ttft_ms: later,
        cached_vs_later: on.median / later.median.max(1e-9),
    })
}
