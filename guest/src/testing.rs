//! Fakes of the host for the native tests: an in-memory storage, and a
//! fake engine with a byte-level vocabulary, a KV cache that keeps
//! positions the way llama.cpp does, and samplers that play a script.
//!
//! The vocabulary: a few control tokens (BOS, EOS, ChatML's `<|im_start|>`
//! and `<|im_end|>`), then one token per byte. Text tokenizes to its bytes,
//! so token counts are easy to reason about in the tests.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};

use crate::host::*;
use std::rc::Rc;

use crate::wit::{download, files, inference, platform};

/// BOS.
pub const BOS: Token = 1;
/// EOS (end of generation).
pub const EOS: Token = 2;
/// `<|im_start|>`.
pub const IM_START: Token = 3;
/// `<|im_end|>` (end of generation, as SmolLM2 marks it).
pub const IM_END: Token = 4;
const SPECIALS: [(&str, Token); 4] =
    [("<s>", BOS), ("</s>", EOS), ("<|im_start|>", IM_START), ("<|im_end|>", IM_END)];
const BYTE_BASE: Token = 10;
/// Vocabulary size.
pub const N_VOCAB: u32 = 266;

/// The ChatML template of SmolLM2 (as its GGUF carries it).
pub const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Files in memory; modification times count up with each write.
#[derive(Debug, Default)]
pub struct MemStorage {
    files: RefCell<BTreeMap<(u8, String), (Vec<u8>, u64)>>,
    clock: Cell<u64>,
    /// Writes done (every `write`, `rename` and `remove`).
    pub writes: Cell<u32>,
}

fn key(root: Root, name: &str) -> (u8, String) {
    (if root == Root::Models { 0 } else { 1 }, name.to_owned())
}

impl MemStorage {
    /// The bytes of a file.
    pub fn get(&self, root: Root, name: &str) -> Option<Vec<u8>> {
        self.files.borrow().get(&key(root, name)).map(|f| f.0.clone())
    }

    /// The names in a folder.
    pub fn names(&self, root: Root) -> Vec<String> {
        self.list(root).unwrap_or_default()
    }
}

impl Storage for MemStorage {
    fn stat(&self, root: Root, name: &str) -> Result<Option<FileStat>, FileError> {
        Ok(self
            .files
            .borrow()
            .get(&key(root, name))
            .map(|(b, t)| FileStat { size: b.len() as u64, modified_ns: *t }))
    }
    fn list(&self, root: Root) -> Result<Vec<String>, FileError> {
        let want = key(root, "").0;
        Ok(self.files.borrow().keys().filter(|k| k.0 == want).map(|k| k.1.clone()).collect())
    }
    fn read(&self, root: Root, name: &str) -> Result<Vec<u8>, FileError> {
        self.get(root, name).ok_or_else(|| FileError::NotFound(path(root, name)))
    }
    fn write(&self, root: Root, name: &str, bytes: &[u8]) -> Result<(), FileError> {
        self.clock.set(self.clock.get() + 1);
        self.writes.set(self.writes.get() + 1);
        self.files.borrow_mut().insert(key(root, name), (bytes.to_vec(), self.clock.get()));
        Ok(())
    }
    fn remove(&self, root: Root, name: &str) -> Result<bool, FileError> {
        self.writes.set(self.writes.get() + 1);
        Ok(self.files.borrow_mut().remove(&key(root, name)).is_some())
    }
    fn rename(&self, root: Root, from: &str, to: &str) -> Result<(), FileError> {
        self.writes.set(self.writes.get() + 1);
        let mut files = self.files.borrow_mut();
        let f = files.remove(&key(root, from)).ok_or_else(|| FileError::NotFound(path(root, from)))?;
        files.insert(key(root, to), f);
        Ok(())
    }
}

