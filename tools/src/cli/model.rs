//! `bittybot download` and `bittybot verify`: the model-setup state machine
//! of the guest, driven with a progress bar.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use bittybot_host::{Runtime, SetupMode, SetupState, VerifiedBy};

use super::{CliContext, start_runtime};

/// The text of a spec override file.
pub fn read_spec(path: Option<&PathBuf>) -> Result<Option<String>> {
    path.map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read spec {}", p.display())))
        .transpose()
}

fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>11} [{bar:32}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn speed_eta(p: &bittybot_host::SetupProgress) -> String {
    let speed = indicatif::HumanBytes(p.bytes_per_s as u64);
    let eta = p.eta_s.map(|s| format!(", ETA {}", indicatif::HumanDuration(Duration::from_secs_f64(s))));
    let attempt = if p.attempt > 1 { format!(" (attempt {})", p.attempt) } else { String::new() };
    format!("{speed}/s{}{attempt}", eta.unwrap_or_default())
}

/// Run the guest's model setup to its end; returns the ready file name.
pub fn ensure(
    rt: &mut Runtime,
    spec: Option<&str>,
    allow_download: bool,
    force_verify: bool,
    show: bool,
) -> Result<String> {
    let bar = show.then(bar);
    let mode = SetupMode { allow_download, force_verify };
    let ready = rt.ensure_model(spec, mode, |state| {
        let Some(bar) = &bar else { return };
        match state {
            SetupState::Checking => bar.set_prefix("checking"),
            SetupState::Preflight => bar.set_prefix("preflight"),
            SetupState::Downloading(p) | SetupState::Verifying(p) => {
                bar.set_prefix(if matches!(state, SetupState::Downloading(_)) {
                    "downloading"
                } else {
                    "verifying"
                });
                bar.set_length(p.total);
                bar.set_position(p.done);
                bar.set_message(speed_eta(p));
            }
            SetupState::Ready(_) | SetupState::Failed(_) => bar.finish_and_clear(),
        }
    })?;
    if show {
        let how = match ready.verified_by {
            VerifiedBy::SavedRecord => "verified record",
            VerifiedBy::Hashing => "hashed",
            VerifiedBy::Download => "hashed while downloading",
        };
        eprintln!("ready: {} ({} bytes, {how})", ready.file_name, ready.size);
        for f in &ready.removed {
            eprintln!("removed stale file {f}");
        }
    }
    Ok(ready.file_name)
}

/// `bittybot download`.
pub fn download(ctx: &CliContext, spec: Option<&PathBuf>) -> Result<()> {
    let spec = read_spec(spec)?;
    let mut rt = start_runtime(ctx, None)?;
    let s = rt.resolve_spec(spec.as_deref())?;
    eprintln!("{} ({}) from {}", s.file_name, s.display_size, s.url);
    ensure(&mut rt, spec.as_deref(), true, false, true)?;
    Ok(())
}

/// The path of the app's verified model (checked, never downloaded).
pub fn managed_path(ctx: &CliContext, spec: Option<&PathBuf>) -> Result<PathBuf> {
    let spec = read_spec(spec)?;
    let mut rt = start_runtime(ctx, None)?;
    let name = ensure(&mut rt, spec.as_deref(), false, false, ctx.verbose)?;
    Ok(ctx.data_dir.join("models").join(name))
}

/// `bittybot verify`.
pub fn verify(ctx: &CliContext, spec: Option<&PathBuf>, path: Option<&PathBuf>) -> Result<()> {
    let spec_text = read_spec(spec)?;
    let mut rt = start_runtime(ctx, None)?;
    let Some(path) = path else {
        ensure(&mut rt, spec_text.as_deref(), false, true, true)?;
        return Ok(());
    };
    let bar = bar();
    bar.set_prefix("hashing");
    let start = std::time::Instant::now();
    let sha = bittybot_host::hashing::hash_file(path, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        true
    })
    .with_context(|| format!("cannot hash {}", path.display()))?;
    bar.finish_and_clear();
    let size = std::fs::metadata(path)?.len();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{} bytes in {:.2} s ({:.0} MB/s)", size, secs, size as f64 / secs / 1e6);
    println!("{sha}  {}", path.display());
    // Whether it matches is the guest's decision, as for the app's own download.
    let s = rt
        .verify_digest(spec_text.as_deref(), size, &sha)
        .with_context(|| format!("{} does not match the spec", path.display()))?;
    eprintln!("OK: matches {} ({})", s.file_name, s.display_size);
    Ok(())
}
