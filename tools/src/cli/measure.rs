//! `bittybot imatrix` and `bittybot quality`: what a quantization needs
//! (an importance matrix from calibration texts) and what it did (its
//! distributions against a reference's, per language).
//!
//! ```sh
//! bittybot imatrix -m tiny-aya-global-f16.gguf --text tools/data/text/calibration/*.txt -o tiny-aya.imatrix.gguf
//! bittybot quantize tiny-aya-global-f16.gguf q3ks.gguf --type Q3_K_S --imatrix tiny-aya.imatrix.gguf
//! bittybot quality --ref tiny-aya-global-f16.gguf -m q3ks.gguf --text tools/data/text/evaluation/*.txt \
//!     --manifest q3ks.gguf.manifest.json
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use bittybot_tools::imatrix::{self, ImatrixRequest};
use bittybot_tools::quality::{self, QualityReport, QualityRequest};
use bittybot_tools::quantize::read_manifest;

fn threads(n: Option<u32>) -> u32 {
    n.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

fn bar(prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:32}] {pos}/{len} chunks {elapsed_precise} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Arguments of `imatrix`.
#[derive(Debug, Args)]
pub struct ImatrixArgs {
    /// The model (the F16 the release is quantized from).
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Calibration texts (e.g. tools/data/text/calibration/*.txt).
    #[arg(long = "text", required = true, num_args = 1..)]
    pub texts: Vec<PathBuf>,
    /// The importance matrix to write (llama.cpp's GGUF imatrix format).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub n_ctx: u32,
    /// Threads (default: every core).
    #[arg(short = 't', long)]
    pub threads: Option<u32>,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
}

/// `bittybot imatrix`.
pub fn imatrix(args: &ImatrixArgs) -> Result<()> {
    let req = ImatrixRequest {
        model: args.model.clone(),
        texts: args.texts.clone(),
        output: args.output.clone(),
        n_ctx: args.n_ctx,
        threads: threads(args.threads),
        max_chunks: args.chunks,
    };
    let bar = bar("imatrix");
    let report = imatrix::imatrix(&req, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    for (name, tokens, chunks) in &report.texts {
        eprintln!("{name}: {tokens} tokens, {chunks} chunks of {}", args.n_ctx);
    }
    eprintln!(
        "{} tensors from {} chunks ({} tokens) → {}",
        report.entries,
        report.chunks,
        report.tokens,
        report.output.display()
    );
    Ok(())
}

/// Arguments of `quality`.
#[derive(Debug, Args)]
pub struct QualityArgs {
    /// The reference model (the F16; here a higher-precision quantization stands in).
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// The quantized model.
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Evaluation texts, one per language (e.g. tools/data/text/evaluation/*.txt).
    #[arg(long = "text", required = true, num_args = 1..)]
    pub texts: Vec<PathBuf>,
    /// The reference's distributions (llama-perplexity's --kl-divergence-base
    /// format), written on the first run and reused while they match.
    /// Default: REF.kld next to the reference.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub n_ctx: u32,
    /// Threads (default: every core).
    #[arg(short = 't', long)]
    pub threads: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Record the result in this release manifest (its `quality` field).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

fn table(r: &QualityReport) -> String {
    let mut out = format!(
        "{} against {} (chunks of {} tokens; ± one standard error)\n\n{:<8} {:>7} {:>16} {:>16} {:>17} {:>9} {:>9} {:>14} {:>14} {:>10}\n",
        r.model,
        r.reference,
        r.n_ctx,
        "text",
        "tokens",
        "PPL ref",
        "PPL",
        "mean KLD",
        "median",
        "p99",
        "same top %",
        "mean Δp %",
        "RMS Δp %"
    );
    for t in r.texts.iter().chain([&r.overall]) {
        out.push_str(&format!(
            "{:<8} {:>7} {:>9.3} ±{:<6.3} {:>9.3} ±{:<6.3} {:>8.5} ±{:<8.5} {:>9.5} {:>9.5} {:>7.2} ±{:<5.2} {:>7.3} ±{:<5.3} {:>10.3}\n",
            t.name.trim_end_matches(".txt"),
            t.tokens,
            t.ppl_reference.value,
            t.ppl_reference.se,
            t.ppl.value,
            t.ppl.se,
            t.kld_mean.value,
            t.kld_mean.se,
            t.kld_median,
            t.kld_p99,
            t.same_top_pct.value,
            t.same_top_pct.se,
            t.dp_mean_pct.value,
            t.dp_mean_pct.se,
            t.dp_rms_pct.value
        ));
    }
    out.push_str(&format!(
        "\npeak memory {:.0} MB; reference distributions {}\n",
        r.peak_rss as f64 / 1e6,
        if r.base_reused { "reused" } else { "computed" }
    ));
    out
}

/// `bittybot quality`.
pub fn quality(args: &QualityArgs) -> Result<()> {
    let base = args.base.clone().unwrap_or_else(|| {
        let mut p = args.reference.as_os_str().to_owned();
        p.push(".kld");
        PathBuf::from(p)
    });
    let req = QualityRequest {
        reference: args.reference.clone(),
        model: args.model.clone(),
        texts: args.texts.clone(),
        base,
        n_ctx: args.n_ctx,
        threads: threads(args.threads),
    };
    let bar = bar("quality");
    let report = quality::quality(&req, |phase, done, total| {
        bar.set_prefix(phase.to_owned());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if let Some(path) = &args.manifest {
        let mut m = read_manifest(path)?;
        m.quality = Some(serde_json::to_value(&report)?);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&m)? + "\n")
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        eprintln!("recorded in {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
#[command(after_long_help = BENCH_HELP)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Repetitions (median and spread are reported).
    #[arg(short = 'r', long, default_value_t = 7)]
    pub reps: usize,
    /// Tokens to generate per repetition.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub max_tokens: u32,
    /// The user message.
    #[arg(short = 'p', long, default_value = super::bench_prompt())]
    pub prompt: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Repetitions of the page-residency cases (evicted, re-warmed, prepared); 0 skips them.
    #[arg(long, default_value_t = 5)]
    pub evict_reps: usize,
    /// Think time between `prepare` and send in the prepared case, ms.
    #[arg(long, default_value_t = 3000)]
    pub think_ms: u64,
    /// Repetitions of the prefix-cache restarts; 0 skips them.
    #[arg(long, default_value_t = 5)]
    pub prefix_reps: usize,
    /// Serve the model through a throttled FUSE mount at a phone's flash
    /// speed for the whole bench: ufs2 (500 MB/s, 0.15 ms/request, 512 KiB,
    /// 4 in flight) or emmc (250 MB/s, 0.4 ms, 128 KiB, 1). Needs /dev/fuse.
    #[arg(long, value_name = "PROFILE")]
    pub storage: Option<String>,
    /// Storage throughput, MB/s (overrides the profile's; alone: a custom profile).
    #[arg(long, value_name = "MBPS")]
    pub storage_mbps: Option<f64>,
    /// Storage latency per request, ms (overrides the profile's; alone: a custom profile).
    #[arg(long, value_name = "MS")]
    pub storage_latency_ms: Option<f64>,
    /// Largest storage request, KiB (overrides the profile's).
    #[arg(long, value_name = "KIB")]
    pub storage_max_request_kib: Option<u32>,
    /// Storage requests in flight (overrides the profile's).
    #[arg(long, value_name = "N")]
    pub storage_queue_depth: Option<usize>,
    /// Leave about N MB of MemAvailable (a balloon process holds the rest)
    /// before the model loads. Several values (1200,1600,2000) run the whole
    /// bench once per value: a memory sweep. At least 600.
    #[arg(long, value_name = "N[,N…]", value_delimiter = ',')]
    pub available_mb: Vec<u64>,
    /// Draw the sweep (decode tok/s and TTFT against available memory, one
    /// line per residency case) into this PNG. Needs --available-mb and --evict-reps > 0.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Stop with an error if a stage makes no progress for this long, s.
    #[arg(long, default_value_t = 1800)]
    pub stall_timeout_s: u64,
    /// Let the guest's device-fit policy pick the context and KV type for
    /// the memory available, as the app does (instead of -c, default 2048);
    /// the raw loop gets the same. With --available-mb: what the policy
    /// does under pressure.
    #[arg(long, conflicts_with = "ctx_size")]
    pub device_fit: bool,
}

const BENCH_HELP: &str = "\
Phone conditions:
  --storage ufs2|emmc serves the model through a read-only FUSE file system
  the bench mounts itself (throttled: latency per request, sequential MB/s
  shared by the requests in flight, a largest request size that also caps the
  kernel's readahead); it is unmounted at the end, on error and on Ctrl-C.
  --available-mb N inflates a balloon (a child process holding touched,
  locked anonymous memory) until about N MB of MemAvailable are left; it is
  killed at the end, on error, on Ctrl-C and when the bench dies.

Examples:
  bittybot bench -m M --storage ufs2 --evict-reps 5 --json
  bittybot bench -m M --storage ufs2 -r 1 --prefix-reps 0 \\
      --available-mb 1200,1600,2000,2400,3000 --plot docs/phone-memory.png";

fn storage_profile(a: &BenchArgs) -> Result<Option<bittybot_tools::phone::storage::Profile>> {
    use bittybot_tools::phone::storage;
    let mut p = match (&a.storage, a.storage_mbps, a.storage_latency_ms) {
        (Some(name), _, _) => Some(storage::named(name).with_context(|| {
            format!("unknown storage profile {name:?}; known: {}", storage::PROFILES.join(", "))
        })?),
        (None, None, None) => None,
        (None, mbps, lat) => Some(storage::Profile::custom(mbps.unwrap_or(500.0), lat.unwrap_or(0.15))),
    };
    if let Some(p) = &mut p {
        if let Some(m) = a.storage_mbps {
            p.mbps = m;
        }
        if let Some(l) = a.storage_latency_ms {
            p.latency_ms = l;
        }
        if let Some(k) = a.storage_max_request_kib {
            p.max_request = k.saturating_mul(1024);
        }
        if let Some(q) = a.storage_queue_depth {
            p.queue_depth = q;
        }
        if a.storage_mbps.is_some()
            || a.storage_latency_ms.is_some()
            || a.storage_max_request_kib.is_some()
            || a.storage_queue_depth.is_some()
        {
            if p.name != "custom" {
                p.name = format!("{}+custom", p.name);
            }
        }
    }
    Ok(p)
}

/// `bittybot bench`.
pub fn bench(ctx: &super::CliContext, a: &BenchArgs) -> Result<()> {
    use bittybot_tools::bench::{self, BenchConfig, Conditions};
    let model_path = match &a.model.model {
        Some(p) => p.clone(),
        None => super::model::managed_path(ctx, a.model.spec.as_ref())?,
    };
    let cfg = BenchConfig {
        model: model_path,
        data_dir: ctx.data_dir.clone(),
        guest: ctx.guest.clone(),
        threads: a.model.threads,
        threads_batch: a.model.threads_batch,
        n_ctx: if a.device_fit { None } else { Some(a.model.ctx_size.unwrap_or(2048)) },
        n_batch: a.model.batch_size.unwrap_or(512),
        reps: a.reps,
        prompt: a.prompt.clone(),
        system: "You are a helpful assistant.".into(),
        max_tokens: a.max_tokens,
        evict_reps: a.evict_reps,
        think: Duration::from_millis(a.think_ms),
        prefix_reps: a.prefix_reps,
        invalidator: None,
    };
    let storage = storage_profile(a)?;
    if a.plot.is_some() && (a.available_mb.is_empty() || a.evict_reps == 0) {
        anyhow::bail!("--plot needs --available-mb (the points) and --evict-reps > 0 (the lines)");
    }
    for &n in &a.available_mb {
        if n < bittybot_tools::phone::balloon::MIN_AVAILABLE_MB {
            return Err(bittybot_tools::phone::balloon::BalloonError::TooLittle(n).into());
        }
    }
    let points: Vec<Option<u64>> = if a.available_mb.is_empty() {
        vec![None]
    } else {
        a.available_mb.iter().map(|&n| Some(n)).collect()
    };
    let mut reports = Vec::new();
    for n in points {
        let cond = Conditions {
            storage: storage.clone(),
            available_mb: n,
            stall_timeout: Some(Duration::from_secs(a.stall_timeout_s)),
        };
        if let Some(n) = n {
            eprintln!("bench: --available-mb {n}");
        }
        let report = bench::run_under(&cfg, &cond, |m| eprintln!("bench: {m}"))?;
        if !a.json {
            print!("{}", bench::table(&report));
            println!();
        }
        reports.push(report);
    }
    if let Some(png) = &a.plot {
        let mut series: Vec<bittybot_tools::phone::plot::Series> = Vec::new();
        for r in &reports {
            let (Some(res), Some(n)) = (&r.residency, r.conditions.available_mb) else { continue };
            // A point whose balloon the watchdog had to release ran without
            // the pressure it names: left out of the plot, said so.
            if r.conditions.balloon.as_ref().is_some_and(|b| b.released_by_watchdog) {
                eprintln!(
                    "bench: --available-mb {n} left out of the plot: the balloon was released \
                     (the bench needed more than {n} MB)"
                );
                continue;
            }
            for c in &res.cases {
                let point = bittybot_tools::phone::plot::Point {
                    available_mb: n as f64,
                    ttft_ms: c.ttft_ms.median,
                    decode_tps: c.decode_tps.median,
                };
                match series.iter_mut().find(|s| s.label == c.case) {
                    Some(s) => s.points.push(point),
                    None => series.push(bittybot_tools::phone::plot::Series {
                        label: c.case.clone(),
                        points: vec![point],
                    }),
                }
            }
        }
        let name = cfg.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let title = format!(
            "{name} · storage {} · {} vCPU, {:.0} GB RAM",
            storage.as_ref().map_or("local disk".to_owned(), |p| p.name.clone()),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            bittybot_tools::phone::balloon::mem_total_mb().unwrap_or(0) as f64 / 1024.0
        );
        bittybot_tools::phone::plot::sweep(png, &title, &series).map_err(anyhow::Error::msg)?;
        eprintln!("bench: plot written to {}", png.display());
    }
    if !a.json && reports.len() > 1 {
        print!("{}", sweep_summary(&reports));
    }
    if a.json {
        if reports.len() == 1 && a.plot.is_none() {
            println!("{}", serde_json::to_string_pretty(&reports[0])?);
        } else {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "sweep": reports, "plot": a.plot }))?
            );
        }
    }
    Ok(())
}

/// One line per sweep point: what the device fit chose and judged, and what
/// the turns found.
fn sweep_summary(reports: &[bittybot_tools::bench::BenchReport]) -> String {
    let mut out = format!(
        "{:>10} {:>8} {:>6} {:>10} {:>14} {:>14} {:>14}\n",
        "available", "context", "KV", "fit", "decode raw", "decode guest", "paging turns"
    );
    for r in reports {
        let paging = r.residency.as_ref().map_or("-".to_owned(), |res| {
            let (p, n) = res.cases.iter().fold((0, 0), |(p, n), c| (p + c.paging_turns, n + c.turns));
            format!("{p}/{n}")
        });
        out.push_str(&format!(
            "{:>10} {:>8} {:>6} {:>10} {:>14.1} {:>14.1} {:>14}\n",
            r.conditions.available_mb.map_or("-".to_owned(), |n| format!("{n} MB")),
            r.n_ctx,
            r.kv_type,
            r.fit_outlook,
            r.raw.decode_tps.median,
            r.guest.decode_tps.median,
            paging
        ));
    }
    out
}