/// A toy digest standing in for SHA-256 (the guest only compares strings).
pub fn digest(bytes: &[u8]) -> String {
    let mut h = 0u64;
    for b in bytes {
        h = h.wrapping_mul(31).wrapping_add(*b as u64);
    }
    format!("{h:064x}")
}

/// One cell of the fake KV cache.
type Cell2 = (u32, Token);

/// The fake host.
pub struct FakeHost {
    /// Files.
    pub storage: MemStorage,
    /// Context per sequence.
    pub n_ctx: Cell<u32>,
    kv: RefCell<BTreeMap<u32, Vec<Cell2>>>,
    /// What the samplers share with the host.
    pub shared: Rc<SamplerShared>,
    /// Replies the samplers will give, in order (each sampler takes one).
    pub replies: RefCell<VecDeque<String>>,
    /// Tokens evaluated by each `decode` call, in order.
    pub decoded: RefCell<Vec<Vec<Token>>>,
    /// Fraction of the model's pages in memory.
    pub residency: Cell<f32>,
    /// The residency once a `decode` has run (the pages paged out while a
    /// reply uses them), taken once.
    pub after_reply_residency: Cell<Option<f32>>,
    /// Warmups started.
    pub warmups: Cell<u32>,
    /// The residency a warmup pass reaches (1.0: the whole file fits).
    pub warm_reach: Cell<f32>,
    /// Hash jobs started.
    pub hashes: Cell<u32>,
    /// What the next transfers do: write these bytes into the `.part`, or fail.
    pub transfers: RefCell<VecDeque<Result<Vec<u8>, DownloadError>>>,
    /// Free space reported.
    pub free: Cell<u64>,
    /// Snapshots taken and restored.
    pub snapshots: Cell<u32>,
    /// States saved to and loaded from files.
    pub states_saved: Cell<u32>,
    /// States loaded from files.
    pub states_loaded: Cell<u32>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            storage: MemStorage::default(),
            n_ctx: Cell::new(512),
            kv: RefCell::default(),
            shared: Rc::default(),
            replies: RefCell::default(),
            decoded: RefCell::default(),
            residency: Cell::new(1.0),
            after_reply_residency: Cell::new(None),
            warmups: Cell::new(0),
            warm_reach: Cell::new(1.0),
            hashes: Cell::new(0),
            transfers: RefCell::default(),
            free: Cell::new(1 << 40),
            snapshots: Cell::new(0),
            states_saved: Cell::new(0),
            states_loaded: Cell::new(0),
        }
    }
}

impl FakeHost {
    /// Queue replies for the next samplers.
    pub fn script(&self, replies: &[&str]) {
        self.replies.borrow_mut().extend(replies.iter().map(|r| (*r).to_owned()));
    }

    /// The tokens of a sequence, by position (what llama.cpp's KV holds).
    pub fn kv(&self, seq: u32) -> Vec<Token> {
        let mut cells = self.kv.borrow().get(&seq).cloned().unwrap_or_default();
        cells.sort();
        cells.into_iter().map(|(_, t)| t).collect()
    }

    /// Whether the positions of a sequence are 0..n without gaps.
    pub fn kv_contiguous(&self, seq: u32) -> bool {
        let mut pos: Vec<u32> =
            self.kv.borrow().get(&seq).map(|c| c.iter().map(|c| c.0).collect()).unwrap_or_default();
        pos.sort();
        pos.iter().enumerate().all(|(i, &p)| p == i as u32)
    }

    /// Tokens evaluated since the last call.
    pub fn take_decoded(&self) -> usize {
        self.decoded.borrow_mut().drain(..).map(|d| d.len()).sum()
    }

