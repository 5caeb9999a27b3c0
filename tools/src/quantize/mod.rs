//! Quantizing a GGUF model with llama.cpp's own quantizer
//! (`llama_model_quantize`, the code behind `llama-quantize`), and the
//! release manifest that turns the result into the model spec the guest
//! downloads: quantize → manifest → spec → new guest build.
//!
//! The quantizer is one blocking C call with no progress callback and no
//! cancellation. Progress comes from its log: while it runs, a subscription
//! to the host's one llama.cpp log capture (`llama::log`) reads its
//! `[ n/ N] tensor` lines, and each tensor counts with its bytes in the input. Bad input is rejected before llama.cpp sees it (the
//! magic, the GGUF structure through the host's reader, tensor data inside
//! the file): llama.cpp turns
//! its own C++ exceptions into a return code, but an assertion inside ggml
//! would abort the process. llama.cpp writes to a hidden temporary file
//! beside the output, which is renamed only when everything (hash, manifest)
//! has succeeded; a failure removes it (a killed process leaves
//! `.NAME.quantizing`, which the next run overwrites).
//!
//! The result does not depend on the thread count: llama.cpp quantizes each
//! row on its own, so the same input and type give the same bytes.

mod imatrix_file;
mod manifest;

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use bittybot_host::gguf::Gguf;
use bittybot_host::hashing::{HashError, hash_file};
use bittybot_host::llama::{self, LLAMA_CPP_VERSION};
use llama_cpp_sys_2 as sys;

use imatrix_file::Imatrix;
use manifest::release_url;
pub use manifest::{Manifest, SpecJson, manifest_path, read_manifest};

