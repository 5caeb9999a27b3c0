//! `bittybot quality`: what quantization did to a model, per text (one
//! text per language), measured as llama.cpp's `llama-perplexity
//! --kl-divergence` does: the reference model's next-token distributions
//! against the quantized model's, on the same tokens.
//!
//! The reference runs once: its distributions go to a base file in
//! llama.cpp's `--kl-divergence-base` format (`_logits_`, n_ctx, n_vocab,
//! n_chunk, the tokens, then per scored token two f32 and n_vocab u16
//! quantized log-probabilities), with a JSON sidecar naming the reference
//! and each text's chunks, so a later run against another quantization
//! reuses it. Both passes stream chunk by chunk: memory holds one chunk's
//! tokens and at most [`eval::STEP`] rows of logits, never the corpus.
//!
//! Each chunk of `n_ctx` tokens is scored on its second half (positions
//! `n_ctx/2 ..= n_ctx-2` predict the next token), as llama.cpp does.
//! Reported per text and overall: perplexity of both models (±), mean KLD
//! (± its standard error), median and 99th percentile KLD, how often the
//! most likely token is the same (%), and mean and RMS of Δp, the change in
//! the probability of the right token.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bittybot_host::llama::ffi::{Model, Token};
use serde::{Deserialize, Serialize};

use crate::eval::{self, EvalError, Evaluator, Text};

const MAGIC: &[u8; 8] = b"_logits_";
/// Log-probabilities below this are not stored (llama.cpp's range).
const LOG_RANGE: f32 = 16.0;

/// What to measure.
#[derive(Debug, Clone)]
pub struct QualityRequest {
    /// The reference model (e.g. the F16, or here a higher-precision quant).
    pub reference: PathBuf,
    /// The quantized model.
    pub model: PathBuf,
    /// Evaluation texts (one per language).
    pub texts: Vec<PathBuf>,
    /// The reference's distributions (written when missing or stale, else reused).
    pub base: PathBuf,
    /// Tokens per chunk.
    pub n_ctx: u32,
    /// Threads.
    pub threads: u32,
}

/// The base file's sidecar: what it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BaseInfo {
    reference: String,
    reference_size: u64,
    n_ctx: u32,
    n_vocab: u32,
    vocab_hash: String,
    /// (text name, tokens, chunks), in file order.
    texts: Vec<(String, usize, usize)>,
}

/// A value and its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Est {
    /// The value.
    pub value: f64,
    /// Its standard error.
    pub se: f64,
}

/// What quantization did on one text (or all of them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextQuality {
    /// The text (`all` for the whole set).
    pub name: String,
    /// Tokens scored.
    pub tokens: usize,
    /// Perplexity of the reference.
    pub ppl_reference: Est,
    /// Perplexity of the quantized model.
    pub ppl: Est,
    /// Mean KL divergence, nats.
    pub kld_mean: Est,
    /// Median KLD.
    pub kld_median: f64,
    /// 99th percentile of KLD.
    pub kld_p99: f64,
    /// The same most likely token, %.
    pub same_top_pct: Est,
    /// Mean Δp of the right token, percentage points.
    pub dp_mean_pct: Est,
    /// RMS Δp, percentage points.
    pub dp_rms_pct: Est,
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// The reference model's file name.
    pub reference: String,
    /// The quantized model's file name.
    pub model: String,
    /// Tokens per chunk.
    pub n_ctx: u32,
    /// Per text, in the order given.
    pub texts: Vec<TextQuality>,
    /// All texts together.
    pub overall: TextQuality,
    /// Whether the reference's distributions came from an existing base file.
    pub base_reused: bool,
    /// Peak resident memory of the process, bytes.
    pub peak_rss: u64,
}

/// Sums over scored tokens.
#[derive(Debug, Default, Clone)]
struct Acc {
    n: usize,
    nll: f64,
    nll2: f64,
    nll_base: f64,
    nll_base2: f64,
    kld: f64,
    kld2: f64,
    dp: f64,
    dp2: f64,
    dp4: f64,
    same: usize,
    klds: Vec<f32>,
}

fn mean_se(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    let n_f = n as f64;
    let f = sum / n_f.max(1.0);
    let v = sum2 / n_f.max(1.0) - f * f;
    (f, if v > 0.0 && n > 10 { (v / (n_f - 1.0)).sqrt() } else { 0.0 })
}

