//! `bittybot chat` and `bittybot translate`: streaming replies in the terminal.

use std::io::{BufRead, Write};

use anyhow::{Context as _, Result};
use clap::Args;

use bittybot_host::{
    GenerationStats, MemoryOutlook, Runtime, Session, SessionKind, SessionOptions, Sessions, StopReason,
};

use super::{CliContext, ModelArgs};

/// Arguments of `chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One message; the reply is printed and the program ends.
    #[arg(short = 'p', long)]
    pub prompt: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    pub temp: Option<f32>,
    /// Sampling seed.
    #[arg(long)]
    pub seed: Option<u32>,
    /// Maximum new tokens per reply.
    #[arg(short = 'n', long)]
    pub max_tokens: Option<u32>,
    /// Serve the -m model through a throttled FUSE mount at a phone's flash
    /// speed (ufs2 or emmc, as `bench --storage`); needs /dev/fuse.
    /// Unmounted when the chat ends, on error and on Ctrl-C.
    #[arg(long, value_name = "PROFILE", requires = "model")]
    pub storage: Option<String>,
}

/// Arguments of `translate`.
#[derive(Debug, Args)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Target language (name or code, e.g. `French` or `fr`).
    #[arg(long)]
    pub to: String,
    /// Source language, when known.
    #[arg(long)]
    pub from: Option<String>,
    /// The text to translate.
    pub text: String,
}

/// One stats line: TTFT, prompt speed, decode speed.
pub fn stats_line(s: &GenerationStats) -> String {
    let stop = match s.stop {
        StopReason::EndOfGeneration => "end",
        StopReason::MaxTokens => "max tokens",
        StopReason::StopString => "stop string",
        StopReason::Cancelled => "cancelled",
    };
    format!(
        "[TTFT {:.0} ms · prompt {} tok, {:.1} tok/s · decode {} tok, {:.1} tok/s · KV {} · {}{}{}]",
        s.ttft_ms,
        s.prompt_tokens,
        s.prompt_tokens_per_s,
        s.generated_tokens,
        s.decode_tokens_per_s,
        s.kv_tokens,
        stop,
        if s.dropped_turns > 0 { format!(" · dropped {} turns", s.dropped_turns) } else { String::new() },
        match s.outlook {
            MemoryOutlook::Resident => "",
            MemoryOutlook::Paging => " · the model cannot stay in memory here: replies are slow",
        }
    )
}

/// Send a message and print the reply as it streams; returns the stats.
/// (A failed write to stdout, e.g. a closed pipe, cancels the turn.)
fn stream(rt: &mut Runtime, session: &Session, text: &str) -> Result<GenerationStats> {
    let mut out = std::io::stdout().lock();
    let reply =
        rt.reply(session, text, |chunk| out.write_all(chunk.as_bytes()).and_then(|()| out.flush()).is_ok());
    writeln!(out)?;
    Ok(reply?.stats)
}

fn session_options(args: &ChatArgs) -> SessionOptions {
    let mut o = SessionOptions::unchanged();
    o.temperature = args.temp;
    o.seed = args.seed;
    o.max_tokens = args.max_tokens;
    o
}

fn threads_note(report: &bittybot_host::LoadReport) -> String {
    let info = &report.info;
    format!(
        "{} · ctx {} · threads {}/{} ({})",
        info.file_name,
        info.settings.n_ctx,
        info.settings.threads,
        info.settings.threads_batch,
        report.threads_source
    )
}

fn kind(translation: bool) -> SessionKind {
    if translation { SessionKind::Translation } else { SessionKind::Chat }
}

/// `bittybot chat`.
pub fn chat(ctx: &CliContext, args: &ChatArgs) -> Result<()> {
    use bittybot_tools::phone::storage::{self, Mount};
    let (Some(name), Some(model)) = (&args.storage, &args.model.model) else {
        return chat_on(ctx, args, &args.model);
    };
    let profile = storage::named(name).with_context(|| {
        format!("unknown storage profile {name:?}; known: {}", storage::PROFILES.join(", "))
    })?;
    let mount = Mount::new(model, profile, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let served = ModelArgs { model: Some(mount.path_of(model)), ..args.model.clone() };
    if ctx.verbose {
        eprintln!("serving {} through {}", model.display(), mount.mountpoint().display());
    }
    // The runtime (and its mapping of the model) ends inside chat_on, before the unmount.
    let result = chat_on(ctx, args, &served);
    let unmounted = mount.unmount().context("unmounting the throttled storage");
    result.and(unmounted)
}

fn chat_on(ctx: &CliContext, args: &ChatArgs, model: &ModelArgs) -> Result<()> {
    let (mut rt, info) = model.open(ctx)?;
    let mut sessions = Sessions::default();
    sessions.configure(&mut rt, SessionKind::Chat, session_options(args))?;
    if let Some(prompt) = &args.prompt {
        let chat = sessions.session(&mut rt, SessionKind::Chat)?;
        let stats = stream(&mut rt, chat, prompt)?;
        eprintln!("{} · {}", stats_line(&stats), threads_note(&info));
        return Ok(());
    }

    eprintln!("{} — type a message; /translate LANG, /chat, /reset, /stats, /quit", threads_note(&info));
    let mut in_translation = false;
    let mut last: Option<GenerationStats> = None;
    let stdin = std::io::stdin();
    loop {
        eprint!("{}> ", if in_translation { "translate" } else { "you" });
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        match line.split_once(' ').map_or((line, ""), |(a, b)| (a, b.trim())) {
            ("/quit" | "/exit", _) => break,
            ("/chat", _) => {
                in_translation = false;
                continue;
            }
            ("/translate", lang) => {
                if lang.is_empty() {
                    eprintln!("usage: /translate LANG (e.g. /translate French)");
                    continue;
                }
                sessions.set_languages(&mut rt, None, lang.to_owned())?;
                in_translation = true;
                continue;
            }
            ("/reset", _) => {
                sessions.reset(&mut rt, kind(in_translation))?;
                eprintln!("(conversation cleared)");
                continue;
            }
            ("/stats", _) => {
                match &last {
                    Some(s) => eprintln!("{}", stats_line(s)),
                    None => eprintln!("(no reply yet)"),
                }
                continue;
            }
            _ => {}
        }
        let session = sessions.session(&mut rt, kind(in_translation))?;
        match stream(&mut rt, session, line) {
            Ok(stats) => last = Some(stats),
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    Ok(())
}

/// `bittybot translate`.
pub fn translate(ctx: &CliContext, args: &TranslateArgs) -> Result<()> {
    let (mut rt, info) = args.model.open(ctx)?;
    let session = rt.open_session(SessionKind::Translation)?;
    rt.set_languages(&session, args.from.as_deref(), &args.to)?;
    let stats = stream(&mut rt, &session, &args.text)?;
    eprintln!("{} · {}", stats_line(&stats), threads_note(&info));
    Ok(())
}