/// The quantization types, by llama.cpp's names (as `llama-quantize` lists
/// them; `Q3_K`, `Q4_K` and `Q5_K` are its aliases of the `_M` types).
const TYPES: &[(&str, sys::llama_ftype)] = &[
    ("Q1_0", sys::LLAMA_FTYPE_MOSTLY_Q1_0),
    ("Q2_0", sys::LLAMA_FTYPE_MOSTLY_Q2_0),
    ("Q4_0", sys::LLAMA_FTYPE_MOSTLY_Q4_0),
    ("Q4_1", sys::LLAMA_FTYPE_MOSTLY_Q4_1),
    ("MXFP4_MOE", sys::LLAMA_FTYPE_MOSTLY_MXFP4_MOE),
    ("Q5_0", sys::LLAMA_FTYPE_MOSTLY_Q5_0),
    ("Q5_1", sys::LLAMA_FTYPE_MOSTLY_Q5_1),
    ("IQ2_XXS", sys::LLAMA_FTYPE_MOSTLY_IQ2_XXS),
    ("IQ2_XS", sys::LLAMA_FTYPE_MOSTLY_IQ2_XS),
    ("IQ2_S", sys::LLAMA_FTYPE_MOSTLY_IQ2_S),
    ("IQ2_M", sys::LLAMA_FTYPE_MOSTLY_IQ2_M),
    ("IQ1_S", sys::LLAMA_FTYPE_MOSTLY_IQ1_S),
    ("IQ1_M", sys::LLAMA_FTYPE_MOSTLY_IQ1_M),
    ("TQ1_0", sys::LLAMA_FTYPE_MOSTLY_TQ1_0),
    ("TQ2_0", sys::LLAMA_FTYPE_MOSTLY_TQ2_0),
    ("Q2_K", sys::LLAMA_FTYPE_MOSTLY_Q2_K),
    ("Q2_K_S", sys::LLAMA_FTYPE_MOSTLY_Q2_K_S),
    ("IQ3_XXS", sys::LLAMA_FTYPE_MOSTLY_IQ3_XXS),
    ("IQ3_S", sys::LLAMA_FTYPE_MOSTLY_IQ3_S),
    ("IQ3_M", sys::LLAMA_FTYPE_MOSTLY_IQ3_M),
    ("Q3_K", sys::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    ("IQ3_XS", sys::LLAMA_FTYPE_MOSTLY_IQ3_XS),
    ("Q3_K_S", sys::LLAMA_FTYPE_MOSTLY_Q3_K_S),
    ("Q3_K_M", sys::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    ("Q3_K_L", sys::LLAMA_FTYPE_MOSTLY_Q3_K_L),
    ("IQ4_NL", sys::LLAMA_FTYPE_MOSTLY_IQ4_NL),
    ("IQ4_XS", sys::LLAMA_FTYPE_MOSTLY_IQ4_XS),
    ("Q4_K", sys::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("Q4_K_S", sys::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    ("Q4_K_M", sys::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("Q5_K", sys::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("Q5_K_S", sys::LLAMA_FTYPE_MOSTLY_Q5_K_S),
    ("Q5_K_M", sys::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("Q6_K", sys::LLAMA_FTYPE_MOSTLY_Q6_K),
    ("Q8_0", sys::LLAMA_FTYPE_MOSTLY_Q8_0),
    ("F16", sys::LLAMA_FTYPE_MOSTLY_F16),
    ("BF16", sys::LLAMA_FTYPE_MOSTLY_BF16),
    ("F32", sys::LLAMA_FTYPE_ALL_F32),
];

/// A quantization type, by llama.cpp's name (`Q3_K_S`, `Q4_K_M`, `Q8_0`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantType {
    name: &'static str,
    ftype: sys::llama_ftype,
}

impl QuantType {
    /// Look a type up by name, in any case.
    pub fn parse(name: &str) -> Result<QuantType, QuantizeError> {
        TYPES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|&(name, ftype)| QuantType { name, ftype })
            .ok_or_else(|| QuantizeError::UnknownType {
                given: name.to_owned(),
                valid: Self::names().join(", "),
            })
    }

    /// llama.cpp's name, upper case (`Q3_K_S`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Every accepted name.
    pub fn names() -> Vec<&'static str> {
        TYPES.iter().map(|(n, _)| *n).collect()
    }
}

impl FromStr for QuantType {
    type Err = QuantizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QuantType::parse(s)
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Errors of quantizing and of manifests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantizeError {
    /// Not one of llama.cpp's quantization types.
    #[error("unknown quantization type `{given}`; valid types: {valid}")]
    UnknownType {
        /// What was asked for.
        given: String,
        /// The valid names, comma separated.
        valid: String,
    },
    /// The input cannot be read or is not a GGUF model.
    #[error("cannot quantize {}: {reason}", path.display())]
    Input {
        /// The input file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The output cannot be written there.
    #[error("cannot write {}: {reason}", path.display())]
    Output {
        /// The output file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The importance matrix cannot be used.
    #[error("cannot use the importance matrix {}: {reason}", path.display())]
    Imatrix {
        /// The imatrix file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The input holds quantized tensors and requantizing was not allowed.
    #[error("{} is already quantized ({reason}); allow requantizing (--allow-requantize) to quantize it again, at a loss of quality", path.display())]
    AlreadyQuantized {
        /// The input file.
        path: PathBuf,
        /// llama.cpp's words.
        reason: String,
    },
    /// The type needs an importance matrix.
    #[error("{qtype} needs an importance matrix (--imatrix): {reason}")]
    NeedsImatrix {
        /// The type.
        qtype: String,
        /// llama.cpp's words.
        reason: String,
    },
    /// llama.cpp's quantizer failed.
    #[error("llama.cpp could not quantize {}: {reason}", path.display())]
    Quantizer {
        /// The input file.
        path: PathBuf,
        /// llama.cpp's words.
        reason: String,
    },
    /// A release URL that is not http(s).
    #[error("`{0}` is not an http(s) URL")]
    Url(String),
    /// A spec needs a download URL and none was given or recorded.
    #[error("no download URL for {0}: give one (spec --url), or quantize with --url-base")]
    NoUrl(String),
    /// A manifest that cannot be read or used.
    #[error("manifest {}: {reason}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// llama.cpp's backend did not start.
    #[error("{0}")]
    Backend(String),
}

/// What a quantization is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Hashing the input (for the manifest).
    HashingInput,
    /// llama.cpp is quantizing.
    Quantizing,
    /// Hashing the output.
    HashingOutput,
}

/// The tensor llama.cpp is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorStep {
    /// 1-based.
    pub index: u32,
    /// Tensors in the model.
    pub count: u32,
    /// Its name (`blk.3.ffn_up.weight`).
    pub name: String,
}

/// Progress of a quantization: bytes of the current phase. While
/// quantizing, `done` counts the input bytes of the finished tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Bytes done.
    pub done: u64,
    /// Bytes in the phase.
    pub total: u64,
    /// While quantizing: the tensor being worked on.
    pub tensor: Option<TensorStep>,
}

/// What to quantize and how.
#[derive(Debug, Clone)]
pub struct QuantizeRequest {
    /// The GGUF model to quantize (usually F16 or BF16).
    pub input: PathBuf,
    /// The file to write; its manifest goes next to it ([`manifest_path`]).
    pub output: PathBuf,
    /// The type.
    pub qtype: QuantType,
    /// Threads; `None` or 0: all the cores this process may use.
    pub threads: Option<u32>,
    /// Importance matrix from `llama-imatrix` (GGUF or the legacy `.dat`).
    pub imatrix: Option<PathBuf>,
    /// Quantize tensors that are already quantized.
    pub allow_requantize: bool,
    /// Release folder URL: the manifest's URL is this + `/` + the file name.
    pub url_base: Option<String>,
}

impl QuantizeRequest {
    /// A request with the defaults: all cores, no imatrix, no requantizing, no URL.
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>, qtype: QuantType) -> Self {
        QuantizeRequest {
            input: input.into(),
            output: output.into(),
            qtype,
            threads: None,
            imatrix: None,
            allow_requantize: false,
            url_base: None,
        }
    }
}

/// A finished quantization.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The manifest (also written to `manifest_path`).
    pub manifest: Manifest,
    /// The quantized file.
    pub output: PathBuf,
    /// Where the manifest was written.
    pub manifest_path: PathBuf,
    /// Threads llama.cpp used.
    pub threads: u32,
    /// Seconds in llama.cpp's quantizer (without the hashing).
    pub quantize_s: f64,
}

/// What the quantizer's log said.
#[derive(Debug)]
enum LogEvent {
    /// `[ n/ N] name - …`: the quantizer started on a tensor.
    Tensor(TensorStep),
    /// An error line.
    Error(String),
}

/// The quantizer's `[   3/ 290]   blk.0.attn_q.weight - [...], type = f16, `
/// and error lines.
fn parse_log_line(level: sys::ggml_log_level, line: &str) -> Option<LogEvent> {
    if level == sys::GGML_LOG_LEVEL_ERROR {
        let l = line.trim();
        return (!l.is_empty() && !l.chars().all(|c| c == '=')).then(|| LogEvent::Error(l.to_owned()));
    }
    let rest = line.trim_start().strip_prefix('[')?;
    let (counts, rest) = rest.split_once(']')?;
    let (index, count) = counts.split_once('/')?;
    let index = index.trim().parse().ok()?;
    let count = count.trim().parse().ok()?;
    let (name, _) = rest.split_once(" - ")?;
    let name = name.trim();
    (!name.is_empty()).then(|| LogEvent::Tensor(TensorStep { index, count, name: name.to_owned() }))
}

/// The part of llama.cpp's error that says why: the last line, without the
/// function name in front.
fn reason(errors: &[String], fallback: &str) -> String {
    let Some(last) = errors.iter().rev().find(|l| !l.starts_with("ERROR:")).or(errors.last()) else {
        return fallback.to_owned();
    };
    let last = last.strip_prefix("llama_model_quantize: failed to quantize: ").unwrap_or(last);
    match last.split_once(": ") {
        Some((func, why)) if !func.contains(' ') => why.trim().to_owned(),
        _ => last.trim().to_owned(),
    }
}

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// ggml's type name (`f16`, `q3_K`, …).
    pub type_name: String,
    /// Whether the type is a quantized one.
    pub quantized: bool,
    /// Dimensions, innermost first (ggml's `ne`).
    pub dims: Vec<i64>,
    /// Where its data starts in the file.
    pub offset: u64,
    /// Its data in bytes.
    pub size: u64,
}

/// The structure of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufInfo {
    /// `general.architecture`, if present.
    pub architecture: Option<String>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// The file's size.
    pub file_size: u64,
}

fn c_path(path: &Path) -> Result<CString, String> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| "the path contains a NUL byte".to_owned())
}

fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated static type names.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Read a GGUF file's structure (no tensor data) with the host's reader,
/// checking what llama.cpp would otherwise find out the hard way: the
/// magic, the metadata, and that every tensor's data lies inside the file.
pub fn inspect(path: &Path) -> Result<GgufInfo, QuantizeError> {
    let fail = |reason: String| QuantizeError::Input { path: path.to_owned(), reason };
    let mut file = std::fs::File::open(path).map_err(|e| {
        fail(if e.kind() == std::io::ErrorKind::NotFound { "no such file".into() } else { e.to_string() })
    })?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() {
        return Err(fail("file too short to be GGUF".into()));
    }
    if &magic != b"GGUF" {
        return Err(fail(format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")")));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let gguf = Gguf::read(&mut std::io::BufReader::new(file), meta.len())
        .map_err(|e| fail(format!("not a valid GGUF file: {e}")))?;
    let tensors = gguf
        .tensors
        .iter()
        .map(|t| TensorInfo {
            name: t.name.clone(),
            // SAFETY: plain lookups in ggml's static type table; the reader
            // accepted only known type ids.
            type_name: c_str(unsafe { sys::ggml_type_name(t.ggml_type as sys::ggml_type) }),
            // SAFETY: as above.
            quantized: unsafe { sys::ggml_is_quantized(t.ggml_type as sys::ggml_type) },
            // ggml's `ne`: always four, missing ones 1.
            dims: (0..4).map(|i| t.dims.get(i).map_or(1, |&d| d as i64)).collect(),
            offset: t.offset,
            size: t.size,
        })
        .collect();
    Ok(GgufInfo { architecture: gguf.architecture().map(str::to_owned), tensors, file_size: meta.len() })
}

