//! `bittybot imatrix`: the importance matrix of a model over calibration
//! texts, computed the way llama.cpp's `llama-imatrix` does, in its GGUF
//! format (which `bittybot quantize --imatrix` reads).
//!
//! An eval callback sees every tensor llama.cpp computes. For each
//! `MUL_MAT` whose weight is a `blk.*` tensor and whose input holds at least
//! 16 rows of F32 activations, it adds, per input column, the sum of the
//! squared activations (`<weight>.in_sum2`), and counts the rows
//! (`<weight>.counts`); the quantizer divides one by the other. The output
//! head and the embedding are left out, as `llama-imatrix` does by default.
//! Chunks are evaluated with every token's logits requested, so the last
//! layer sees every row (llama.cpp drops rows nobody asked logits for).

use std::collections::BTreeMap;
use std::ffi::{CStr, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bittybot_host::gguf::{Array, Value, Writer};
use llama_cpp_sys_2 as sys;

use crate::eval::{self, EvalError, Evaluator};

/// What to compute.
#[derive(Debug, Clone)]
pub struct ImatrixRequest {
    /// The model (usually F16; any type llama.cpp evaluates).
    pub model: PathBuf,
    /// Calibration texts.
    pub texts: Vec<PathBuf>,
    /// Where to write the matrix.
    pub output: PathBuf,
    /// Tokens per chunk (512, as `llama-imatrix`).
    pub n_ctx: u32,
    /// Threads.
    pub threads: u32,
    /// Evaluate at most this many chunks in all.
    pub max_chunks: Option<usize>,
}

/// What was computed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImatrixReport {
    /// Tensors with an entry.
    pub entries: usize,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens evaluated.
    pub tokens: usize,
    /// Per text: (name, tokens, chunks evaluated).
    pub texts: Vec<(String, usize, usize)>,
    /// The output file.
    pub output: PathBuf,
}

/// Sums and row counts of one weight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// Columns (the weight's input size).
    pub ne0: usize,
    /// Matrices in the weight (`ne[2] × ne[3]`, usually 1).
    pub n_mat: usize,
    /// Σ x² per (matrix, column).
    pub sums: Vec<f64>,
    /// Rows seen per matrix.
    pub counts: Vec<u64>,
}

/// What the callback collects, by weight name.
#[derive(Debug, Default)]
pub struct Collector {
    entries: Mutex<BTreeMap<String, Entry>>,
}

fn name_of(t: &sys::ggml_tensor) -> String {
    // SAFETY: ggml keeps a NUL-terminated name in the tensor's 64-byte array.
    unsafe { CStr::from_ptr(t.name.as_ptr()) }.to_string_lossy().into_owned()
}

impl Collector {
    /// The callback's answer to "do you want this tensor's data?".
    fn wants(t: &sys::ggml_tensor) -> bool {
        if t.op != sys::GGML_OP_MUL_MAT || t.src[0].is_null() || t.src[1].is_null() {
            return false;
        }
        // SAFETY: a MUL_MAT node's two sources are live tensors during the callback.
        let (w, x) = unsafe { (&*t.src[0], &*t.src[1]) };
        x.ne[1] >= 16 && x.type_ == sys::GGML_TYPE_F32 && name_of(w).starts_with("blk.")
    }

