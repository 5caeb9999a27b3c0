//! The shape of a model from its GGUF header, without loading it: what the
//! guest's memory-fit policy needs before it picks a context size.
//!
//! Uses llama.cpp's own GGUF reader (`gguf_init_from_file` with `no_alloc`,
//! which reads only the header). Every value's type is checked before it is
//! read: llama.cpp asserts (aborts) on a type mismatch.

use std::ffi::{CStr, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;

/// What the memory estimate needs to know about a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    /// `general.architecture`.
    pub architecture: String,
    /// File size in bytes.
    pub file_size: u64,
    /// Layers.
    pub n_layer: u32,
    /// Embedding width.
    pub n_embd: u32,
    /// Attention heads.
    pub n_head: u32,
    /// KV heads.
    pub n_head_kv: u32,
    /// Key/value head size.
    pub head_dim: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Training context.
    pub n_ctx_train: u32,
}

struct Gguf(*mut sys::gguf_context);

impl Drop for Gguf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from gguf_init_from_file, is non-null and freed once.
        unsafe { sys::gguf_free(self.0) }
    }
}

impl Gguf {
    fn key(&self, key: &str) -> Option<i64> {
        let k = CString::new(key).ok()?;
        // SAFETY: valid context and NUL-terminated key.
        let id = unsafe { sys::gguf_find_key(self.0, k.as_ptr()) };
        (id >= 0).then_some(id)
    }

    fn uint(&self, key: &str) -> Option<u64> {
        let id = self.key(key)?;
        // SAFETY: `id` is a valid key of this context; each getter is called
        // only for the type gguf reports, as llama.cpp requires.
        unsafe {
            Some(match sys::gguf_get_kv_type(self.0, id) {
                sys::GGUF_TYPE_UINT8 => sys::gguf_get_val_u8(self.0, id) as u64,
                sys::GGUF_TYPE_UINT16 => sys::gguf_get_val_u16(self.0, id) as u64,
                sys::GGUF_TYPE_UINT32 => sys::gguf_get_val_u32(self.0, id) as u64,
                sys::GGUF_TYPE_INT32 => u64::try_from(sys::gguf_get_val_i32(self.0, id)).ok()?,
                sys::GGUF_TYPE_UINT64 => sys::gguf_get_val_u64(self.0, id),
                sys::GGUF_TYPE_INT64 => u64::try_from(sys::gguf_get_val_i64(self.0, id)).ok()?,
                sys::GGUF_TYPE_ARRAY => return self.max_int_array(id),
                _ => return None,
            })
        }
    }

    /// Per-layer values (e.g. KV heads of some models): the largest.
    fn max_int_array(&self, id: i64) -> Option<u64> {
        // SAFETY: `id` names an array; its data has `n` elements of the reported type.
        unsafe {
            let n = sys::gguf_get_arr_n(self.0, id);
            let data = sys::gguf_get_arr_data(self.0, id);
            if data.is_null() || n == 0 {
                return None;
            }
            match sys::gguf_get_arr_type(self.0, id) {
                sys::GGUF_TYPE_UINT32 | sys::GGUF_TYPE_INT32 => {
                    let s = std::slice::from_raw_parts(data.cast::<i32>(), n);
                    s.iter().map(|&v| v.max(0) as u64).max()
                }
                _ => None,
            }
        }
    }

    fn string(&self, key: &str) -> Option<String> {
        let id = self.key(key)?;
        // SAFETY: the type is checked first; gguf owns the returned string.
        unsafe {
            if sys::gguf_get_kv_type(self.0, id) != sys::GGUF_TYPE_STRING {
                return None;
            }
            let p = sys::gguf_get_val_str(self.0, id);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }

    fn array_len(&self, key: &str) -> Option<u64> {
        let id = self.key(key)?;
        // SAFETY: the type is checked first.
        unsafe {
            (sys::gguf_get_kv_type(self.0, id) == sys::GGUF_TYPE_ARRAY)
                .then(|| sys::gguf_get_arr_n(self.0, id) as u64)
        }
    }
}

/// Read a model's shape from its GGUF header.
pub fn inspect(path: &Path) -> Result<ModelShape, String> {
    crate::llama::check_gguf_header(path)?;
    let file_size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // Route gguf's error messages into the captured log.
    crate::llama::backend().map_err(|e| e.to_string())?;
    crate::llama::log::clear();
    let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
    // SAFETY: a valid path; with no_alloc and a null ctx, gguf reads only the header.
    let ctx = unsafe { sys::gguf_init_from_file(c.as_ptr(), params) };
    if ctx.is_null() {
        return Err(crate::llama::log::reason().unwrap_or_else(|| "not a readable GGUF file".into()));
    }
    let g = Gguf(ctx);
    let arch = g.string("general.architecture").ok_or("no general.architecture")?;
    let need = |k: &str| g.uint(&format!("{arch}.{k}")).ok_or_else(|| format!("no {arch}.{k}"));
    let n_embd = need("embedding_length")? as u32;
    let n_head = need("attention.head_count")? as u32;
    let n_head_kv = g.uint(&format!("{arch}.attention.head_count_kv")).map_or(n_head, |v| v as u32);
    let head_dim =
        g.uint(&format!("{arch}.attention.key_length")).map_or(n_embd / n_head.max(1), |v| v as u32);
    let n_vocab = g
        .uint(&format!("{arch}.vocab_size"))
        .or_else(|| g.array_len("tokenizer.ggml.tokens"))
        .ok_or("no vocabulary size")? as u32;
    Ok(ModelShape {
        file_size,
        n_layer: need("block_count")? as u32,
        n_embd,
        n_head,
        n_head_kv,
        head_dim,
        n_vocab,
        n_ctx_train: need("context_length")? as u32,
        architecture: arch,
    })
}