/// A metadata override as `llama-quantize` records its imatrix.
fn kv_override(key: &str, value: KvValue) -> sys::llama_model_kv_override {
    // SAFETY: the struct is plain data (integers, char arrays, a union of
    // those); all-zero is a valid value of it.
    let mut o: sys::llama_model_kv_override = unsafe { std::mem::zeroed() };
    copy_c(&mut o.key, key);
    match value {
        KvValue::Str(s) => {
            o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_STR;
            // SAFETY: writing the union's string member, which the tag selects.
            copy_c(unsafe { &mut o.__bindgen_anon_1.val_str }, s);
        }
        KvValue::Int(i) => {
            o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_INT;
            o.__bindgen_anon_1.val_i64 = i;
        }
    }
    o
}

enum KvValue<'a> {
    Str(&'a str),
    Int(i64),
}

/// Copy into a fixed C buffer, truncated, NUL-terminated.
fn copy_c(dst: &mut [c_char; 128], src: &str) {
    let bytes = src.as_bytes();
    let n = bytes.len().min(dst.len() - 1);
    for (d, &s) in dst.iter_mut().zip(&bytes[..n]) {
        *d = s as c_char;
    }
    dst[n] = 0;
}

// ---------------------------------------------------------------------------
// The quantization.

/// Files removed when dropped unless kept: a failure leaves nothing behind.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Where the output goes, checked before any work is done.
struct Target {
    output: PathBuf,
    file_name: String,
    folder: PathBuf,
    temp: PathBuf,
    manifest: PathBuf,
    manifest_temp: PathBuf,
}