/// llama.cpp's percentile: linear between the neighbours of `f·(N−1)`.
fn percentile(sorted: &[f32], f: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let p = f * (sorted.len() - 1) as f64;
    let i = p.floor() as usize;
    let frac = p - i as f64;
    (1.0 - frac) * f64::from(sorted[i]) + frac * f64::from(sorted[(i + 1).min(sorted.len() - 1)])
}

impl Acc {
    fn add(&mut self, nll: f64, nll_base: f64, kld: f64, same: bool) {
        self.n += 1;
        self.nll += nll;
        self.nll2 += nll * nll;
        self.nll_base += nll_base;
        self.nll_base2 += nll_base * nll_base;
        self.kld += kld;
        self.kld2 += kld * kld;
        let dp = (-nll).exp() - (-nll_base).exp();
        self.dp += dp;
        self.dp2 += dp * dp;
        self.dp4 += dp.powi(4);
        self.same += usize::from(same);
        self.klds.push(kld as f32);
    }

    fn merge(&mut self, o: &Acc) {
        self.n += o.n;
        self.nll += o.nll;
        self.nll2 += o.nll2;
        self.nll_base += o.nll_base;
        self.nll_base2 += o.nll_base2;
        self.kld += o.kld;
        self.kld2 += o.kld2;
        self.dp += o.dp;
        self.dp2 += o.dp2;
        self.dp4 += o.dp4;
        self.same += o.same;
        self.klds.extend_from_slice(&o.klds);
    }

    fn report(&self, name: &str) -> TextQuality {
        let ppl = |sum, sum2| {
            let (m, se) = mean_se(sum, sum2, self.n);
            Est { value: m.exp(), se: m.exp() * se }
        };
        let (kld, kld_se) = mean_se(self.kld, self.kld2, self.n);
        let (dp, dp_se) = mean_se(self.dp, self.dp2, self.n);
        let (dp2, dp2_se) = mean_se(self.dp2, self.dp4, self.n);
        let rms = dp2.sqrt();
        let p = self.same as f64 / (self.n as f64).max(1.0);
        let mut sorted = self.klds.clone();
        sorted.sort_by(f32::total_cmp);
        TextQuality {
            name: name.to_owned(),
            tokens: self.n,
            ppl_reference: ppl(self.nll_base, self.nll_base2),
            ppl: ppl(self.nll, self.nll2),
            kld_mean: Est { value: kld, se: kld_se },
            kld_median: percentile(&sorted, 0.5),
            kld_p99: percentile(&sorted, 0.99),
            same_top_pct: Est {
                value: 100.0 * p,
                se: 100.0 * (p * (1.0 - p) / (self.n as f64 - 1.0).max(1.0)).sqrt(),
            },
            dp_mean_pct: Est { value: 100.0 * dp, se: 100.0 * dp_se },
            dp_rms_pct: Est {
                value: 100.0 * rms,
                se: 100.0 * if rms > 0.0 { 0.5 / rms * dp2_se } else { 0.0 },
            },
        }
    }
}

/// (max logit, log Σ exp(z − max)).
fn log_sum_exp(z: &[f32]) -> (f32, f32) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = z.iter().map(|&v| f64::from(v - max).exp()).sum();
    (max, sum.ln() as f32)
}

/// Round half to even, as llama.cpp's `nearest_int`.
fn nearest(f: f32) -> u16 {
    f.round_ties_even().clamp(0.0, 65535.0) as u16
}

/// One record of the base file: scale, min log-prob, the quantized log-probs.
fn encode(z: &[f32], out: &mut Vec<u8>) {
    let (max, lse) = log_sum_exp(z);
    let min = z.iter().copied().fold(f32::INFINITY, f32::min);
    let m0 = min.max(max - LOG_RANGE);
    let scale = (max - m0) / 65535.0;
    let min_log_prob = m0 - max - lse;
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&min_log_prob.to_le_bytes());
    for &v in z {
        let q = if scale > 0.0 && v > m0 { nearest((v - m0) / scale) } else { 0 };
        out.extend_from_slice(&q.to_le_bytes());
    }
    if z.len() % 2 == 1 {
        out.extend_from_slice(&0u16.to_le_bytes());
    }
}

