//! The guest's host traits (`host.rs`) over the real imports: each method
//! calls the one import of the same name. With `lib.rs` (the exports), the
//! only code that touches the generated bindings' functions.

use crate::host::*;
use crate::wit::{download, files, inference as inf, platform, storage, types::FileRef};

/// The host, through the component's imports.
pub struct Imports;

fn file(root: Root, name: &str) -> FileRef {
    FileRef { root, name: name.to_owned() }
}

/// A sampler chain on the host.
pub struct HostSampler(inf::Sampler);

impl Sampler for HostSampler {
    fn sample(&mut self) -> Result<Token, InferenceError> {
        self.0.sample()
    }
}

impl Engine for Imports {
    type Sampler = HostSampler;
    type Snapshot = inf::KvSnapshot;

    fn inspect(&self, source: &ModelSource) -> Result<ModelShape, InferenceError> {
        inf::inspect(source)
    }
    fn load(&self, source: &ModelSource, settings: LoadSettings) -> Result<ModelInfo, InferenceError> {
        inf::load(source, settings)
    }
    fn unload(&self) {
        inf::unload()
    }
    fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<Token>, InferenceError> {
        inf::tokenize(text, parse_special)
    }
    fn token_bytes(&self, token: Token, special: bool) -> Vec<u8> {
        inf::token_bytes(token, special)
    }
    fn token_id(&self, text: &str) -> Option<Token> {
        inf::token_id(text)
    }
    fn is_eog(&self, token: Token) -> bool {
        inf::is_eog(token)
    }
    fn decode(&self, seq: u32, tokens: &[Token]) -> Result<(), InferenceError> {
        inf::decode(seq, tokens)
    }
    fn kv_len(&self, seq: u32) -> u32 {
        inf::kv_len(seq)
    }
    fn kv_clear(&self, seq: u32) {
        inf::kv_clear(seq)
    }
    fn kv_remove(&self, seq: u32, p0: u32, p1: Option<u32>) -> bool {
        inf::kv_remove(seq, p0, p1)
    }
    fn kv_shift(&self, seq: u32, p0: u32, p1: Option<u32>, delta: i32) {
        inf::kv_shift(seq, p0, p1, delta)
    }
    fn sampler(&self, config: &SamplerConfig) -> Result<HostSampler, InferenceError> {
        inf::Sampler::open(config).map(HostSampler)
    }
    fn snapshot(&self, seq: u32) -> Result<inf::KvSnapshot, InferenceError> {
        inf::KvSnapshot::take(seq)
    }
    fn restore(&self, snapshot: &inf::KvSnapshot, seq: u32) -> Result<(), InferenceError> {
        snapshot.restore(seq)
    }
    fn state_save(&self, seq: u32, name: &str, tokens: &[Token]) -> Result<SavedState, InferenceError> {
        inf::state_save(seq, &file(Root::State, name), tokens)
    }
    fn state_load(&self, seq: u32, name: &str, sha256: Option<&str>) -> Result<Vec<Token>, InferenceError> {
        inf::state_load(seq, &file(Root::State, name), sha256)
    }
}

impl Storage for Imports {
    fn stat(&self, root: Root, name: &str) -> Result<Option<FileStat>, FileError> {
        storage::stat(&file(root, name))
    }
    fn list(&self, root: Root) -> Result<Vec<String>, FileError> {
        storage::list(root)
    }
    fn read(&self, root: Root, name: &str) -> Result<Vec<u8>, FileError> {
        storage::read(&file(root, name))
    }
    fn write(&self, root: Root, name: &str, bytes: &[u8]) -> Result<(), FileError> {
        storage::write(&file(root, name), bytes)
    }
    fn remove(&self, root: Root, name: &str) -> Result<bool, FileError> {
        storage::remove(&file(root, name))
    }
    fn rename(&self, root: Root, from: &str, to: &str) -> Result<(), FileError> {
        storage::rename(root, from, to)
    }
}

impl Platform for Imports {
    fn cancel_requested(&self) -> bool {
        platform::cancel_requested()
    }
    fn cpu_topology(&self) -> CpuTopology {
        platform::read_cpu_topology()
    }
    fn memory(&self) -> MemoryInfo {
        platform::read_memory()
    }
    fn free_space(&self, root: Root) -> Result<u64, String> {
        platform::free_space(root)
    }
}

impl Job<HashState, FileError> for files::Hasher {
    fn wait(&self, ms: u32) -> Result<HashState, FileError> {
        files::Hasher::wait(self, ms)
    }
    fn cancel(&self) {
        files::Hasher::cancel(self)
    }
}

impl Job<WarmupState, FileError> for files::Warmup {
    fn wait(&self, ms: u32) -> Result<WarmupState, FileError> {
        files::Warmup::wait(self, ms)
    }
    fn cancel(&self) {
        files::Warmup::cancel(self)
    }
}

impl Job<TransferState, DownloadError> for download::Transfer {
    fn wait(&self, ms: u32) -> Result<TransferState, DownloadError> {
        download::Transfer::wait(self, ms)
    }
    fn cancel(&self) {
        download::Transfer::cancel(self)
    }
}

impl Jobs for Imports {
    type Hasher = files::Hasher;
    type Warmup = files::Warmup;
    type Transfer = download::Transfer;

    fn hasher(&self, source: &ModelSource) -> files::Hasher {
        files::Hasher::new(source)
    }
    fn warmup(&self, source: &ModelSource, order: WarmOrder) -> files::Warmup {
        files::Warmup::new(source, order)
    }
    fn transfer(&self, request: &TransferRequest) -> download::Transfer {
        download::Transfer::new(request)
    }
    fn residency(&self, source: &ModelSource) -> Result<f32, FileError> {
        files::residency(source)
    }
}