fn target(input: &Path, output: &Path) -> Result<Target, QuantizeError> {
    let fail = |reason: String| QuantizeError::Output { path: output.to_owned(), reason };
    let Some(name) = output.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
        return Err(fail("not a file name (or not UTF-8)".into()));
    };
    let folder = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&folder) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(fail(format!("{} is not a folder", folder.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!("the folder {} does not exist", folder.display())));
        }
        Err(e) => return Err(fail(format!("{}: {e}", folder.display()))),
    }
    if output.is_dir() {
        return Err(fail("it is a folder".into()));
    }
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize())
        && a == b
    {
        return Err(fail("it is the input file".into()));
    }
    let manifest = manifest_path(output);
    Ok(Target {
        output: output.to_owned(),
        temp: folder.join(format!(".{name}.quantizing")),
        manifest_temp: folder
            .join(format!(".{}.tmp", manifest.file_name().unwrap_or_default().to_string_lossy())),
        manifest,
        file_name: name,
        folder,
    })
}

fn hash(path: &Path, phase: Phase, progress: &mut impl FnMut(&Progress)) -> Result<String, HashError> {
    let mut last = Instant::now() - Duration::from_secs(1);
    hash_file(path, |done, total| {
        if last.elapsed() >= Duration::from_millis(100) || done == total {
            last = Instant::now();
            progress(&Progress { phase, done, total, tensor: None });
        }
        true
    })
}

/// The parameters of one `llama_model_quantize` call, owned.
struct Call {
    input: CString,
    output: CString,
    ftype: sys::llama_ftype,
    threads: u32,
    allow_requantize: bool,
    imatrix: Option<Imatrix>,
    overrides: Vec<sys::llama_model_kv_override>,
}

impl Call {
    /// Run llama.cpp's quantizer; 0 is success.
    fn run(&self) -> u32 {
        let imatrix: Option<Vec<sys::llama_model_imatrix_data>> = self.imatrix.as_ref().map(|m| {
            m.entries
                .iter()
                .map(|(name, values)| sys::llama_model_imatrix_data {
                    name: name.as_ptr(),
                    data: values.as_ptr(),
                    size: values.len(),
                })
                .chain(std::iter::once(sys::llama_model_imatrix_data {
                    name: std::ptr::null(),
                    data: std::ptr::null(),
                    size: 0,
                }))
                .collect()
        });
        // SAFETY: returns a plain struct by value.
        let mut params = unsafe { sys::llama_model_quantize_default_params() };
        params.nthread = self.threads as i32;
        params.ftype = self.ftype;
        params.allow_requantize = self.allow_requantize;
        if let Some(m) = &imatrix {
            params.imatrix = m.as_ptr();
        }
        if !self.overrides.is_empty() {
            params.kv_overrides = self.overrides.as_ptr();
        }
        // SAFETY: the paths are valid C strings; the imatrix array ends with
        // a null name and the override list with an empty key (llama.cpp's
        // terminators), and both outlive the call. llama.cpp catches its own
        // exceptions and returns non-zero.
        unsafe { sys::llama_model_quantize(self.input.as_ptr(), self.output.as_ptr(), &params) }
    }
}

