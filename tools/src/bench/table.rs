//! The report as a table.

use super::{BenchReport, PathReport, ResidencyReport, Summary};

/// The residency cases as a table.
fn residency_table(r: &ResidencyReport) -> String {
    let s = |x: Summary, p: usize| format!("{:.p$} [{:.p$}–{:.p$}]", x.median, x.min, x.max, p = p);
    let mut out = format!(
        "\n{:<30} {:>26} {:>22} {:>22} {:>12} {:>10} {:>8}\n",
        "case", "TTFT ms", "prompt tok/s", "decode tok/s", "residency", "warmup ms", "paging"
    );
    for c in &r.cases {
        out.push_str(&format!(
            "{:<30} {:>26} {:>22} {:>22} {:>12.2} {:>10.0} {:>8}\n",
            c.case,
            s(c.ttft_ms, 1),
            s(c.prompt_tps, 0),
            s(c.decode_tps, 1),
            c.residency.median,
            c.warmup_ms.median,
            format!("{}/{}", c.paging_turns, c.turns)
        ));
    }
    out.push_str(&format!(
        "residency after eviction {:.3} ({}); TTFT (b)/(a) {:.2}, (c)/(a) {:.2}, (d)/(a) {:.2}; (c) < (b) in every run: {}\n\
         full warm pass {} ms; warmup pass {:.0} MB/s vs cat {:.0} MB/s ({:.2}×)\n",
        r.after_evict,
        r.eviction,
        r.evicted_vs_resident,
        r.rewarm_vs_resident,
        r.prepared_vs_resident,
        r.rewarm_beats_evicted_every_run,
        s(r.warm_pass_ms, 0),
        r.warmup_bytes_per_s / 1e6,
        r.cat_bytes_per_s / 1e6,
        r.warmup_bytes_per_s / r.cat_bytes_per_s.max(1e-9)
    ));
    out
}

/// The phone conditions, one paragraph (empty when none).
fn conditions(r: &BenchReport) -> String {
    let c = &r.conditions;
    let mut out = String::new();
    if let Some(s) = &c.storage {
        let p = &s.profile;
        out.push_str(&format!(
            "storage: {} ({} MB/s, {} ms per request, {} KiB max request, queue depth {}); served {} requests, {:.1} MB{}\n",
            p.name,
            p.mbps,
            p.latency_ms,
            p.max_request >> 10,
            p.queue_depth,
            s.requests,
            s.bytes as f64 / 1e6,
            if s.direct_backing { "" } else { " (backing read through the page cache)" }
        ));
    }
    if let Some(b) = &c.balloon {
        out.push_str(&format!(
            "memory: --available-mb {}: balloon {} MB (locked: {}), MemAvailable {} → {} MB, lowest during the run {} MB{}\n",
            b.target_available_mb,
            b.balloon_mb,
            b.locked,
            b.available_before_mb,
            b.available_after_mb,
            b.lowest_available_mb,
            if b.released_by_watchdog { "; RELEASED by the watchdog (MemAvailable fell too low)" } else { "" }
        ));
    }
    if !out.is_empty() {
        out.push_str(&format!("wall time {:.1} s\n", c.wall_s));
    }
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
        "model {} ({:.1} MB), threads {}/{} (decode/prompt), context {} per session, KV {}, prompt {} tokens, {} repetitions (median [min–max])\n\n",
        r.model,
        r.model_bytes as f64 / 1e6,
        r.threads,
        r.threads_batch,
        r.n_ctx,
        r.kv_type,
        r.prompt_tokens,
        r.reps
    ));
    out.push_str(&conditions(r));
    out.push_str(&format!("device fit at load: {}", r.fit_outlook));
    for n in &r.fit_notes {
        out.push_str(&format!("; {n}"));
    }
    out.push_str("\n\n");
    out.push_str(&format!(
        "{:<16} {:>9}  {:>24}  {:>24}  {:>24}\n",
        "path", "load ms", "TTFT ms", "prompt tok/s", "decode tok/s"
    ));
    out.push_str(&row("raw llama-cpp-2", &r.raw));
    out.push_str(&row("through guest", &r.guest));
    out.push_str(&format!(
        "\nguest ÷ raw: decode {:.3}× (paired {:.3} [{:.3}…{:.3}]{}), prompt {:.3}×; TTFT overhead: medians {:+.2} ms, paired {:+.2} ms [{:+.2}…{:+.2}]{} (ratio {:.4}×); same token counts: {}\n",
        r.decode_ratio,
        r.decode_ratio_paired.median,
        r.decode_ratio_paired.min,
        r.decode_ratio_paired.max,
        ci(&r.decode_ratio_paired, |x| format!("{x:.3}")),
        r.prompt_ratio,
        r.ttft_overhead_ms,
        r.ttft_overhead_paired_ms.median,
        r.ttft_overhead_paired_ms.min,
        r.ttft_overhead_paired_ms.max,
        ci(&r.ttft_overhead_paired_ms, |x| format!("{x:+.2}")),
        r.ttft_ratio_paired.median,
        r.same_tokens
    ));
    let split = |x: &Summary| format!("{:+.2} ms{}", x.median, ci(x, |v| format!("{v:+.2}")));
    out.push_str(&format!(
        "TTFT overhead, paired, split: prompt evaluation {}; outside it {}\n",
        split(&r.prompt_eval_overhead_paired_ms),
        split(&r.outside_prompt_overhead_paired_ms)
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

/// ", median's 95 % CI [a…b]" when the summary has one.
fn ci(s: &super::Summary, f: impl Fn(f64) -> String) -> String {
    s.median_ci95.map_or(String::new(), |[a, b]| format!(", median's 95 % CI [{}…{}]", f(a), f(b)))
}