    /// Text of tokens (control tokens by name).
    pub fn text(&self, tokens: &[Token]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.token_bytes(t, true)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// What a loaded ChatML model reports.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            architecture: "llama".into(),
            description: "fake".into(),
            n_params: 1,
            n_ctx_train: 8192,
            n_vocab: N_VOCAB,
            n_layer: 2,
            n_embd: 64,
            n_head: 2,
            n_head_kv: 1,
            head_dim: 32,
            bos: Some(BOS),
            eos: Some(IM_END),
            add_bos: false,
            chat_template: Some(CHATML.into()),
            file_size: 1000,
            file_name: "fake.gguf".into(),
            settings: LoadSettings {
                n_ctx: self.n_ctx.get(),
                n_batch: 512,
                n_seq_max: 2,
                threads: 2,
                threads_batch: 2,
                use_mmap: true,
                kv_type: KvType::F16,
            },
            llama_version: "fake 1".into(),
            model_id: "fake.gguf:1000:1".into(),
        }
    }
}

/// State the samplers share with the host.
#[derive(Debug, Default)]
pub struct SamplerShared {
    has_logits: Cell<bool>,
    samples: Cell<u32>,
    /// The app's cancel flag.
    pub cancel: Cell<bool>,
    /// Set the cancel flag once this many tokens have been sampled (in all).
    pub cancel_after_samples: Cell<Option<u32>>,
}

/// A scripted sampler: the bytes of its reply, then `<|im_end|>`.
pub struct FakeSampler {
    shared: Rc<SamplerShared>,
    reply: VecDeque<Token>,
}

impl Sampler for FakeSampler {
    fn sample(&mut self) -> Result<Token, InferenceError> {
        let s = &self.shared;
        if !s.has_logits.get() {
            return Err(InferenceError::InvalidArgument("nothing to sample from".into()));
        }
        s.has_logits.set(false);
        s.samples.set(s.samples.get() + 1);
        if s.cancel_after_samples.get() == Some(s.samples.get()) {
            s.cancel.set(true);
        }
        Ok(self.reply.pop_front().unwrap_or(IM_END))
    }
}

/// A KV snapshot of the fake.
pub type FakeSnapshot = Vec<Cell2>;

impl Engine for FakeHost {
    type Sampler = FakeSampler;
    type Snapshot = FakeSnapshot;

