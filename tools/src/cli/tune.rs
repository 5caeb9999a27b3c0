//! `bittybot tune`: measure generation and prompt speed at each thread count
//! and store the best pair for the model (the guest keeps it in
//! settings.json; the next load of that model uses it).

use anyhow::Result;
use clap::Args;

use bittybot_host::{LoadOptions, ModelSource, SessionKind, SessionOptions};
use bittybot_tools::bench::summarize;

use super::{CliContext, start_runtime};

/// Arguments of `tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The GGUF model file.
    #[arg(short = 'm', long)]
    pub model: std::path::PathBuf,
    /// Largest thread count tried (default: twice the online CPUs).
    #[arg(long)]
    pub max_threads: Option<u32>,
    /// Repetitions per thread count (the median counts).
    #[arg(short = 'r', long, default_value_t = 3)]
    pub reps: usize,
    /// Tokens generated per repetition.
    #[arg(short = 'n', long, default_value_t = 48)]
    pub max_tokens: u32,
    /// Measure and print, but do not store.
    #[arg(long)]
    pub dry_run: bool,
}

const PROMPT: &str =
    "Explain in detail how rain forms, from evaporation to the droplets that fall, for a school project.";

/// `bittybot tune`.
pub fn tune(ctx: &CliContext, args: &TuneArgs) -> Result<()> {
    let online = bittybot_host::device::cpu_topology().online.max(1);
    let max = args.max_threads.unwrap_or(online * 2).max(1);
    let mut rt = start_runtime(ctx, Some(&args.model))?;
    println!("{:>8} {:>16} {:>16}", "threads", "prompt tok/s", "decode tok/s");
    let mut rows = Vec::new();
    for t in 1..=max {
        rt.load_model(&LoadOptions {
            source: ModelSource::Provided,
            n_ctx: Some(1024),
            n_batch: None,
            threads: Some(t),
            threads_batch: Some(t),
            use_mmap: None,
        })?;
        let chat = rt.open_session(SessionKind::Chat)?;
        let mut o = SessionOptions::unchanged();
        o.temperature = Some(0.0);
        o.max_tokens = Some(args.max_tokens);
        rt.configure(&chat, &o)?;
        rt.chat(&chat, PROMPT)?; // warm: pages, thread pools
        let (mut pp, mut tg) = (Vec::new(), Vec::new());
        for _ in 0..args.reps.max(1) {
            rt.reset(&chat)?;
            let (_, s) = rt.chat(&chat, PROMPT)?;
            pp.push(s.prompt_tokens_per_s);
            tg.push(s.decode_tokens_per_s);
        }
        rt.close_session(chat)?;
        let (pp, tg) = (summarize(&pp).median, summarize(&tg).median);
        println!("{t:>8} {pp:>16.1} {tg:>16.1}");
        rows.push((t, pp, tg));
    }
    let best = |f: fn(&(u32, f64, f64)) -> f64| {
        rows.iter().max_by(|a, b| f(a).total_cmp(&f(b))).map(|r| r.0).unwrap_or(1)
    };
    let (decode, batch) = (best(|r| r.2), best(|r| r.1));
    println!("best: {decode} threads for generation, {batch} for prompts");
    if !args.dry_run {
        rt.save_tuned_threads(decode, batch)?;
        println!("stored in settings.json; `bittybot chat` on this model now uses them (shown as \"tuned\")");
    }
    Ok(())
}