fn record_len(n_vocab: usize) -> usize {
    8 + 2 * (2 * n_vocab.div_ceil(2))
}

/// Compare a quantized model's logits `z` with a base record; (nll, nll_base, kld, same top).
fn score(record: &[u8], z: &[f32], target: Token) -> (f64, f64, f64, bool) {
    let f = |i: usize| f32::from_le_bytes([record[i], record[i + 1], record[i + 2], record[i + 3]]);
    let (scale, min_log_prob) = (f(0), f(4));
    let q = |i: usize| u16::from_le_bytes([record[8 + 2 * i], record[9 + 2 * i]]);
    let (max, lse) = log_sum_exp(z);
    let (mut kld, mut best_p, mut best_i, mut best_z, mut best_zi) =
        (0.0f64, f32::NEG_INFINITY, 0, f32::NEG_INFINITY, 0);
    for (i, &zi) in z.iter().enumerate() {
        let log_p = scale * f32::from(q(i)) + min_log_prob;
        if log_p > best_p {
            (best_p, best_i) = (log_p, i);
        }
        if zi > best_z {
            (best_z, best_zi) = (zi, i);
        }
        if log_p > -LOG_RANGE {
            let log_q = zi - max - lse;
            kld += f64::from(log_p).exp() * f64::from(log_p - log_q);
        }
    }
    let t = target as usize;
    let nll = f64::from(max + lse - z[t]);
    let nll_base = -f64::from(scale * f32::from(q(t)) + min_log_prob);
    (nll, nll_base, kld, best_i == best_zi)
}