/// Quantize `request.input` into `request.output` with llama.cpp's
/// quantizer, then hash the result and write its release manifest next to
/// it. `progress` is called on this thread, a few times a second at most
/// while hashing and once per tensor while quantizing. Only one
/// quantization runs at a time in a process (llama.cpp has one log).
pub fn quantize(
    request: &QuantizeRequest,
    mut progress: impl FnMut(&Progress),
) -> Result<Quantized, QuantizeError> {
    let input = request.input.as_path();
    let input_fail = |reason: String| QuantizeError::Input { path: input.to_owned(), reason };
    let output_fail = |reason: String| QuantizeError::Output { path: request.output.clone(), reason };

    // Everything that can be checked cheaply, before any long work.
    llama::backend();
    let log = llama::log::subscribe()
        .ok_or_else(|| QuantizeError::Backend("another tool is reading llama.cpp's log".into()))?;
    let info = inspect(input)?;
    if info.tensors.is_empty() {
        return Err(input_fail("it holds no tensors".into()));
    }
    if info.architecture.is_none() {
        return Err(input_fail("it has no `general.architecture`: not a llama.cpp model".into()));
    }
    let target = target(input, &request.output)?;
    let url = request.url_base.as_deref().map(|b| release_url(b, &target.file_name)).transpose()?;
    let imatrix = request.imatrix.as_deref().map(imatrix_file::load).transpose()?;
    let imatrix_datasets = imatrix.as_ref().map(|m| m.datasets.clone()).unwrap_or_default();
    let threads = match request.threads {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
    };
    // Claim the temporary file now: an unwritable folder fails here, not
    // after an hour of work.
    let mut scratch = Scratch(vec![target.temp.clone()]);
    std::fs::File::create(&target.temp)
        .map_err(|e| output_fail(format!("{}: {e}", target.temp.display())))?;

    progress(&Progress { phase: Phase::HashingInput, done: 0, total: info.file_size, tensor: None });
    let source_sha256 =
        hash(input, Phase::HashingInput, &mut progress).map_err(|e| input_fail(e.to_string()))?;
    let imatrix_sha256 = match &request.imatrix {
        Some(p) => Some(
            hash_file(p, |_, _| true)
                .map_err(|e| QuantizeError::Imatrix { path: p.clone(), reason: e.to_string() })?,
        ),
        None => None,
    };

    let mut overrides = Vec::new();
    if let (Some(m), Some(path)) = (&imatrix, &request.imatrix) {
        // What `llama-quantize` records (the file by name, not by local path).
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        overrides.push(kv_override("quantize.imatrix.file", KvValue::Str(&name)));
        if let Some(d) = m.datasets.first() {
            overrides.push(kv_override("quantize.imatrix.dataset", KvValue::Str(d)));
        }
        overrides.push(kv_override("quantize.imatrix.entries_count", KvValue::Int(m.entries.len() as i64)));
        if m.chunks > 0 {
            overrides.push(kv_override("quantize.imatrix.chunks_count", KvValue::Int(i64::from(m.chunks))));
        }
        // SAFETY: see `kv_override`; an all-zero entry (empty key) ends the list.
        overrides.push(unsafe { std::mem::zeroed() });
    }
    let call = Call {
        input: c_path(input).map_err(input_fail)?,
        output: c_path(&target.temp).map_err(output_fail)?,
        ftype: request.qtype.ftype,
        threads,
        allow_requantize: request.allow_requantize,
        imatrix,
        overrides,
    };

    // The quantizer blocks; it runs on its own thread while this one turns
    // its log lines into progress.
    let sizes: HashMap<&str, u64> = info.tensors.iter().map(|t| (t.name.as_str(), t.size)).collect();
    let total: u64 = info.tensors.iter().map(|t| t.size).sum();
    let mut done = 0u64;
    let mut current: Option<TensorStep> = None;
    let mut errors = Vec::new();
    let _ = log.lines.try_iter().count(); // anything logged meanwhile
    let started = Instant::now();
    progress(&Progress { phase: Phase::Quantizing, done, total, tensor: None });
    let status = std::thread::scope(|s| {
        let worker = s.spawn(|| call.run());
        loop {
            let finished = worker.is_finished();
            for event in log.lines.try_iter().filter_map(|l| parse_log_line(l.level, &l.text)) {
                match event {
                    LogEvent::Tensor(step) => {
                        if let Some(prev) = current.take() {
                            done += sizes.get(prev.name.as_str()).copied().unwrap_or(0);
                        }
                        progress(&Progress {
                            phase: Phase::Quantizing,
                            done,
                            total,
                            tensor: Some(step.clone()),
                        });
                        current = Some(step);
                    }
                    LogEvent::Error(line) => errors.push(line),
                }
            }
            if finished {
                break worker.join();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .map_err(|_| QuantizeError::Quantizer {
        path: input.to_owned(),
        reason: "the quantizer thread panicked".into(),
    })?;
    let quantize_s = started.elapsed().as_secs_f64();
    drop(log);
    if status != 0 {
        let why = reason(&errors, "it gave no reason");
        return Err(if why.contains("requantizing from type") {
            QuantizeError::AlreadyQuantized { path: input.to_owned(), reason: why }
        } else if why.contains("requires an imatrix") || why.contains("importance matrix") {
            QuantizeError::NeedsImatrix { qtype: request.qtype.name.to_owned(), reason: why }
        } else {
            QuantizeError::Quantizer { path: input.to_owned(), reason: why }
        });
    }
    progress(&Progress { phase: Phase::Quantizing, done: total, total, tensor: None });

    // Durable before it is published.
    let io = |e: std::io::Error| output_fail(e.to_string());
    std::fs::File::open(&target.temp).and_then(|f| f.sync_all()).map_err(io)?;
    let sha256 =
        hash(&target.temp, Phase::HashingOutput, &mut progress).map_err(|e| output_fail(e.to_string()))?;
    let size = std::fs::metadata(&target.temp).map_err(io)?.len();
    let manifest = Manifest {
        file_name: target.file_name.clone(),
        size,
        sha256,
        quantization: request.qtype.name.to_owned(),
        source_file_name: input.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        source_size: info.file_size,
        source_sha256,
        imatrix_sha256,
        calibration: imatrix_datasets,
        quality: None,
        llama_cpp_version: LLAMA_CPP_VERSION.to_owned(),
        url,
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| output_fail(e.to_string()))?;
    scratch.0.push(target.manifest_temp.clone());
    let write_manifest = |path: &Path| -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        f.write_all(json.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    write_manifest(&target.manifest_temp)
        .map_err(|e| output_fail(format!("{}: {e}", target.manifest.display())))?;

    std::fs::rename(&target.temp, &target.output).map_err(io)?;
    scratch.0 = vec![target.manifest_temp.clone(), target.output.clone()];
    std::fs::rename(&target.manifest_temp, &target.manifest).map_err(io)?;
    scratch.0.clear();
    if let Ok(dir) = std::fs::File::open(&target.folder) {
        let _ = dir.sync_all();
    }
    Ok(Quantized { manifest, output: target.output, manifest_path: target.manifest, threads, quantize_s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_llama_cpps_in_any_case() {
        assert_eq!(QuantType::parse("q3_k_s").unwrap().ftype, sys::LLAMA_FTYPE_MOSTLY_Q3_K_S);
        assert_eq!(QuantType::parse("Q4_K").unwrap().ftype, sys::LLAMA_FTYPE_MOSTLY_Q4_K_M);
        assert_eq!("bf16".parse::<QuantType>().unwrap().name(), "BF16");
        let err = QuantType::parse("Q3_K_XL").unwrap_err().to_string();
        assert!(err.contains("`Q3_K_XL`") && err.contains("Q3_K_S, Q3_K_M") && err.contains("F16"), "{err}");
    }

    #[test]
    fn quantizer_log_lines() {
        let line =
            "[  12/ 290]                blk.1.ffn_up.weight - [ 2048, 11008,     1,     1], type =    f16, ";
        match parse_log_line(sys::GGML_LOG_LEVEL_INFO, line) {
            Some(LogEvent::Tensor(t)) => {
                assert_eq!(t, TensorStep { index: 12, count: 290, name: "blk.1.ffn_up.weight".into() })
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_log_line(sys::GGML_LOG_LEVEL_INFO, "converting to q3_K .. ").is_none());
        assert!(parse_log_line(sys::GGML_LOG_LEVEL_INFO, "[x] not - a tensor").is_none());
        let errors = vec![
            "llama_model_quantize: failed to quantize: requantizing from type q3_K is disabled".to_owned(),
        ];
        assert_eq!(reason(&errors, "-"), "requantizing from type q3_K is disabled");
        let errors = vec!["gguf_init_from_file_impl: failed to read tensor info".to_owned()];
        assert_eq!(reason(&errors, "-"), "failed to read tensor info");
        assert_eq!(reason(&[], "none"), "none");
    }
}
