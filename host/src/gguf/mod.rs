//! GGUF files read by our own code before llama.cpp sees them.
//!
//! llama.cpp's reader returns NULL for most bad input, but a few inputs
//! get past it into code that aborts the process (`GGML_ASSERT`) or throws
//! where nothing catches: a `block_count` of 0 or above 512, duplicate token
//! strings, an unknown RoPE scaling type, metadata arrays that blow up in
//! memory, an `add_bos` model whose BOS id resolves to -1 (checklist in the
//! project notes, from llama.cpp's `gguf.cpp`, `llama-model-loader.cpp`,
//! `llama-model.cpp` and `llama-vocab.cpp`). A model file comes from a
//! download or from the guest through `storage.write`, so the host reads
//! the whole header and metadata itself, bounded by the file's size and by
//! memory budgets, and checks every rule below ([`Gguf::read`] for the
//! structure, [`Gguf::validate_model`] for the model) before it hands the
//! path to llama.cpp.
//!
//! No GGUF crate is used: the ones on crates.io either map the whole file
//! or read without the limits above, and the format is small (a header,
//! typed key-values, tensor infos). Type sizes come from ggml itself, so a
//! tensor's byte size is the one llama.cpp will compute.
//!
//! The [`Writer`] writes the small files the tools produce (an importance
//! matrix: F32 tensors and plain metadata).

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use llama_cpp_sys_2 as sys;

mod source;
mod validate;
use source::Src;
use validate::per_layer;
#[cfg(test)]
mod tests;
mod writer;

pub use writer::Writer;

/// The only GGUF versions llama.cpp reads.
const VERSIONS: [u32; 2] = [2, 3];
/// Longest string llama.cpp accepts (`GGUF_MAX_STRING_LENGTH`, 1 GiB), and
/// the most array elements (`GGUF_MAX_ARRAY_ELEMENTS`).
const MAX_STRING: u64 = 1 << 30;
const MAX_ARRAY: u64 = 1 << 30;
/// Our own caps: far above any real model (Tiny Aya: ~40 keys, ~300
/// tensors, a 262k-token vocabulary with its merges), far below anything
/// that could exhaust memory.
const MAX_KEYS: u64 = 1 << 16;
const MAX_TENSORS: u64 = 1 << 16;
/// Budget for the metadata as held in memory: each string costs its bytes
/// plus 32 (llama.cpp copies arrays into `std::vector<std::string>`, where
/// an empty string of 8 file bytes takes 32 bytes of RAM).
const METADATA_BUDGET: u64 = 256 << 20;
/// ggml's limit on tensor names (`GGML_MAX_NAME`, NUL included) and dimensions.
const MAX_NAME: usize = 63;
const MAX_DIMS: u32 = 4;
/// llama.cpp's limit on layers (`GGML_ASSERT(n_layer <= 512)`).
const MAX_LAYERS: u64 = 512;
/// Default data alignment.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's F32 type id.
pub const GGML_TYPE_F32: u32 = 0;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array (GGUF forbids arrays of arrays).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Integer elements widened, for arrays of integers (else `None`).
    fn ints(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            _ => return None,
        })
    }

    fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "u8",
            Array::I8(_) => "i8",
            Array::U16(_) => "u16",
            Array::I16(_) => "i16",
            Array::U32(_) => "u32",
            Array::I32(_) => "i32",
            Array::F32(_) => "f32",
            Array::Bool(_) => "bool",
            Array::Str(_) => "string",
            Array::U64(_) => "u64",
            Array::I64(_) => "i64",
            Array::F64(_) => "f64",
        }
    }
}

impl Value {
    /// The type's name, for messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::F32(_) => "f32".into(),
            Value::Bool(_) => "bool".into(),
            Value::Str(_) => "string".into(),
            Value::Array(a) => format!("array of {}", a.type_name()),
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F64(_) => "f64".into(),
        }
    }

    /// GGUF's type code.
    fn code(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

/// One tensor's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Dimensions, innermost first (ggml's `ne`).
    pub dims: Vec<u64>,
    /// ggml's type id.
    pub ggml_type: u32,
    /// Where its data starts, from the start of the file.
    pub offset: u64,
    /// Its data in bytes.
    pub size: u64,
}