    /// Add one MUL_MAT's activations.
    fn collect(&self, t: &sys::ggml_tensor) {
        // SAFETY: as in `wants`.
        let (w, x) = unsafe { (&*t.src[0], &*t.src[1]) };
        let ne0 = x.ne[0] as usize;
        let n_mat = (w.ne[2] * w.ne[3]).max(1) as usize;
        let rows = (x.ne[1] * x.ne[2] * x.ne[3]) as usize;
        let bytes = x.nb[3] * x.ne[3] as usize;
        let mut host = Vec::new();
        // SAFETY: CPU buffers are host memory; any other buffer is copied out first
        // (`bytes` covers the whole tensor, by its outermost stride).
        let data: *const u8 = unsafe {
            if x.buffer.is_null() || sys::ggml_backend_buffer_is_host(x.buffer) {
                x.data as *const u8
            } else {
                host.resize(bytes, 0u8);
                sys::ggml_backend_tensor_get(x, host.as_mut_ptr().cast(), 0, bytes);
                host.as_ptr()
            }
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = entries.entry(name_of(w)).or_insert_with(|| Entry {
            ne0,
            n_mat,
            sums: vec![0.0; ne0 * n_mat],
            counts: vec![0; n_mat],
        });
        if e.ne0 != ne0 || e.n_mat != n_mat {
            return;
        }
        for i3 in 0..x.ne[3] as usize {
            for i2 in 0..x.ne[2] as usize {
                let mat = (i3 % w.ne[3] as usize) * w.ne[2] as usize + (i2 % w.ne[2] as usize);
                for i1 in 0..x.ne[1] as usize {
                    let off = i1 * x.nb[1] + i2 * x.nb[2] + i3 * x.nb[3];
                    // SAFETY: the row lies inside the tensor's data; F32 elements, contiguous (nb[0] = 4).
                    let row = unsafe { std::slice::from_raw_parts(data.add(off).cast::<f32>(), ne0) };
                    for (s, &v) in e.sums[mat * ne0..(mat + 1) * ne0].iter_mut().zip(row) {
                        *s += f64::from(v) * f64::from(v);
                    }
                }
            }
        }
        for c in &mut e.counts {
            *c += (rows / n_mat) as u64;
        }
    }

    /// What was collected, by weight name.
    pub fn into_entries(self) -> BTreeMap<String, Entry> {
        self.entries.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// ggml's eval callback: `ask` first, then the data of the tensors we asked for.
unsafe extern "C" fn callback(t: *mut sys::ggml_tensor, ask: bool, data: *mut c_void) -> bool {
    // SAFETY: `t` is the live node being computed; `data` is the Collector
    // the evaluator was created with, alive for the whole evaluation.
    let (t, collector) = unsafe { (&*t, &*(data as *const Collector)) };
    if ask {
        return Collector::wants(t);
    }
    if Collector::wants(t) {
        collector.collect(t);
    }
    true
}

/// Evaluate `texts` with the model and collect its importance matrix.
pub fn collect(
    req: &ImatrixRequest,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Collector, ImatrixReport), EvalError> {
    let model = eval::load_model(&req.model)?;
    let n_ctx = req.n_ctx as usize;
    let texts = eval::load_texts(&model.vocab(), &req.texts, n_ctx)?;
    let collector = Box::new(Collector::default());
    let cb = (callback as _, &*collector as *const Collector as *mut c_void);
    let mut evaluator = Evaluator::new(model, req.n_ctx, req.threads, Some(cb))?;
    let all: usize = texts.iter().map(|t| t.n_chunks(n_ctx)).sum();
    let total = req.max_chunks.map_or(all, |m| m.min(all));
    let (mut chunks, mut tokens, mut per_text) = (0, 0, Vec::new());
    for text in &texts {
        let mut done = 0;
        for chunk in text.chunks(n_ctx).take(total - chunks) {
            // Logits for every token, so the last layer sees every row.
            evaluator.chunk(chunk, 0, |_, _| {})?;
            done += 1;
            chunks += 1;
            tokens += chunk.len();
            progress(chunks, total);
        }
        per_text.push((text.name.clone(), text.tokens.len(), done));
    }
    drop(evaluator);
    let entries = collector.entries.lock().map(|e| e.len()).unwrap_or(0);
    let report = ImatrixReport { entries, chunks, tokens, texts: per_text, output: req.output.clone() };
    Ok((*collector, report))
}

/// Write entries in llama.cpp's GGUF imatrix format.
pub fn write(
    entries: &BTreeMap<String, Entry>,
    datasets: Vec<String>,
    chunks: usize,
    n_ctx: u32,
    out: &Path,
) -> Result<(), EvalError> {
    let mut w = Writer::new();
    w.kv("general.type", Value::Str("imatrix".into()));
    w.kv("imatrix.datasets", Value::Array(Array::Str(datasets)));
    w.kv("imatrix.chunk_count", Value::U32(chunks as u32));
    w.kv("imatrix.chunk_size", Value::U32(n_ctx));
    for (name, e) in entries {
        w.tensor_f32(
            &format!("{name}.in_sum2"),
            &[e.ne0 as u64, e.n_mat as u64],
            e.sums.iter().map(|&s| s as f32).collect(),
        );
        w.tensor_f32(
            &format!("{name}.counts"),
            &[1, e.n_mat as u64],
            e.counts.iter().map(|&c| c as f32).collect(),
        );
    }
    let io = |e: std::io::Error| EvalError::Io(format!("{}: {e}", out.display()));
    let tmp = out.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    w.write(&mut f).map_err(io)?;
    let f = f.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)
}

/// Compute and write the importance matrix of `req`.
pub fn imatrix(req: &ImatrixRequest, progress: impl FnMut(usize, usize)) -> Result<ImatrixReport, EvalError> {
    let (collector, report) = collect(req, progress)?;
    let datasets =
        req.texts.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    write(&collector.into_entries(), datasets, report.chunks, req.n_ctx, &req.output)?;
    Ok(report)
}
