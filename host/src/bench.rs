//! `bittybot bench`: the full path through the guest against a raw
//! llama-cpp-2 loop with no guest, on the same model, threads, prompt tokens
//! and greedy sampling, interleaved repetition by repetition so drift in the
//! machine hits both alike.
//!
//! Definitions (the same for both paths):
//! - load: model file → ready context;
//! - TTFT: from handing over the prompt to the first visible text (raw: the
//!   first sampled token's text), measured on the host;
//! - prompt tok/s: prompt tokens ÷ prompt evaluation time;
//! - decode tok/s: (generated − 1) ÷ time from the first to the last sampled token.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;

use crate::guest::GuestSource;
use crate::llama::{LlamaError, backend};
use crate::{
    LoadOptions, Message, ModelSource, Runtime, RuntimeError, RuntimeOptions, SessionKind, SessionOptions,
};

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
    /// Context per sequence.
    pub n_ctx: u32,
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

/// Median and spread of a series.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// Median, min and max of values (zeros when empty).
pub fn summarize(values: &[f64]) -> Summary {
    if values.is_empty() {
        return Summary { median: 0.0, min: 0.0, max: 0.0 };
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Summary { median, min: v[0], max: v[n - 1] }
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
    /// Second start: link + instantiate (+ inference thread), ms.
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
    /// Repetitions.
    pub reps: usize,
    /// Raw llama-cpp-2.
    pub raw: PathReport,
    /// Through the guest.
    pub guest: PathReport,
    /// guest decode tok/s ÷ raw (medians).
    pub decode_ratio: f64,
    /// guest prompt tok/s ÷ raw (medians).
    pub prompt_ratio: f64,
    /// guest TTFT − raw TTFT (medians), ms.
    pub ttft_overhead_ms: f64,
    /// Guest start-up.
    pub start: StartFigures,
    /// Whether both paths generated the same number of tokens every time.
    pub same_tokens: bool,
    /// The page-residency cases, when run.
    pub residency: Option<ResidencyReport>,
    /// First-turn TTFT after a restart with and without the prefix cache, when run.
    pub prefix: Option<PrefixReport>,
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
    /// llama.cpp failed in the raw loop.
    #[error(transparent)]
    Llama(#[from] LlamaError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The raw llama-cpp-2 loop: model, context, greedy sampler.
struct RawLoop {
    model: &'static LlamaModel,
    ctx: llama_cpp_2::context::LlamaContext<'static>,
    n_batch: usize,
}

impl RawLoop {
    fn load(
        cfg: &BenchConfig,
        threads: u32,
        threads_batch: u32,
        n_seq: u32,
    ) -> Result<(Self, f64), BenchError> {
        let t = Instant::now();
        let backend = backend()?;
        // Read, not mapped: a second mapping of the file would keep its pages
        // from being evicted in the residency cases (pages mapped twice are
        // not paged out), and reading costs nothing in speed once loaded.
        let params = LlamaModelParams::default().with_use_mmap(false);
        let model = LlamaModel::load_from_file(backend, &cfg.model, &params)
            .map_err(|e| BenchError::Other(format!("raw loop: cannot load model: {e}")))?;
        // Leaked for the process lifetime: the context borrows it, and the
        // bench runs once per process.
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let ctx = model
            .new_context(
                backend,
                LlamaContextParams::default()
                    .with_n_ctx(NonZeroU32::new(cfg.n_ctx * n_seq))
                    .with_n_seq_max(n_seq)
                    .with_n_batch(cfg.n_batch)
                    .with_n_ubatch(cfg.n_batch.min(512))
                    .with_n_threads(threads as i32)
                    .with_n_threads_batch(threads_batch as i32),
            )
            .map_err(|e| BenchError::Other(format!("raw loop: cannot create context: {e}")))?;
        Ok((RawLoop { model, ctx, n_batch: cfg.n_batch as usize }, ms(t.elapsed())))
    }

    fn run(&mut self, prompt: &[LlamaToken], max_tokens: u32) -> Result<(Sample, Vec<i32>), BenchError> {
        let decode_err = |e: llama_cpp_2::DecodeError| BenchError::Other(format!("raw loop: decode: {e}"));
        self.ctx.clear_kv_cache();
        let vocab = self.model.vocab();
        let mut sampler = LlamaSampler::greedy();
        let mut batch = LlamaBatch::new(self.n_batch.max(1), 1);
        let start = Instant::now();
        let last = prompt.len() - 1;
        for (c, chunk) in prompt.chunks(self.n_batch).enumerate() {
            batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                let pos = c * self.n_batch + i;
                batch.add(t, pos as i32, &[0], pos == last).map_err(|e| BenchError::Other(e.to_string()))?;
            }
            self.ctx.decode(&mut batch).map_err(decode_err)?;
        }
        let prompt_done = Instant::now();
        let mut pos = prompt.len() as i32;
        let mut tokens = Vec::new();
        let mut first = None;
        let mut ttft = None;
        let mut last_at = prompt_done;
        let mut pending = Vec::new();
        loop {
            let t = sampler.sample(&self.ctx, -1);
            let now = Instant::now();
            first.get_or_insert(now);
            if vocab.is_eog(t) {
                break;
            }
            last_at = now;
            tokens.push(t.0);
            pending.extend(vocab.token_to_piece(t, false, None));
            if ttft.is_none() && std::str::from_utf8(&pending).is_ok_and(|s| !s.is_empty()) {
                ttft = Some(Instant::now());
            }
            if tokens.len() as u32 >= max_tokens {
                break;
            }
            batch.clear();
            batch.add(t, pos, &[0], true).map_err(|e| BenchError::Other(e.to_string()))?;
            pos += 1;
            self.ctx.decode(&mut batch).map_err(decode_err)?;
        }
        let end = Instant::now();
        let generated = tokens.len() as u32;
        let decode_ms = first.map_or(0.0, |f| ms(last_at.duration_since(f)));
        let sample = Sample {
            ttft_ms: ms(ttft.unwrap_or(end).duration_since(start)),
            prompt_tps: prompt.len() as f64 / prompt_done.duration_since(start).as_secs_f64(),
            decode_tps: if decode_ms > 0.0 {
                (generated.saturating_sub(1)) as f64 * 1000.0 / decode_ms
            } else {
                0.0
            },
            prompt_tokens: prompt.len() as u32,
            generated,
        };
        Ok((sample, tokens))
    }
}

fn runtime_options(cfg: &BenchConfig) -> RuntimeOptions {
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
    let info = rt
        .load_model(&LoadOptions {
            source: ModelSource::Provided,
            n_ctx: Some(cfg.n_ctx),
            n_batch: Some(cfg.n_batch),
            threads: cfg.threads,
            threads_batch: cfg.threads_batch,
            use_mmap: Some(true),
        })?
        .info;
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
    let prompt_tokens: Vec<LlamaToken> = rendered.tokens.iter().map(|&t| LlamaToken(t)).collect();
    if prompt_tokens.is_empty() {
        return Err(BenchError::Other("the prompt rendered to no tokens".into()));
    }

    progress("loading the model for the raw loop");
    // The same context shape as the guest's (sequences × context), so only
    // the path differs.
    let (mut raw, raw_load_ms) = RawLoop::load(cfg, threads, threads_batch, info.settings.n_seq_max)?;

    // One unmeasured round each: first-touch of pages, thread pools, caches.
    raw.run(&prompt_tokens, cfg.max_tokens.min(8))?;
    rt.reset(&session)?;
    let _ = rt.chat(&session, &cfg.prompt)?;

    let mut raw_samples = Vec::new();
    let mut guest_samples = Vec::new();
    let mut same_tokens = true;
    for rep in 0..cfg.reps {
        progress(&format!("repetition {}/{}", rep + 1, cfg.reps));
        let (r, _) = raw.run(&prompt_tokens, cfg.max_tokens)?;
        raw_samples.push(r);

        rt.reset(&session)?;
        let start = Instant::now();
        let generation = rt.send(&session, &cfg.prompt)?;
        let mut ttft = None;
        while let Some(_chunk) = rt.next(&generation)? {
            ttft.get_or_insert_with(|| start.elapsed());
        }
        let stats = rt.stats(&generation)?.ok_or_else(|| BenchError::Other("no stats".into()))?;
        rt.close_generation(generation)?;
        let g = Sample {
            ttft_ms: ms(ttft.unwrap_or_else(|| start.elapsed())),
            prompt_tps: stats.prompt_tokens_per_s,
            decode_tps: stats.decode_tokens_per_s,
            prompt_tokens: stats.prompt_tokens,
            generated: stats.generated_tokens,
        };
        same_tokens &= g.generated == r.generated && g.prompt_tokens == r.prompt_tokens;
        guest_samples.push(g);
    }
    let residency = if cfg.evict_reps > 0 {
        progress("page residency cases");
        Some(residency_cases(cfg, &mut rt, &session)?)
    } else {
        None
    };
    rt.close_session(session)?;
    drop(rt);
    let prefix = if cfg.prefix_reps > 0 {
        progress("prefix cache restarts");
        Some(prefix_restarts(cfg, threads, threads_batch)?)
    } else {
        None
    };

    let raw = PathReport::new(raw_load_ms, raw_samples);
    let guest = PathReport::new(guest_load_ms, guest_samples);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(BenchReport {
        model: cfg.model.display().to_string(),
        model_bytes: std::fs::metadata(&cfg.model).map(|m| m.len()).unwrap_or(0),
        threads,
        threads_batch,
        prompt_tokens: prompt_tokens.len() as u32,
        reps: cfg.reps,
        decode_ratio: ratio(guest.decode_tps.median, raw.decode_tps.median),
        prompt_ratio: ratio(guest.prompt_tps.median, raw.prompt_tps.median),
        ttft_overhead_ms: guest.ttft_ms.median - raw.ttft_ms.median,
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
        residency,
        prefix,
    })
}

/// A fresh runtime (a restart, as far as the guest knows) with a chat
/// session configured like the rest of the benchmark.
fn restart(
    cfg: &BenchConfig,
    threads: u32,
    threads_batch: u32,
    cache: bool,
) -> Result<(Runtime, crate::Session), BenchError> {
    let mut rt = Runtime::start(runtime_options(cfg))?;
    rt.load_model(&LoadOptions {
        source: ModelSource::Provided,
        n_ctx: Some(cfg.n_ctx),
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

fn prefix_restarts(cfg: &BenchConfig, threads: u32, threads_batch: u32) -> Result<PrefixReport, BenchError> {
    let short = "What is the capital of France?";
    // Prime the saved state once.
    let (mut rt, s) = restart(cfg, threads, threads_batch, true)?;
    turn(&mut rt, &s, short)?;
    drop(rt);
    let (mut off, mut on, mut later) = (Vec::new(), Vec::new(), Vec::new());
    let (mut full, mut cached_tokens) = (0, 0);
    for _ in 0..cfg.prefix_reps {
        let (mut rt, s) = restart(cfg, threads, threads_batch, false)?;
        let (a, _, _) = turn(&mut rt, &s, short)?;
        full = a.prompt_tokens;
        off.push(a.ttft_ms);
        drop(rt);
        let (mut rt, s) = restart(cfg, threads, threads_batch, true)?;
        let (b, _, _) = turn(&mut rt, &s, short)?;
        cached_tokens = b.prompt_tokens;
        on.push(b.ttft_ms);
        let (c, _, _) = turn(&mut rt, &s, short)?;
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

fn turn(rt: &mut Runtime, session: &crate::Session, prompt: &str) -> Result<(Sample, f32, f64), BenchError> {
    let start = Instant::now();
    let generation = rt.send(session, prompt)?;
    let mut ttft = None;
    while rt.next(&generation)?.is_some() {
        ttft.get_or_insert_with(|| start.elapsed());
    }
    let stats = rt.stats(&generation)?.ok_or_else(|| BenchError::Other("no stats".into()))?;
    rt.close_generation(generation)?;
    let sample = Sample {
        ttft_ms: ms(ttft.unwrap_or_else(|| start.elapsed())),
        prompt_tps: stats.prompt_tokens_per_s,
        decode_tps: stats.decode_tokens_per_s,
        prompt_tokens: stats.prompt_tokens,
        generated: stats.generated_tokens,
    };
    Ok((sample, stats.residency, stats.warmup_ms))
}

fn evict(rt: &Runtime) -> Result<f32, BenchError> {
    let r = rt.evict_model()?;
    // Let background readahead from the previous turn settle.
    std::thread::sleep(Duration::from_millis(100));
    Ok(r)
}

fn residency_cases(
    cfg: &BenchConfig,
    rt: &mut Runtime,
    session: &crate::Session,
) -> Result<ResidencyReport, BenchError> {
    let path = rt.model_path().ok_or_else(|| BenchError::Other("no model".into()))?;
    let set_rewarm = |rt: &mut Runtime, on: bool| {
        let mut o = SessionOptions::unchanged();
        o.rewarm = Some(on);
        rt.configure(session, &o)
    };
    let mut after_evict = Vec::new();
    let mut rows: Vec<(&str, Vec<(Sample, f32, f64)>)> = vec![
        ("(a) resident", Vec::new()),
        ("(b) evicted, no warmup", Vec::new()),
        ("(c) evicted, re-warm at send", Vec::new()),
        ("(d) evicted, prepare + think", Vec::new()),
    ];
    let mut warm_speed = Vec::new();
    let mut cat_speed = Vec::new();
    for _ in 0..cfg.evict_reps {
        // (a): everything in memory.
        set_rewarm(rt, true)?;
        crate::warmup::warm_up(&path, |_, _| true).map_err(|e| BenchError::Other(e.to_string()))?;
        rt.reset(session)?;
        rows[0].1.push(turn(rt, session, &cfg.prompt)?);
        // (b): evicted, the turn faults pages in one at a time.
        set_rewarm(rt, false)?;
        after_evict.push(evict(rt)? as f64);
        rt.reset(session)?;
        rows[1].1.push(turn(rt, session, &cfg.prompt)?);
        // (c): evicted, the guest re-warms before the prompt.
        set_rewarm(rt, true)?;
        evict(rt)?;
        rt.reset(session)?;
        rows[2].1.push(turn(rt, session, &cfg.prompt)?);
        // (d): evicted, `prepare` when the user starts typing, send after the think time.
        evict(rt)?;
        rt.reset(session)?;
        rt.prepare(session)?;
        std::thread::sleep(cfg.think);
        rows[3].1.push(turn(rt, session, &cfg.prompt)?);
        // Warmup pass vs `cat`, both on an evicted file.
        evict(rt)?;
        let w = crate::warmup::warm_up(&path, |_, _| true).map_err(|e| BenchError::Other(e.to_string()))?;
        warm_speed.push(w.bytes_per_s);
        evict(rt)?;
        let t = Instant::now();
        let status = std::process::Command::new("cat")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| BenchError::Other(format!("cat: {e}")))?;
        if !status.success() {
            return Err(BenchError::Other("cat failed".into()));
        }
        cat_speed.push(w.bytes as f64 / t.elapsed().as_secs_f64());
    }
    let cases: Vec<CaseReport> = rows
        .into_iter()
        .map(|(case, v)| CaseReport {
            case: case.to_owned(),
            ttft_ms: summarize(&v.iter().map(|x| x.0.ttft_ms).collect::<Vec<_>>()),
            prompt_tps: summarize(&v.iter().map(|x| x.0.prompt_tps).collect::<Vec<_>>()),
            decode_tps: summarize(&v.iter().map(|x| x.0.decode_tps).collect::<Vec<_>>()),
            residency: summarize(&v.iter().map(|x| x.1 as f64).collect::<Vec<_>>()),
            warmup_ms: summarize(&v.iter().map(|x| x.2).collect::<Vec<_>>()),
        })
        .collect();
    Ok(ResidencyReport {
        after_evict: summarize(&after_evict).median as f32,
        prepared_vs_resident: cases[3].ttft_ms.median / cases[0].ttft_ms.median.max(1e-9),
        cases,
        warmup_bytes_per_s: summarize(&warm_speed).median,
        cat_bytes_per_s: summarize(&cat_speed).median,
    })
}

/// The residency cases as a table.
fn residency_table(r: &ResidencyReport) -> String {
    let s = |x: Summary, p: usize| format!("{:.p$} [{:.p$}–{:.p$}]", x.median, x.min, x.max, p = p);
    let mut out = format!(
        "\n{:<30} {:>26} {:>22} {:>22} {:>12} {:>10}\n",
        "case", "TTFT ms", "prompt tok/s", "decode tok/s", "residency", "warmup ms"
    );
    for c in &r.cases {
        out.push_str(&format!(
            "{:<30} {:>26} {:>22} {:>22} {:>12.2} {:>10.0}\n",
            c.case,
            s(c.ttft_ms, 1),
            s(c.prompt_tps, 0),
            s(c.decode_tps, 1),
            c.residency.median,
            c.warmup_ms.median
        ));
    }
    out.push_str(&format!(
        "residency after eviction {:.3}; (d)/(a) TTFT {:.2}; warmup pass {:.0} MB/s vs cat {:.0} MB/s ({:.2}×)\n",
        r.after_evict,
        r.prepared_vs_resident,
        r.warmup_bytes_per_s / 1e6,
        r.cat_bytes_per_s / 1e6,
        r.warmup_bytes_per_s / r.cat_bytes_per_s.max(1e-9)
    ));
    out
}

/// The report as a table.
pub fn table(r: &BenchReport) -> String {
    let row = |name: &str, p: &PathReport| {
        let s = |x: Summary, prec: usize| format!("{:.p$} [{:.p$}–{:.p$}]", x.median, x.min, x.max, p = prec);
        format!(
            "{name:<16} {:>9.1}  {:>24}  {:>24}  {:>24}\n",
            p.load_ms,
            s(p.ttft_ms, 1),
            s(p.prompt_tps, 0),
            s(p.decode_tps, 1)
        )
    };
    let mut out = String::new();
    out.push_str(&format!(
        "model {} ({:.1} MB), threads {}/{} (decode/prompt), prompt {} tokens, {} repetitions (median [min–max])\n\n",
        r.model,
        r.model_bytes as f64 / 1e6,
        r.threads,
        r.threads_batch,
        r.prompt_tokens,
        r.reps
    ));
    out.push_str(&format!(
        "{:<16} {:>9}  {:>24}  {:>24}  {:>24}\n",
        "path", "load ms", "TTFT ms", "prompt tok/s", "decode tok/s"
    ));
    out.push_str(&row("raw llama-cpp-2", &r.raw));
    out.push_str(&row("through guest", &r.guest));
    out.push_str(&format!(
        "\nguest ÷ raw: decode {:.3}×, prompt {:.3}×, TTFT overhead {:+.2} ms; same token counts: {}\n",
        r.decode_ratio, r.prompt_ratio, r.ttft_overhead_ms, r.same_tokens
    ));
    out.push_str(&format!(
        "guest start: first {:.1} ms ({}), second {:.2} ms ({}) + instantiate {:.2} ms\n",
        r.start.first_component_ms,
        r.start.first_outcome,
        r.start.cached_component_ms,
        r.start.cached_outcome,
        r.start.cached_instantiate_ms
    ));
    if let Some(res) = &r.residency {
        out.push_str(&residency_table(res));
    }
    if let Some(p) = &r.prefix {
        let s = |x: Summary| format!("{:.1} [{:.1}–{:.1}]", x.median, x.min, x.max);
        out.push_str(&format!(
            "\nfirst turn after a restart: no prefix cache {} ms ({} tokens evaluated), \
             prefix cache {} ms ({} tokens); later turn {} ms; cached/later {:.2}\n",
            s(p.first_uncached_ttft_ms),
            p.prompt_tokens,
            s(p.first_cached_ttft_ms),
            p.cached_prompt_tokens,
            s(p.later_ttft_ms),
            p.cached_vs_later
        ));
    }
    out
}