/// A hash of a vocabulary's token texts: equal for the same vocabulary.
fn vocab_hash(model: &Model) -> String {
    let vocab = model.vocab();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in 0..vocab.n_tokens() {
        for b in vocab.text(t).into_iter().chain([0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:016x}:{}", h, vocab.n_tokens())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> EvalError + '_ {
    move |e| EvalError::Io(format!("{}: {e}", path.display()))
}

fn sidecar(base: &Path) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The reference pass: every text's chunks, their distributions into the base file.
fn write_base(
    req: &QualityRequest,
    info: &BaseInfo,
    texts: &[Text],
    model: std::sync::Arc<Model>,
    progress: &mut impl FnMut(&str, usize, usize),
) -> Result<(), EvalError> {
    let n_ctx = req.n_ctx as usize;
    let first = n_ctx / 2;
    let tmp = req.base.with_extension("part");
    let mut out = BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
    let n_chunk: usize = texts.iter().map(|t| t.n_chunks(n_ctx)).sum();
    out.write_all(MAGIC).map_err(io(&tmp))?;
    for v in [req.n_ctx as i32, info.n_vocab as i32, n_chunk as i32] {
        out.write_all(&v.to_le_bytes()).map_err(io(&tmp))?;
    }
    for t in texts {
        for chunk in t.chunks(n_ctx) {
            for tok in chunk {
                out.write_all(&tok.to_le_bytes()).map_err(io(&tmp))?;
            }
        }
    }
    let mut evaluator = Evaluator::new(model, req.n_ctx, req.threads, None)?;
    let mut record = Vec::with_capacity(record_len(info.n_vocab as usize));
    let mut done = 0;
    for t in texts {
        for chunk in t.chunks(n_ctx) {
            let mut failed = None;
            evaluator.chunk(chunk, first, |pos, z| {
                if pos + 1 < n_ctx && failed.is_none() {
                    record.clear();
                    encode(z, &mut record);
                    failed = out.write_all(&record).err();
                }
            })?;
            if let Some(e) = failed {
                return Err(io(&tmp)(e));
            }
            done += 1;
            progress("reference", done, n_chunk);
        }
    }
    out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &req.base).map_err(io(&req.base))?;
    let json = serde_json::to_vec_pretty(info).map_err(|e| EvalError::Io(e.to_string()))?;
    std::fs::write(sidecar(&req.base), json).map_err(io(&req.base))
}

/// Measure `req.model` against `req.reference` on `req.texts`.
pub fn quality(
    req: &QualityRequest,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<QualityReport, EvalError> {
    let n_ctx = req.n_ctx as usize;
    let reference = eval::load_model(&req.reference)?;
    let texts = eval::load_texts(&reference.vocab(), &req.texts, n_ctx)?;
    let info = BaseInfo {
        reference: file_name(&req.reference),
        reference_size: std::fs::metadata(&req.reference).map_err(io(&req.reference))?.len(),
        n_ctx: req.n_ctx,
        n_vocab: reference.vocab().n_tokens() as u32,
        vocab_hash: vocab_hash(&reference),
        texts: texts.iter().map(|t| (t.name.clone(), t.tokens.len(), t.n_chunks(n_ctx))).collect(),
    };
    let existing: Option<BaseInfo> =
        std::fs::read(sidecar(&req.base)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let base_reused = existing.as_ref() == Some(&info) && req.base.is_file();
    if !base_reused {
        write_base(req, &info, &texts, reference, &mut progress)?;
    } else {
        drop(reference);
    }

    let model = eval::load_model(&req.model)?;
    let hash = vocab_hash(&model);
    if hash != info.vocab_hash {
        return Err(EvalError::Model {
            path: req.model.clone(),
            reason: format!(
                "its vocabulary ({} tokens) differs from the reference's ({} tokens): the distributions cannot be compared",
                model.vocab().n_tokens(),
                info.n_vocab
            ),
        });
    }
    let mut base = BufReader::new(std::fs::File::open(&req.base).map_err(io(&req.base))?);
    let header = 8 + 12 + 4 * texts.iter().map(|t| t.n_chunks(n_ctx) * n_ctx).sum::<usize>();
    std::io::copy(&mut (&mut base).take(header as u64), &mut std::io::sink()).map_err(io(&req.base))?;
    let mut evaluator = Evaluator::new(model, req.n_ctx, req.threads, None)?;
    let first = n_ctx / 2;
    let mut record = vec![0u8; record_len(info.n_vocab as usize)];
    let (mut per_text, mut all) = (Vec::new(), Acc::default());
    let total: usize = texts.iter().map(|t| t.n_chunks(n_ctx)).sum();
    let mut done = 0;
    for t in &texts {
        let mut acc = Acc::default();
        for chunk in t.chunks(n_ctx) {
            let mut failed = None;
            evaluator.chunk(chunk, first, |pos, z| {
                if pos + 1 < n_ctx && failed.is_none() {
                    match base.read_exact(&mut record) {
                        Ok(()) => {
                            let (nll, nll_base, kld, same) = score(&record, z, chunk[pos + 1]);
                            acc.add(nll, nll_base, kld, same);
                        }
                        Err(e) => failed = Some(e),
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(io(&req.base)(e));
            }
            done += 1;
            progress("model", done, total);
        }
        all.merge(&acc);
        per_text.push(acc.report(&t.name));
    }
    Ok(QualityReport {
        reference: file_name(&req.reference),
        model: file_name(&req.model),
        n_ctx: req.n_ctx,
        texts: per_text,
        overall: all.report("all"),
        base_reused,
        peak_rss: eval::peak_rss(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_distribution_against_itself_is_zero_and_the_format_is_llama_cpps() {
        let z: Vec<f32> = (0..1001).map(|i| ((i * 37) % 101) as f32 / 7.0 - 3.0).collect();
        let mut rec = Vec::new();
        encode(&z, &mut rec);
        assert_eq!(rec.len(), record_len(z.len()), "odd vocabularies are padded to even");
        let (nll, nll_base, kld, same) = score(&rec, &z, 5);
        assert!(kld.abs() < 1e-3, "{kld}");
        assert!((nll - nll_base).abs() < 1e-3 && same);
        let mut other = z.clone();
        other[5] += 3.0;
        let (_, _, kld, _) = score(&rec, &other, 5);
        assert!(kld > 0.01, "{kld}");
    }

    #[test]
    fn percentiles_and_means_follow_llama_cpp() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert!((percentile(&v, 0.99) - 3.97).abs() < 1e-12);
        assert_eq!(mean_se(10.0, 30.0, 5).1, 0.0, "no uncertainty from 10 tokens or fewer");
        let n = 100;
        let (m, se) = mean_se(n as f64 * 2.0, n as f64 * 5.0, n);
        assert!((m - 2.0).abs() < 1e-12 && (se - (1.0f64 / 99.0).sqrt()).abs() < 1e-12);
    }
}