/// A GGUF file's header, metadata and tensor infos (no tensor data).
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    /// Format version.
    pub version: u32,
    /// Data alignment.
    pub alignment: u64,
    /// The key-values, in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where the tensor data starts.
    pub data_offset: u64,
    /// The file's size.
    pub file_size: u64,
}

/// What a model's metadata says about its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    /// `general.architecture`.
    pub architecture: String,
    /// The file's size.
    pub file_size: u64,
    /// Layers.
    pub n_layer: u32,
    /// Embedding width.
    pub n_embd: u32,
    /// Attention heads (the largest, where layers differ).
    pub n_head: u32,
    /// Key-value heads (the largest, where layers differ).
    pub n_head_kv: u32,
    /// Width of one head's key.
    pub head_dim: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Training context.
    pub n_ctx_train: u32,
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file")]
    NotGguf,
    /// The file ends before what its header declares.
    #[error("the file is truncated: {0}")]
    Truncated(String),
    /// The structure breaks the format's rules.
    #[error("malformed GGUF: {0}")]
    Malformed(String),
    /// Well formed, but not a model this host runs.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// Reading failed.
    #[error("cannot read the file: {0}")]
    Io(String),
}

fn malformed(s: impl Into<String>) -> GgufError {
    GgufError::Malformed(s.into())
}

fn pad(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v / align * align)
}

/// A tensor's byte size by ggml's type traits, or why it has none.
fn tensor_bytes(ggml_type: u32, dims: &[u64]) -> Result<u64, String> {
    if ggml_type >= sys::GGML_TYPE_COUNT as u32 {
        return Err(format!("type {ggml_type} is not a ggml type"));
    }
    // SAFETY: the type is in range, so ggml's trait table has an entry.
    let (blck, size) = unsafe {
        (sys::ggml_blck_size(ggml_type as sys::ggml_type), sys::ggml_type_size(ggml_type as sys::ggml_type))
    };
    if blck <= 0 {
        return Err(format!("type {ggml_type} was removed from ggml"));
    }
    let blck = blck as u64;
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % blck != 0 {
        return Err(format!("a row of {ne0} is not a whole number of {blck}-element blocks"));
    }
    let elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
    elements.ok_or("the element count overflows")?;
    dims.iter()
        .skip(1)
        .try_fold((ne0 / blck).checked_mul(size as u64), |a, &d| a.map(|a| a.checked_mul(d)))
        .flatten()
        .ok_or_else(|| "the byte size overflows".to_owned())
}

