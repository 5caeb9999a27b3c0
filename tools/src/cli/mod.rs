//! Command-line arguments and the commands behind them.

mod chat;
mod guest;
mod measure;
mod model;
mod quantize;
mod tune;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use bittybot_host::{GuestSource, LoadOptions, Message, ModelSource, Runtime, RuntimeOptions};

/// BittyBot: an offline chat and translation assistant on llama.cpp.
#[derive(Debug, Parser)]
#[command(name = "bittybot", version)]
pub struct Cli {
    /// Data directory (models/, state/, cache/). Default: $BITTYBOT_HOME,
    /// else $XDG_DATA_HOME/bittybot, else ~/.local/share/bittybot.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Run this guest component instead of the built-in one.
    #[arg(long, global = true)]
    pub guest: Option<PathBuf>,
    /// Refuse a guest whose SHA-256 is not this (hex).
    #[arg(long, global = true)]
    pub guest_sha256: Option<String>,
    /// Refuse a guest without a valid Ed25519 signature (FILE.wasm.sig) by
    /// this public key (hex, or a file holding it).
    #[arg(long, global = true)]
    pub guest_pubkey: Option<String>,
    /// Print start-up figures (guest cache, instantiation) to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Time the guest may take in one call before it is stopped, ms: its
    /// own code, sleeps and waits, not the host's work for it (default 5000;
    /// raise it under an emulator such as qemu).
    #[arg(long, global = true)]
    pub call_budget_ms: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

/// Model and load settings shared by the commands that load a model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The GGUF model file (default: the app's verified model, see `bittybot download`).
    #[arg(short = 'm', long)]
    pub model: Option<PathBuf>,
    /// Model spec JSON overriding the built-in one (used when -m is not given).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Generation threads (default: the number of fast cores).
    #[arg(short = 't', long)]
    pub threads: Option<u32>,
    /// Prompt-processing threads (default: chosen with the generation threads).
    #[arg(long)]
    pub threads_batch: Option<u32>,
    /// Context length per session, in tokens.
    #[arg(short = 'c', long)]
    pub ctx_size: Option<u32>,
    /// Logical batch size for prompt processing.
    #[arg(short = 'b', long)]
    pub batch_size: Option<u32>,
}

impl ModelArgs {
    /// Start a runtime and load the model: the `-m` file, else the verified
    /// model of the spec (never downloads).
    pub fn open(&self, ctx: &CliContext) -> Result<(Runtime, bittybot_host::LoadReport)> {
        let mut rt = start_runtime(ctx, self.model.as_ref())?;
        let source = match &self.model {
            Some(_) => ModelSource::Provided,
            None => {
                let spec = model::read_spec(self.spec.as_ref())?;
                ModelSource::Managed(model::ensure(&mut rt, spec.as_deref(), false, false, ctx.verbose)?)
            }
        };
        let report = rt.load_model(&self.load_options(source))?;
        Ok((rt, report))
    }

