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
        ProgressStyle::with_template("{prefix:>10} [{bar:32}] {pos}/{len} chunks {elapsed_precise} ETA {eta}")
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
        r.model, r.reference, r.n_ctx, "text", "tokens", "PPL ref", "PPL", "mean KLD", "median", "p99", "same top %", "mean Δp %", "RMS Δp %"
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
    out.push_str(&format!("\npeak memory {:.0} MB; reference distributions {}\n", r.peak_rss as f64 / 1e6, if r.base_reused { "reused" } else { "computed" }));
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
        std::fs::write(&tmp, serde_json::to_string_pretty(&m)? + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
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