    fn inspect(&self, _: &ModelSource) -> Result<ModelShape, InferenceError> {
        Ok(ModelShape {
            file_name: "fake.gguf".into(),
            architecture: "llama".into(),
            file_size: 1000,
            n_layer: 2,
            n_embd: 64,
            n_head: 2,
            n_head_kv: 1,
            head_dim: 32,
            n_vocab: N_VOCAB,
            n_ctx_train: 8192,
        })
    }
    fn load(&self, _: &ModelSource, s: LoadSettings) -> Result<ModelInfo, InferenceError> {
        self.n_ctx.set(s.n_ctx);
        self.kv.borrow_mut().clear();
        let mut info = self.info();
        info.settings = s;
        Ok(info)
    }
    fn unload(&self) {}
    fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<Token>, InferenceError> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            if parse_special {
                for (s, id) in SPECIALS {
                    if let Some(r) = rest.strip_prefix(s) {
                        out.push(id);
                        rest = r;
                        continue 'outer;
                    }
                }
            }
            let c = rest.chars().next().unwrap_or_default();
            let mut buf = [0u8; 4];
            out.extend(c.encode_utf8(&mut buf).bytes().map(|b| BYTE_BASE + b as Token));
            rest = &rest[c.len_utf8()..];
        }
        Ok(out)
    }
    fn token_bytes(&self, token: Token, special: bool) -> Vec<u8> {
        if let Some((s, _)) = SPECIALS.iter().find(|(_, id)| *id == token) {
            return if special { s.as_bytes().to_vec() } else { Vec::new() };
        }
        match u8::try_from(token - BYTE_BASE) {
            Ok(b) => vec![b],
            Err(_) => Vec::new(),
        }
    }
    fn token_id(&self, text: &str) -> Option<Token> {
        match self.tokenize(text, true).ok()?.as_slice() {
            [t] => Some(*t),
            _ => None,
        }
    }
    fn is_eog(&self, token: Token) -> bool {
        token == EOS || token == IM_END
    }
    fn decode(&self, seq: u32, tokens: &[Token]) -> Result<(), InferenceError> {
        if tokens.iter().any(|&t| t < 0 || t >= N_VOCAB as Token) {
            return Err(InferenceError::InvalidArgument("token out of range".into()));
        }
        let used = self.kv_len(seq);
        if used + tokens.len() as u32 > self.n_ctx.get() {
            return Err(InferenceError::ContextFull(inference::ContextFull {
                used,
                requested: tokens.len() as u32,
                capacity: self.n_ctx.get(),
            }));
        }
        let mut kv = self.kv.borrow_mut();
        let cells = kv.entry(seq).or_default();
        cells.extend(tokens.iter().enumerate().map(|(i, &t)| (used + i as u32, t)));
        self.decoded.borrow_mut().push(tokens.to_vec());
        self.shared.has_logits.set(!tokens.is_empty());
        if let Some(r) = self.after_reply_residency.take() {
            self.residency.set(r);
        }
        Ok(())
    }
    fn kv_len(&self, seq: u32) -> u32 {
        self.kv.borrow().get(&seq).and_then(|c| c.iter().map(|c| c.0 + 1).max()).unwrap_or(0)
    }
    fn kv_clear(&self, seq: u32) {
        self.kv.borrow_mut().remove(&seq);
    }
    fn kv_remove(&self, seq: u32, p0: u32, p1: Option<u32>) -> bool {
        let p1 = p1.unwrap_or(u32::MAX);
        if let Some(c) = self.kv.borrow_mut().get_mut(&seq) {
            c.retain(|(p, _)| *p < p0 || *p >= p1);
        }
        true
    }
    fn kv_shift(&self, seq: u32, p0: u32, p1: Option<u32>, delta: i32) {
        let p1 = p1.unwrap_or(u32::MAX);
        if let Some(c) = self.kv.borrow_mut().get_mut(&seq) {
            for (p, _) in c.iter_mut().filter(|(p, _)| *p >= p0 && *p < p1) {
                *p = (*p as i64 + delta as i64) as u32;
            }
        }
    }
    fn sampler(&self, _: &SamplerConfig) -> Result<Self::Sampler, InferenceError> {
        let reply = self.replies.borrow_mut().pop_front().unwrap_or_default();
        let reply = self.tokenize(&reply, false)?.into();
        Ok(FakeSampler { shared: self.shared.clone(), reply })
    }
    fn snapshot(&self, seq: u32) -> Result<FakeSnapshot, InferenceError> {
        self.snapshots.set(self.snapshots.get() + 1);
        Ok(self.kv.borrow().get(&seq).cloned().unwrap_or_default())
    }
    fn restore(&self, snapshot: &FakeSnapshot, seq: u32) -> Result<(), InferenceError> {
        self.kv.borrow_mut().insert(seq, snapshot.clone());
        self.shared.has_logits.set(false);
        Ok(())
    }
    fn state_save(&self, seq: u32, name: &str, tokens: &[Token]) -> Result<SavedState, InferenceError> {
        self.states_saved.set(self.states_saved.get() + 1);
        let bytes = serde_json::to_vec(&(tokens, self.kv(seq)))
            .map_err(|e| InferenceError::DecodeFailed(e.to_string()))?;
        self.storage.write(Root::State, name, &bytes).map_err(InferenceError::File)?;
        Ok(SavedState { bytes: bytes.len() as u64, sha256: digest(&bytes) })
    }
    fn state_load(&self, seq: u32, name: &str, sha256: Option<&str>) -> Result<Vec<Token>, InferenceError> {
        self.kv_clear(seq);
        let bytes = self.storage.read(Root::State, name).map_err(InferenceError::File)?;
        if sha256.is_some_and(|s| s != digest(&bytes)) {
            return Err(InferenceError::File(FileError::Io(format!(
                "{} is damaged",
                path(Root::State, name)
            ))));
        }
        let (tokens, kv): (Vec<Token>, Vec<Token>) =
            serde_json::from_slice(&bytes).map_err(|e| InferenceError::File(FileError::Io(e.to_string())))?;
        self.kv.borrow_mut().insert(seq, kv.into_iter().enumerate().map(|(i, t)| (i as u32, t)).collect());
        self.states_loaded.set(self.states_loaded.get() + 1);
        Ok(tokens)
    }
}

