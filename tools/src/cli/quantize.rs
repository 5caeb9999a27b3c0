//! `bittybot quantize` and `bittybot spec`: shipping a new quantization is
//! quantize → manifest → spec → new guest build.
//!
//! ```sh
//! bittybot quantize tiny-aya-global-f16.gguf tiny-aya-global-q3_k_s.gguf --type Q3_K_S \
//!     --url-base https://github.com/sneptech/bittybot/releases/download/v0.1.0-q3ks
//! bittybot spec --from-manifest tiny-aya-global-q3_k_s.gguf.manifest.json > spec.json
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{DecimalBytes, ProgressBar, ProgressStyle};

use bittybot_tools::quantize::{self, Phase, Progress, QuantType, QuantizeRequest};

use super::{CliContext, start_runtime};

/// Arguments of `quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The GGUF model to quantize (usually F16 or BF16).
    pub input: PathBuf,
    /// The quantized model to write; its release manifest goes next to it
    /// as OUTPUT.manifest.json.
    pub output: PathBuf,
    /// Quantization type, by llama.cpp's name in any case: Q3_K_S, Q4_K_M,
    /// Q4_0, Q8_0, F16, … (an unknown name lists them all).
    #[arg(long = "type", value_name = "TYPE")]
    pub qtype: QuantType,
    /// Threads (default: every core). The output is the same for any count.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat).
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Quantize tensors that are already quantized (loses quality).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Release folder URL: the manifest's URL becomes URL_BASE/FILE_NAME.
    #[arg(long)]
    pub url_base: Option<String>,
}

/// Arguments of `spec`.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The release manifest written by `bittybot quantize`.
    #[arg(long, value_name = "MANIFEST")]
    pub from_manifest: PathBuf,
    /// Download URL (default: the manifest's, from `quantize --url-base`).
    #[arg(long)]
    pub url: Option<String>,
}

fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>11} [{bar:32}] {bytes}/{total_bytes} {elapsed_precise} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("checking");
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// `bittybot quantize`.
pub fn quantize(args: &QuantizeArgs) -> Result<()> {
    let request = QuantizeRequest {
        input: args.input.clone(),
        output: args.output.clone(),
        qtype: args.qtype,
        threads: args.threads,
        imatrix: args.imatrix.clone(),
        allow_requantize: args.allow_requantize,
        url_base: args.url_base.clone(),
    };
    let bar = bar();
    let started = std::time::Instant::now();
    let result = quantize::quantize(&request, |p: &Progress| {
        bar.set_prefix(match p.phase {
            Phase::HashingInput => "hashing in",
            Phase::Quantizing => "quantizing",
            Phase::HashingOutput => "hashing out",
        });
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(match &p.tensor {
            Some(t) => format!("[{}/{}] {}", t.index, t.count, t.name),
            None => String::new(),
        });
    });
    bar.finish_and_clear();
    let done = result?;
    let m = &done.manifest;
    eprintln!(
        "{}: {} ({} bytes, {}) from {} ({}), {:.1} s quantizing on {} threads, {:.1} s in all",
        done.output.display(),
        DecimalBytes(m.size),
        m.size,
        m.quantization,
        m.source_file_name,
        DecimalBytes(m.source_size),
        done.quantize_s,
        done.threads,
        started.elapsed().as_secs_f64()
    );
    eprintln!("manifest: {}", done.manifest_path.display());
    println!("{}", serde_json::to_string_pretty(m)?);
    Ok(())
}

/// `bittybot spec`: the model spec JSON of a release, checked by the guest.
pub fn spec(ctx: &CliContext, args: &SpecArgs) -> Result<()> {
    let manifest = quantize::read_manifest(&args.from_manifest)?;
    let json = manifest.spec_json(args.url.as_deref())?;
    let mut rt = start_runtime(ctx, None)?;
    let s = rt.resolve_spec(Some(&json)).context("the guest refuses the spec")?;
    println!("{json}");
    eprintln!(
        "{} ({}, {}): the download needs {} free, from {}",
        s.file_name,
        s.display_size,
        manifest.quantization,
        DecimalBytes(s.free_space_needed),
        s.url
    );
    Ok(())
}