impl Gguf {
    /// Read a file's header, metadata and tensor infos from `r`, positioned
    /// at its start; `size` is the file's size, and no read goes past it.
    pub fn read(r: &mut impl Read, size: u64) -> Result<Gguf, GgufError> {
        let mut src = Src::new(r, size);
        if size < 4 || src.fixed::<4>("the magic")? != *b"GGUF" {
            return Err(GgufError::NotGguf);
        }
        let version = src.u32("the version")?;
        if !VERSIONS.contains(&version) {
            return Err(GgufError::Unsupported(format!("GGUF version {version} (llama.cpp reads 2 and 3)")));
        }
        let n_tensors = src.u64("the tensor count")?;
        let n_kv = src.u64("the key count")?;
        if n_tensors > MAX_TENSORS || n_kv > MAX_KEYS {
            return Err(malformed(format!("{n_tensors} tensors and {n_kv} keys")));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::new();
        for i in 0..n_kv {
            let key = src.string(&format!("key {i}"))?;
            if key.is_empty() || key.contains('\0') {
                return Err(malformed(format!("key {i} is empty or holds NUL")));
            }
            if !keys.insert(key.clone()) {
                return Err(malformed(format!("key `{key}` appears twice")));
            }
            let code = src.u32(&key)?;
            let value = if code == 9 { Value::Array(src.array(&key)?) } else { src.scalar(code, &key)? };
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(malformed(format!("general.alignment {v:?} is not a power of two (u32)")));
            }
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::new();
        let mut next = 0u64;
        for i in 0..n_tensors {
            let name = src.string(&format!("tensor {i}'s name"))?;
            if name.len() > MAX_NAME || name.contains('\0') {
                return Err(malformed(format!(
                    "tensor name `{name}` is longer than {MAX_NAME} bytes or holds NUL"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(malformed(format!("tensor `{name}` appears twice")));
            }
            let n_dims = src.u32(&name)?;
            if n_dims > MAX_DIMS {
                return Err(malformed(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| src.u64(&name)).collect::<Result<Vec<_>, _>>()?;
            let ggml_type = src.u32(&name)?;
            let offset = src.u64(&name)?;
            let bytes =
                tensor_bytes(ggml_type, &dims).map_err(|e| malformed(format!("tensor `{name}`: {e}")))?;
            if offset != next {
                return Err(malformed(format!(
                    "tensor `{name}` starts at {offset}, not at {next} where the previous one ends"
                )));
            }
            next = pad(
                offset.checked_add(bytes).ok_or_else(|| malformed("tensor offsets overflow"))?,
                alignment,
            )
            .ok_or_else(|| malformed("tensor offsets overflow"))?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset, size: bytes });
        }
        let data_offset = pad(src.pos(), alignment).ok_or_else(|| malformed("the data offset overflows"))?;
        for t in &mut tensors {
            t.offset =
                data_offset.checked_add(t.offset).ok_or_else(|| malformed("tensor offsets overflow"))?;
            if t.offset.checked_add(t.size).is_none_or(|end| end > size) {
                return Err(GgufError::Truncated(format!(
                    "tensor `{}` ends at {}, the file has {size} bytes",
                    t.name,
                    t.offset.saturating_add(t.size)
                )));
            }
        }
        Ok(Gguf { version, alignment, metadata, tensors, data_offset, file_size: size })
    }

    /// Read a file.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let file = std::fs::File::open(path).map_err(|e| GgufError::Io(e.to_string()))?;
        let size = file.metadata().map_err(|e| GgufError::Io(e.to_string()))?.len();
        Gguf::read(&mut std::io::BufReader::new(file), size)
    }

    /// A key's value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string value.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer scalar, whatever its width.
    pub fn uint(&self, key: &str) -> Option<u64> {
        match *self.get(key)? {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An array's length.
    pub fn array_len(&self, key: &str) -> Option<usize> {
        match self.get(key)? {
            Value::Array(a) => Some(a.len()),
            _ => None,
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.str("general.architecture")
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The model's shape from its metadata (checked by [`Gguf::validate_model`]).
    pub fn shape(&self) -> Result<ModelShape, GgufError> {
        let arch =
            self.architecture().ok_or_else(|| GgufError::Unsupported("no general.architecture".into()))?;
        let key = |k: &str| format!("{arch}.{k}");
        let need = |k: &str| -> Result<u32, GgufError> {
            match self.get(&key(k)) {
                Some(Value::U32(v)) => Ok(*v),
                Some(v) => Err(GgufError::Unsupported(format!("{} is {}, not u32", key(k), v.type_name()))),
                None => Err(GgufError::Unsupported(format!("no {}", key(k)))),
            }
        };
        let n_layer = need("block_count")?;
        // Before anything is sized by it (the per-layer lists below).
        if n_layer == 0 || u64::from(n_layer) > MAX_LAYERS {
            return Err(GgufError::Unsupported(format!("{n_layer} layers (1 to {MAX_LAYERS})")));
        }
        let n_embd = need("embedding_length")?;
        let n_ctx_train = need("context_length")?;
        let n_head = per_layer(self, &key("attention.head_count"), n_layer)?
            .map_or(0, |v| v.into_iter().max().unwrap_or(0));
        let n_head_kv = per_layer(self, &key("attention.head_count_kv"), n_layer)?
            .map_or(n_head, |v| v.into_iter().max().unwrap_or(0));
        let head_dim = match self.get(&key("attention.key_length")) {
            Some(Value::U32(v)) => *v,
            _ => n_embd.checked_div(n_head).unwrap_or(0),
        };
        let n_vocab = self.array_len("tokenizer.ggml.tokens").unwrap_or(0) as u32;
        Ok(ModelShape {
            architecture: arch.to_owned(),
            file_size: self.file_size,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
        })
    }
}