impl Storage for FakeHost {
    fn stat(&self, root: Root, name: &str) -> Result<Option<FileStat>, FileError> {
        self.storage.stat(root, name)
    }
    fn list(&self, root: Root) -> Result<Vec<String>, FileError> {
        self.storage.list(root)
    }
    fn read(&self, root: Root, name: &str) -> Result<Vec<u8>, FileError> {
        self.storage.read(root, name)
    }
    fn write(&self, root: Root, name: &str, bytes: &[u8]) -> Result<(), FileError> {
        self.storage.write(root, name, bytes)
    }
    fn remove(&self, root: Root, name: &str) -> Result<bool, FileError> {
        self.storage.remove(root, name)
    }
    fn rename(&self, root: Root, from: &str, to: &str) -> Result<(), FileError> {
        self.storage.rename(root, from, to)
    }
}

impl Platform for FakeHost {
    fn cancel_requested(&self) -> bool {
        self.shared.cancel.get()
    }
    fn cpu_topology(&self) -> CpuTopology {
        let core =
            |id| platform::CpuCore { id, online: true, max_freq_khz: None, capacity: None, cluster: None };
        CpuTopology { cores: vec![core(0), core(1)], online: 2 }
    }
    fn memory(&self) -> MemoryInfo {
        MemoryInfo { total: 24 << 30, available: 20 << 30 }
    }
    fn free_space(&self, _: Root) -> Result<u64, String> {
        Ok(self.free.get())
    }
}

/// A job that is already done.
pub struct Done<S, E>(pub Result<S, E>);

impl<S: Clone, E: Clone> Job<S, E> for Done<S, E> {
    fn wait(&self, _: u32) -> Result<S, E> {
        self.0.clone()
    }
    fn cancel(&self) {}
}

impl Jobs for FakeHost {
    type Hasher = Done<HashState, FileError>;
    type Warmup = Done<WarmupState, FileError>;
    type Transfer = Done<TransferState, DownloadError>;

    fn hasher(&self, source: &ModelSource) -> Self::Hasher {
        self.hashes.set(self.hashes.get() + 1);
        let ModelSource::Managed(name) = source else {
            return Done(Err(FileError::NotFound("provided".into())));
        };
        Done(self.storage.read(Root::Models, name).map(|b| HashState::Done(digest(&b))))
    }
    fn warmup(&self, _: &ModelSource, _: WarmOrder) -> Self::Warmup {
        self.warmups.set(self.warmups.get() + 1);
        let before = self.residency.get();
        self.residency.set(self.warm_reach.get());
        Done(Ok(WarmupState::Done(files::WarmupReport {
            bytes: 1000,
            millis: 1.0,
            bytes_per_s: 1e6,
            residency_before: before,
            residency_after: self.warm_reach.get(),
        })))
    }
    fn transfer(&self, request: &TransferRequest) -> Self::Transfer {
        let next = self.transfers.borrow_mut().pop_front().expect("a scripted transfer");
        Done(next.map(|bytes| {
            self.storage.write(Root::Models, &request.dest.name, &bytes).expect("write the part");
            TransferState::Finished(download::Finished {
                bytes: bytes.len() as u64,
                sha256: digest(&bytes),
                resumed_from: 0,
                restarted: false,
            })
        }))
    }
    fn residency(&self, _: &ModelSource) -> Result<f32, FileError> {
        Ok(self.residency.get())
    }
}
