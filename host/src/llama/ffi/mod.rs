//! A small safe layer over llama.cpp's C API (`llama-cpp-sys-2`): model,
//! vocabulary, context, batch and sampler chain, with exactly the calls
//! BittyBot makes.
//!
//! Why not the `llama-cpp-2` crate: its raw pointers are private, so calls
//! cannot be routed through the exception-catching shim (`shim.cpp`), the
//! eval callback the importance matrix needs cannot be set, and it pulls in
//! llama.cpp's `common` library, which nothing here uses (minutes of build
//! on every target). Every call that can throw goes through `shim.cpp`;
//! every argument that llama.cpp would assert on is checked by the caller
//! (`context.rs`, `sampler.rs`) before it gets here.

use std::ffi::{CStr, CString, c_char, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

pub use sys::llama_token as Token;

mod chain;
pub use chain::{Batch, Chain, Link};

const CAUGHT: i32 = i32::MIN + 1;

unsafe extern "C" {
    fn bb_last_error() -> *const c_char;
    fn bb_tokenize(
        vocab: *const sys::llama_vocab,
        text: *const c_char,
        text_len: i32,
        tokens: *mut Token,
        n_tokens_max: i32,
        add_special: bool,
        parse_special: bool,
    ) -> i32;
    fn bb_token_to_piece(
        vocab: *const sys::llama_vocab,
        token: Token,
        buf: *mut c_char,
        length: i32,
        lstrip: i32,
        special: bool,
    ) -> i32;
    fn bb_decode(ctx: *mut sys::llama_context, batch: sys::llama_batch) -> i32;
}

/// The message of the C++ exception the shim last caught on this thread.
fn caught() -> String {
    // SAFETY: the shim returns a pointer to a thread-local NUL-terminated string.
    let msg = unsafe { CStr::from_ptr(bb_last_error()) };
    format!("llama.cpp threw: {}", msg.to_string_lossy())
}

/// A loaded model. Read-only after loading, so shared between threads.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: llama.cpp does not mutate a model after loading; its vocabulary
// and metadata are read concurrently by llama.cpp's own threads.
unsafe impl Send for Model {}
// SAFETY: see above.
unsafe impl Sync for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file and is freed once.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

fn c_string(path: &str) -> Result<CString, String> {
    CString::new(path).map_err(|_| "a path with a NUL byte".to_owned())
}

impl Model {
    /// Load a GGUF file (already checked by `gguf::validate`). `None`: llama.cpp refused it.
    pub fn load(path: &str, use_mmap: bool) -> Result<Option<Model>, String> {
        let c = c_string(path)?;
        // SAFETY: returns plain parameters by value.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.load_mode = if use_mmap { sys::LLAMA_LOAD_MODE_MMAP } else { sys::LLAMA_LOAD_MODE_NONE };
        // SAFETY: a valid C string and parameters; llama.cpp catches its own
        // exceptions here and returns NULL.
        let ptr = unsafe { sys::llama_model_load_from_file(c.as_ptr(), params) };
        Ok(NonNull::new(ptr).map(|ptr| Model { ptr }))
    }

    fn raw(&self) -> *const sys::llama_model {
        self.ptr.as_ptr()
    }

    /// The vocabulary.
    pub fn vocab(&self) -> Vocab<'_> {
        // SAFETY: a live model always has a vocabulary.
        Vocab { ptr: unsafe { sys::llama_model_get_vocab(self.raw()) }, _model: PhantomData }
    }

    /// A metadata value as text.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: `buf` has `buf.len()` writable bytes; the key is NUL-terminated.
            let n = unsafe {
                sys::llama_model_meta_val_str(self.raw(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n < 0 {
                return None;
            }
            let n = n as usize;
            if n < buf.len() {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            buf.resize(n + 1, 0);
        }
    }

    /// llama.cpp's one-line description (architecture, size, type).
    pub fn description(&self) -> String {
        let mut buf = vec![0u8; 256];
        // SAFETY: `buf` has 256 writable bytes.
        let n = unsafe { sys::llama_model_desc(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        String::from_utf8_lossy(&buf[..(n.max(0) as usize).min(buf.len())]).into_owned()
    }

    /// The GGUF chat template.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: a NULL name asks for the default template; the string is owned by the model.
        let p = unsafe { sys::llama_model_chat_template(self.raw(), std::ptr::null()) };
        // SAFETY: non-NULL results are NUL-terminated and live as long as the model.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// Parameters.
    pub fn n_params(&self) -> u64 {
        // SAFETY: plain getter on a live model.
        unsafe { sys::llama_model_n_params(self.raw()) }
    }

    /// (training context, layers, embedding width, heads, KV heads)
    pub fn dims(&self) -> (u32, u32, u32, u32, u32) {
        let m = self.raw();
        let u = |v: i32| v.max(0) as u32;
        // SAFETY: plain getters on a live model.
        unsafe {
            (
                u(sys::llama_model_n_ctx_train(m)),
                u(sys::llama_model_n_layer(m)),
                u(sys::llama_model_n_embd(m)),
                u(sys::llama_model_n_head(m)),
                u(sys::llama_model_n_head_kv(m)),
            )
        }
    }
}

/// A model's vocabulary.
#[derive(Clone, Copy)]
pub struct Vocab<'m> {
    ptr: *const sys::llama_vocab,
    _model: PhantomData<&'m Model>,
}

impl Vocab<'_> {
    /// Number of tokens.
    pub fn n_tokens(&self) -> i32 {
        // SAFETY: plain getter.
        unsafe { sys::llama_vocab_n_tokens(self.ptr) }
    }

    fn valid(&self, t: Token) -> bool {
        t >= 0 && t < self.n_tokens()
    }

    /// BOS, if any.
    pub fn bos(&self) -> Option<Token> {
        // SAFETY: plain getter.
        Some(unsafe { sys::llama_vocab_bos(self.ptr) }).filter(|&t| self.valid(t))
    }

    /// EOS, if any.
    pub fn eos(&self) -> Option<Token> {
        // SAFETY: plain getter.
        Some(unsafe { sys::llama_vocab_eos(self.ptr) }).filter(|&t| self.valid(t))
    }

    /// Whether sequences start with BOS.
    pub fn add_bos(&self) -> bool {
        // SAFETY: plain getter.
        unsafe { sys::llama_vocab_get_add_bos(self.ptr) }
    }

    /// Whether a token ends generation (false for ids outside the vocabulary).
    pub fn is_eog(&self, t: Token) -> bool {
        // SAFETY: the id is checked first (llama.cpp indexes with it).
        self.valid(t) && unsafe { sys::llama_vocab_is_eog(self.ptr, t) }
    }

    /// The token's attributes (0 for ids outside the vocabulary).
    pub fn attr(&self, t: Token) -> u32 {
        if !self.valid(t) {
            return 0;
        }
        // SAFETY: the id is in range.
        unsafe { sys::llama_vocab_get_attr(self.ptr, t) as u32 }
    }

    /// The token's text in the vocabulary (empty for ids outside it).
    pub fn text(&self, t: Token) -> Vec<u8> {
        if !self.valid(t) {
            return Vec::new();
        }
        // SAFETY: the id is in range; the string belongs to the vocabulary.
        let p = unsafe { sys::llama_vocab_get_text(self.ptr, t) };
        if p.is_null() {
            return Vec::new();
        }
        // SAFETY: NUL-terminated, owned by the vocabulary.
        unsafe { CStr::from_ptr(p) }.to_bytes().to_vec()
    }

    /// Tokenize text with llama.cpp (no BOS/EOS added). `text` is valid UTF-8.
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<Token>, String> {
        let len = i32::try_from(text.len()).map_err(|_| "text too long to tokenize".to_owned())?;
        let mut out = vec![0 as Token; text.len() / 2 + 8];
        loop {
            // SAFETY: `text` is `len` readable bytes, `out` has `out.len()` writable tokens.
            let n = unsafe {
                bb_tokenize(
                    self.ptr,
                    text.as_ptr().cast(),
                    len,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    false,
                    parse_special,
                )
            };
            if n == CAUGHT {
                return Err(caught());
            }
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            if n == i32::MIN {
                return Err("too many tokens".into());
            }
            out.resize((-n) as usize, 0);
        }
    }

    /// The bytes of a token; control tokens are empty unless `special`.
    /// Empty for ids outside the vocabulary.
    pub fn piece(&self, t: Token, special: bool) -> Result<Vec<u8>, String> {
        if !self.valid(t) {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; 32];
        loop {
            // SAFETY: the id is in range; `buf` has `buf.len()` writable bytes.
            let n = unsafe {
                bb_token_to_piece(self.ptr, t, buf.as_mut_ptr().cast(), buf.len() as i32, 0, special)
            };
            if n == CAUGHT {
                return Err(caught());
            }
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            buf.resize((-n) as usize, 0);
        }
    }
}

/// KV cache storage types (ggml types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvStorage {
    /// 16-bit floats.
    F16,
    /// 8-bit blocks (needs flash attention for V).
    Q8_0,
}

/// The shape of a new context.
#[derive(Debug, Clone)]
pub struct ContextParams {
    /// Total KV cells (all sequences).
    pub n_ctx: u32,
    /// Logical batch.
    pub n_batch: u32,
    /// Physical batch.
    pub n_ubatch: u32,
    /// Sequences.
    pub n_seq_max: u32,
    /// Generation threads.
    pub threads: i32,
    /// Prompt threads.
    pub threads_batch: i32,
    /// KV storage.
    pub kv: KvStorage,
    /// Compute every token's logits? (Only the requested ones are computed; this is a hint for sizing.)
    pub embeddings: bool,
}

/// An eval callback (see `ggml_backend_sched_eval_callback`) and its data.
pub type EvalCallback = (unsafe extern "C" fn(*mut sys::ggml_tensor, bool, *mut c_void) -> bool, *mut c_void);

/// A context on a model: KV cache and compute buffers.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    model: Arc<Model>,
}

