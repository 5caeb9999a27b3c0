//! The page-residency cases: what the phone's "after idle" costs and what
//! warmup and `prepare` win back. (a) resident, (b) evicted and sent
//! without warmup, (c) evicted with the re-warm at send, (d) evicted,
//! `prepare`, think time, send; and a warmup pass against `cat`.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use bittybot_host::warmup;
use bittybot_host::{Runtime, Session, SessionOptions};

use super::{BenchConfig, BenchError, CaseReport, ResidencyReport, Sample, summarize, turn};
use bittybot_host::{GenerationStats, MemoryOutlook};

/// A warm pass in the order the guest asks for (`WarmOrder::ForwardPass`).
fn warm(path: &Path) -> Result<warmup::WarmupReport, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Other(format!("warming {}: {e}", path.display()));
    let f = File::open(path).map_err(|e| err(&e))?;
    let order = warmup::forward_pass_order_of(&f).map_err(|e| err(&e))?;
    warmup::warm_up(&f, &order, |_, _| true).map_err(|e| err(&e))
}

/// Drop the model's pages: `MADV_PAGEOUT` + `POSIX_FADV_DONTNEED` (the
/// host's `warmup::evict`); when the model is served through the throttled
/// mount and pages are left, the mount invalidates them
/// (`FUSE_NOTIFY_INVAL_INODE`). Returns the residency afterwards and
/// whether the mount had to step in.
fn evict(cfg: &BenchConfig, path: &Path) -> Result<(f32, bool), BenchError> {
    let mut r =
        warmup::evict(path).map_err(|e| BenchError::Other(format!("evicting {}: {e}", path.display())))?;
    let mut inval = false;
    if r > 0.01
        && let Some(inv) = &cfg.invalidator
    {
        inv.invalidate().map_err(|e| BenchError::Other(format!("invalidating the mount's pages: {e}")))?;
        r = residency(path)?;
        inval = true;
    }
    // Let background readahead from the previous turn settle.
    std::thread::sleep(Duration::from_millis(100));
    Ok((r, inval))
}

fn residency(path: &Path) -> Result<f32, BenchError> {
    let f = File::open(path).map_err(|e| BenchError::Other(e.to_string()))?;
    warmup::residency(&f).map_err(|e| BenchError::Other(e.to_string()))
}

pub(super) fn cases(
    cfg: &BenchConfig,
    rt: &mut Runtime,
    session: &Session,
    progress: &mut dyn FnMut(&str),
) -> Result<ResidencyReport, BenchError> {
    let path = rt.model_path().ok_or_else(|| BenchError::Other("no model".into()))?.to_owned();
    let set_rewarm = |rt: &mut Runtime, on: bool| {
        let mut o = SessionOptions::unchanged();
        o.rewarm = Some(on);
        rt.configure(session, &o)
    };
    let mut after_evict = Vec::new();
    let mut rows: Vec<(&str, Vec<(Sample, GenerationStats)>)> = vec![
        ("(a) resident", Vec::new()),
        ("(b) evicted, no warmup", Vec::new()),
        ("(c) evicted, re-warm at send", Vec::new()),
        ("(d) evicted, prepare + think", Vec::new()),
    ];
    let mut warm_speed = Vec::new();
    let mut warm_ms = Vec::new();
    let mut cat_speed = Vec::new();
    let mut inval_used = false;
    let mut ev = |path: &Path| -> Result<f32, BenchError> {
        let (r, inval) = evict(cfg, path)?;
        inval_used |= inval;
        Ok(r)
    };
    for rep in 0..cfg.evict_reps {
        let n = cfg.evict_reps;
        // (a): everything in memory.
        progress(&format!("residency {}/{n}: (a) resident", rep + 1));
        set_rewarm(rt, true)?;
        warm(&path)?;
        rt.reset(session)?;
        rows[0].1.push(turn(rt, session, &cfg.prompt)?);
        // (b): evicted, the turn faults pages in one at a time.
        progress(&format!("residency {}/{n}: (b) evicted, no warmup", rep + 1));
        set_rewarm(rt, false)?;
        after_evict.push(ev(&path)? as f64);
        rt.reset(session)?;
        rows[1].1.push(turn(rt, session, &cfg.prompt)?);
        // (c): evicted, the guest re-warms alongside the prompt.
        progress(&format!("residency {}/{n}: (c) evicted, re-warm at send", rep + 1));
        set_rewarm(rt, true)?;
        ev(&path)?;
        rt.reset(session)?;
        rows[2].1.push(turn(rt, session, &cfg.prompt)?);
        // (d): evicted, `prepare` when the user starts typing, send after the think time.
        progress(&format!("residency {}/{n}: (d) evicted, prepare + think", rep + 1));
        ev(&path)?;
        rt.reset(session)?;
        rt.prepare(session)?;
        std::thread::sleep(cfg.think);
        rows[3].1.push(turn(rt, session, &cfg.prompt)?);
        // Warmup pass vs `cat`, both on an evicted file.
        progress(&format!("residency {}/{n}: warmup pass and cat", rep + 1));
        ev(&path)?;
        let w = warm(&path)?;
        warm_speed.push(w.bytes_per_s);
        warm_ms.push(w.millis);
        ev(&path)?;
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
    let rewarm_beats_evicted_every_run =
        rows[1].1.iter().zip(&rows[2].1).all(|(b, c)| c.0.ttft_ms < b.0.ttft_ms);
    let cases: Vec<CaseReport> = rows
        .into_iter()
        .map(|(case, v)| CaseReport {
            case: case.to_owned(),
            ttft_ms: summarize(&v.iter().map(|x| x.0.ttft_ms).collect::<Vec<_>>()),
            prompt_tps: summarize(&v.iter().map(|x| x.0.prompt_tps).collect::<Vec<_>>()),
            decode_tps: summarize(&v.iter().map(|x| x.0.decode_tps).collect::<Vec<_>>()),
            residency: summarize(&v.iter().map(|x| x.1.residency as f64).collect::<Vec<_>>()),
            warmup_ms: summarize(&v.iter().map(|x| x.1.warmup_ms).collect::<Vec<_>>()),
            paging_turns: v.iter().filter(|x| x.1.outlook == MemoryOutlook::Paging).count(),
            turns: v.len(),
        })
        .collect();
    let vs_a = |i: usize| cases[i].ttft_ms.median / cases[0].ttft_ms.median.max(1e-9);
    Ok(ResidencyReport {
        after_evict: summarize(&after_evict).median as f32,
        prepared_vs_resident: vs_a(3),
        evicted_vs_resident: vs_a(1),
        rewarm_vs_resident: vs_a(2),
        rewarm_beats_evicted_every_run,
        eviction: if inval_used { "fuse-inval" } else { "pageout+fadvise" }.to_owned(),
        warm_pass_ms: summarize(&warm_ms),
        cases,
        warmup_bytes_per_s: summarize(&warm_speed).median,
        cat_bytes_per_s: summarize(&cat_speed).median,
    })
}