    fn load_options(&self, source: ModelSource) -> LoadOptions {
        LoadOptions {
            source,
            n_ctx: self.ctx_size,
            n_batch: self.batch_size,
            threads: self.threads,
            threads_batch: self.threads_batch,
            use_mmap: None,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chat with the model: one-shot with -p, interactive otherwise.
    Chat(chat::ChatArgs),
    /// Translate one text.
    Translate(chat::TranslateArgs),
    /// Print the exact prompt a conversation renders to, and its token count.
    Prompt {
        #[command(flatten)]
        model: ModelArgs,
        /// JSON file: [{"role": "system"|"user"|"assistant", "content": "…"}, …]
        #[arg(long)]
        messages: PathBuf,
        /// Leave out the generation prompt (the opening of the assistant turn).
        #[arg(long)]
        no_generation_prompt: bool,
    },
    /// Download the model of the spec (resumes a partial download), then verify it.
    Download {
        /// Model spec JSON overriding the built-in one.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Data directory to download into (models/ under it); same as --data-dir.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check a model file against the spec (size and SHA-256). Without PATH,
    /// re-hash the app's model and refresh its verified record.
    Verify {
        /// Model spec JSON overriding the built-in one.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// The file to check.
        path: Option<PathBuf>,
    },
    /// Show what the app keeps on disk: models, settings, saved prompt states, compiled guests.
    Info,
    /// Measure thread counts on this device and store the best for the model.
    Tune(tune::TuneArgs),
    /// Sign and check guest components.
    #[command(subcommand)]
    Guest(guest::GuestCommand),
    /// Measure the path through the guest against a raw llama-cpp-2 loop,
    /// optionally under phone conditions (slow storage, memory pressure).
    Bench(Box<measure::BenchArgs>),
    /// Quantize a GGUF model with llama.cpp's quantizer; writes the release manifest next to it.
    Quantize(quantize::QuantizeArgs),
    /// Print the model spec JSON of a release manifest (the guest's override format).
    Spec(quantize::SpecArgs),
    /// Compute a model's importance matrix over calibration texts (llama.cpp's GGUF imatrix format).
    Imatrix(measure::ImatrixArgs),
    /// Measure a quantized model against a reference, per text: perplexity, KL divergence, top-token agreement.
    Quality(measure::QualityArgs),
}

fn bench_prompt() -> &'static str {
    "Write a detailed, friendly explanation of how a bicycle's gears work, for a curious child."
}

/// The data directory from the flag or the environment.
pub fn data_dir(flag: Option<&PathBuf>) -> PathBuf {
    if let Some(d) = flag {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("BITTYBOT_HOME") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("bittybot");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/bittybot")
}

fn guest_source(cli_guest: Option<&PathBuf>) -> Result<GuestSource> {
    match cli_guest {
        Some(p) => Ok(GuestSource::from_file(p)?),
        None => Ok(GuestSource::builtin()),
    }
}

/// Start a runtime for a model file.
pub fn start_runtime(cli: &CliContext, model: Option<&PathBuf>) -> Result<Runtime> {
    let mut options = RuntimeOptions::new(&cli.data_dir);
    options.guest = cli.guest.clone();
    options.policy = cli.policy.clone();
    options.model = model.cloned();
    if let Some(budget) = cli.call_budget {
        options.limits.call_time = budget;
    }
    let rt = Runtime::start(options)?;
    if cli.verbose {
        let r = rt.start_report();
        eprintln!(
            "guest {} ({}): component {:.2} ms ({:?}), instantiate {:.2} ms, start {:.2} ms",
            rt.guest().label(),
            &rt.guest().sha256()[..12],
            r.component.component_ms,
            r.component.outcome,
            r.instantiate_ms,
            r.total_ms
        );
    }
    Ok(rt)
}

/// What every command needs from the global flags.
pub struct CliContext {
    /// Data directory.
    pub data_dir: PathBuf,
    /// The guest.
    pub guest: GuestSource,
    /// Print start-up figures.
    pub verbose: bool,
    /// The guest integrity policy.
    pub policy: bittybot_host::GuestPolicy,
    /// The guest's time budget per call (`Limits::call_time`), when not the default.
    pub call_budget: Option<std::time::Duration>,
}

/// `bittybot info`.
fn info(ctx: &CliContext) -> Result<()> {
    println!("data directory: {}", ctx.data_dir.display());
    println!("guest: {} (SHA-256 {})", ctx.guest.label(), ctx.guest.sha256());
    println!(
        "host implements bittybot:core@{}; {}",
        bittybot_host::guest::WIT_VERSION,
        bittybot_host::llama::LLAMA_CPP_VERSION
    );
    for (title, dir, filter) in [
        ("models", "models", None),
        ("saved prompt states", "state", Some("prefix-")),
        ("compiled guests", "cache", None),
    ] {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(ctx.data_dir.join(dir))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let keep = filter.is_none_or(|f| name.starts_with(f));
                        keep.then(|| (name, e.metadata().map(|m| m.len()).unwrap_or(0)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let total: u64 = files.iter().map(|f| f.1).sum();
        println!("{title}: {} files, {:.1} MB", files.len(), total as f64 / 1e6);
        for (name, size) in files {
            println!("  {name}  {:.1} MB", size as f64 / 1e6);
        }
    }
    Ok(())
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let ctx = CliContext {
        data_dir: data_dir(cli.data_dir.as_ref()),
        guest: guest_source(cli.guest.as_ref())?,
        verbose: cli.verbose,
        policy: guest::policy(cli.guest_sha256.as_deref(), cli.guest_pubkey.as_deref())?,
        call_budget: cli.call_budget_ms.map(std::time::Duration::from_millis),
    };
    match cli.command {
        Command::Chat(args) => chat::chat(&ctx, &args),
        Command::Translate(args) => chat::translate(&ctx, &args),
        Command::Prompt { model, messages, no_generation_prompt } => {
            let text = std::fs::read_to_string(&messages)
                .with_context(|| format!("cannot read {}", messages.display()))?;
            let messages: Vec<serde_json::Value> = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON list", messages.display()))?;
            let messages = messages
                .iter()
                .map(|m| {
                    let role = m.get("role").and_then(|r| r.as_str()).context("a message has no \"role\"")?;
                    let content =
                        m.get("content").and_then(|c| c.as_str()).context("a message has no \"content\"")?;
                    Ok(Message { role: role.to_owned(), content: content.to_owned() })
                })
                .collect::<Result<Vec<_>>>()?;
            let (mut rt, _) = model.open(&ctx)?;
            let rendered = rt.render_prompt(&messages, !no_generation_prompt)?;
            print!("{}", rendered.text);
            eprintln!("\n--- {} tokens", rendered.tokens.len());
            Ok(())
        }
        Command::Download { spec, dir } => {
            let ctx = CliContext { data_dir: dir.unwrap_or(ctx.data_dir), ..ctx };
            model::download(&ctx, spec.as_ref())
        }
        Command::Verify { spec, path } => model::verify(&ctx, spec.as_ref(), path.as_ref()),
        Command::Quantize(args) => quantize::quantize(&args),
        Command::Spec(args) => quantize::spec(&ctx, &args),
        Command::Imatrix(args) => measure::imatrix(&args),
        Command::Quality(args) => measure::quality(&args),
        Command::Guest(cmd) => guest::run(&cmd),
        Command::Tune(args) => tune::tune(&ctx, &args),
        Command::Info => info(&ctx),
        Command::Bench(args) => measure::bench(&ctx, &args),
    }
}