// SAFETY: a context is used by one thread at a time (under the engine's lock,
// or a tool's own thread); moving it between threads is allowed by llama.cpp.
unsafe impl Send for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: created by llama_init_from_model, freed once, before the model (held by `model`).
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

/// A flag llama.cpp polls during a decode; true aborts it.
pub type AbortFlag = Arc<std::sync::atomic::AtomicBool>;

unsafe extern "C" fn abort_cb(data: *mut c_void) -> bool {
    // SAFETY: `data` is the AtomicBool of an AbortFlag the context keeps alive.
    let flag = unsafe { &*(data as *const std::sync::atomic::AtomicBool) };
    flag.load(std::sync::atomic::Ordering::Relaxed)
}

impl Context {
    /// Create a context. `abort` (kept alive by the caller as long as the
    /// context) stops a decode between graph nodes; `eval` sees every tensor.
    pub fn new(
        model: Arc<Model>,
        p: &ContextParams,
        abort: Option<&AbortFlag>,
        eval: Option<EvalCallback>,
    ) -> Result<Context, String> {
        // SAFETY: returns plain parameters by value.
        let mut c = unsafe { sys::llama_context_default_params() };
        c.n_ctx = p.n_ctx;
        c.n_batch = p.n_batch;
        c.n_ubatch = p.n_ubatch;
        c.n_seq_max = p.n_seq_max;
        c.n_threads = p.threads;
        c.n_threads_batch = p.threads_batch;
        c.embeddings = p.embeddings;
        if p.kv == KvStorage::Q8_0 {
            c.type_k = sys::GGML_TYPE_Q8_0;
            c.type_v = sys::GGML_TYPE_Q8_0;
            c.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_ENABLED;
        }
        if let Some(flag) = abort {
            c.abort_callback = Some(abort_cb);
            c.abort_callback_data = Arc::as_ptr(flag) as *mut c_void;
        }
        if let Some((f, data)) = eval {
            c.cb_eval = Some(f);
            c.cb_eval_user_data = data;
        }
        // SAFETY: a live model and plain parameters; llama.cpp catches its own
        // exceptions here and returns NULL.
        let ptr = unsafe { sys::llama_init_from_model(model.ptr.as_ptr(), c) };
        let ptr = NonNull::new(ptr).ok_or_else(|| "cannot create the context".to_owned())?;
        Ok(Context { ptr, model })
    }

    fn raw(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// KV cells in all.
    pub fn n_ctx(&self) -> u32 {
        // SAFETY: plain getter.
        unsafe { sys::llama_n_ctx(self.raw()) }
    }

    /// The effective logical batch (llama.cpp's `min(n_ctx, n_batch)`): no decode may exceed it.
    pub fn n_batch(&self) -> u32 {
        // SAFETY: plain getter.
        unsafe { sys::llama_n_batch(self.raw()) }
    }

    /// Evaluate a batch (checked by the caller: ids, one sequence each,
    /// contiguous positions, at most `n_batch` tokens). llama.cpp's code:
    /// 0 ok, 1 no KV slot, 2 aborted, < 0 error.
    pub fn decode(&mut self, batch: &mut Batch) -> Result<i32, String> {
        let b = batch.raw();
        // SAFETY: `b` points into `batch`'s vectors, which outlive the call.
        let r = unsafe { bb_decode(self.raw(), b) };
        if r == CAUGHT { Err(caught()) } else { Ok(r) }
    }

    /// The logits of output row `i` of the last batch (`-1`: the last one).
    pub fn logits(&self, i: i32) -> Option<&[f32]> {
        let n = self.model.vocab().n_tokens() as usize;
        // SAFETY: llama.cpp returns NULL for a row that was not computed (release builds).
        let p = unsafe { sys::llama_get_logits_ith(self.raw(), i) };
        // SAFETY: a non-NULL row has n_vocab floats, valid until the next decode (borrow of self).
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p, n) })
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: plain getter.
        unsafe { sys::llama_get_memory(self.raw()) }
    }

    /// Highest position of a sequence (-1 when empty). `seq` is checked by the caller.
    pub fn seq_pos_max(&self, seq: i32) -> i32 {
        // SAFETY: `seq` < n_seq_max (checked by the caller).
        unsafe { sys::llama_memory_seq_pos_max(self.memory(), seq) }
    }

    /// Remove positions [p0, p1) of a sequence (p1 < 0: to the end).
    pub fn seq_rm(&mut self, seq: i32, p0: i32, p1: i32) -> bool {
        // SAFETY: `seq` < n_seq_max (checked by the caller).
        unsafe { sys::llama_memory_seq_rm(self.memory(), seq, p0, p1) }
    }

    /// Shift positions [p0, p1) of a sequence by `delta`.
    pub fn seq_add(&mut self, seq: i32, p0: i32, p1: i32, delta: i32) {
        // SAFETY: `seq` < n_seq_max (checked by the caller).
        unsafe { sys::llama_memory_seq_add(self.memory(), seq, p0, p1, delta) }
    }

    /// Empty every sequence.
    pub fn clear(&mut self) {
        // SAFETY: plain call on a live context.
        unsafe { sys::llama_memory_clear(self.memory(), true) }
    }

    /// A sequence's state as bytes (`seq` checked by the caller).
    pub fn seq_state(&self, seq: i32) -> Result<Vec<u8>, String> {
        // SAFETY: `seq` < n_seq_max; flags 0 = host memory.
        let size = unsafe { sys::llama_state_seq_get_size_ext(self.raw(), seq, 0) };
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has `size` writable bytes, the size llama.cpp asked for.
        let n = unsafe { sys::llama_state_seq_get_data_ext(self.raw(), buf.as_mut_ptr(), size, seq, 0) };
        if n == 0 && size > 0 {
            return Err("llama.cpp could not copy the sequence".into());
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Replace a sequence with a state from [`Context::seq_state`] (`seq`
    /// checked by the caller; llama.cpp checks the bytes and returns 0 on a bad state).
    pub fn set_seq_state(&mut self, seq: i32, state: &[u8]) -> Result<(), String> {
        // SAFETY: `state` is `len` readable bytes; the host-memory path of
        // llama_state_seq_set_data_ext catches its exceptions and returns 0.
        let n = unsafe { sys::llama_state_seq_set_data_ext(self.raw(), state.as_ptr(), state.len(), seq, 0) };
        if n == 0 { Err("llama.cpp refused the saved state".into()) } else { Ok(()) }
    }
}

/// Start llama.cpp's backends (once per process).
pub fn backend_init() {
    // SAFETY: called once (guarded by the caller's OnceLock).
    unsafe { sys::llama_backend_init() }
}
