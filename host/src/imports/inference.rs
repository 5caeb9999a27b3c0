//! `bittybot:core/inference`: the guest's token-level access to llama.cpp.

use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::inference::{
    self as wit, ContextFull, InferenceError, LoadSettings, ModelInfo, SamplerConfig,
};
use crate::bindings::types::{FileRef, ModelSource};
use crate::folders::Folders;
use crate::llama::{CancelFlag, LLAMA_CPP_VERSION, LlamaError, LoadRequest, ModelFacts, SamplerSpec, Worker};

/// The host data behind a guest `sampler`.
#[derive(Debug)]
pub struct SamplerHandle {
    id: u32,
}

/// The host data behind a guest `kv-snapshot`.
#[derive(Debug)]
pub struct SnapshotHandle {
    id: u32,
    bytes: u64,
}

/// What the inference interface needs: the inference thread, the loaded
/// model's vocabulary, the guest's folders.
pub struct InferenceCtx {
    worker: Worker,
    model: Option<Arc<LlamaModel>>,
    facts: Option<ModelFacts>,
    folders: Folders,
    cancel: CancelFlag,
    table: ResourceTable,
}

impl InferenceCtx {
    /// A context with no model loaded.
    pub fn new(worker: Worker, folders: Folders, cancel: CancelFlag) -> Self {
        InferenceCtx { worker, model: None, facts: None, folders, cancel, table: ResourceTable::new() }
    }

    /// The loaded model's facts.
    pub fn facts(&self) -> Option<&ModelFacts> {
        self.facts.as_ref()
    }

    /// The id of the token spelled exactly `text`.
    pub fn token_id_of(&self, text: &str) -> Option<i32> {
        let model = self.model.as_deref()?;
        let vocab = model.vocab();
        match vocab.tokenize(text.as_bytes(), false, true).as_slice() {
            [t] if vocab.token_to_piece(*t, true, None) == text.as_bytes() => Some(t.0),
            _ => None,
        }
    }

    /// Whether a token is a control token.
    pub fn is_control_token(&self, token: i32) -> bool {
        self.valid_token(token)
            && self.model.as_deref().is_some_and(|m| m.vocab().is_control(LlamaToken(token)))
    }

    fn model(&self) -> Result<&LlamaModel, InferenceError> {
        self.model.as_deref().ok_or(InferenceError::NoModel)
    }

    fn n_vocab(&self) -> i32 {
        self.facts.as_ref().map_or(0, |f| f.n_vocab as i32)
    }

    fn valid_token(&self, t: i32) -> bool {
        t >= 0 && t < self.n_vocab()
    }
}

/// The WIT error for an engine error.
pub fn to_wit(e: LlamaError) -> InferenceError {
    match e {
        LlamaError::NoModel => InferenceError::NoModel,
        LlamaError::Load { .. } => InferenceError::LoadFailed(e.to_string()),
        LlamaError::InvalidArgument(s) => InferenceError::InvalidArgument(s),
        LlamaError::ContextFull { used, requested, capacity } => {
            InferenceError::ContextFull(ContextFull { used, requested, capacity })
        }
        LlamaError::Decode(s) => InferenceError::DecodeFailed(s),
        LlamaError::Cancelled => InferenceError::Cancelled,
        LlamaError::Io(s) => InferenceError::Io(s),
        LlamaError::Worker(s) => InferenceError::DecodeFailed(s),
    }
}

fn info(f: &ModelFacts) -> ModelInfo {
    ModelInfo {
        architecture: f.architecture.clone(),
        description: f.description.clone(),
        n_params: f.n_params,
        n_ctx_train: f.n_ctx_train,
        n_vocab: f.n_vocab,
        n_layer: f.n_layer,
        n_embd: f.n_embd,
        n_head: f.n_head,
        n_head_kv: f.n_head_kv,
        head_dim: f.head_dim,
        bos: f.bos,
        eos: f.eos,
        add_bos: f.add_bos,
        chat_template: f.chat_template.clone(),
        file_size: f.file_size,
        file_name: f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        settings: LoadSettings {
            n_ctx: f.n_ctx,
            n_batch: f.n_batch,
            n_seq_max: f.n_seq,
            threads: f.threads,
            threads_batch: f.threads_batch,
            use_mmap: f.use_mmap,
        },
        llama_version: LLAMA_CPP_VERSION.to_owned(),
        model_id: f.model_id.clone(),
    }
}

impl wit::Host for InferenceCtx {
    fn load(&mut self, source: ModelSource, s: LoadSettings) -> Result<ModelInfo, InferenceError> {
        let path = self.folders.model_path(&source).map_err(|e| InferenceError::LoadFailed(e.to_string()))?;
        self.model = None;
        self.facts = None;
        let (model, facts) = self
            .worker
            .load(LoadRequest {
                path,
                n_ctx: s.n_ctx,
                n_batch: s.n_batch,
                n_seq: s.n_seq_max,
                threads: s.threads,
                threads_batch: s.threads_batch,
                use_mmap: s.use_mmap,
            })
            .map_err(to_wit)?;
        let out = info(&facts);
        self.model = Some(model);
        self.facts = Some(facts);
        Ok(out)
    }

    fn inspect(&mut self, source: ModelSource) -> Result<wit::ModelShape, InferenceError> {
        let path = self.folders.model_path(&source).map_err(|e| InferenceError::LoadFailed(e.to_string()))?;
        let s = crate::gguf::inspect(&path)
            .map_err(|e| InferenceError::LoadFailed(format!("cannot read {}: {e}", path.display())))?;
        Ok(wit::ModelShape {
            file_name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            architecture: s.architecture,
            file_size: s.file_size,
            n_layer: s.n_layer,
            n_embd: s.n_embd,
            n_head: s.n_head,
            n_head_kv: s.n_head_kv,
            head_dim: s.head_dim,
            n_vocab: s.n_vocab,
            n_ctx_train: s.n_ctx_train,
        })
    }

    fn unload(&mut self) {
        self.model = None;
        self.facts = None;
        let _ = self.worker.unload();
    }

    fn info(&mut self) -> Option<ModelInfo> {
        self.facts.as_ref().map(info)
    }

    fn tokenize(
        &mut self,
        text: String,
        add_bos: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, InferenceError> {
        let model = self.model()?;
        let tokens = model.vocab().tokenize(text.as_bytes(), add_bos, parse_special);
        Ok(tokens.into_iter().map(|t| t.0).collect())
    }

    fn token_bytes(&mut self, token: i32, special: bool) -> Vec<u8> {
        match (self.valid_token(token), &self.model) {
            (true, Some(m)) => m.vocab().token_to_piece(LlamaToken(token), special, None),
            _ => Vec::new(),
        }
    }

    fn token_id(&mut self, text: String) -> Option<i32> {
        self.token_id_of(&text)
    }

    fn is_eog(&mut self, token: i32) -> bool {
        self.valid_token(token) && self.model.as_deref().is_some_and(|m| m.vocab().is_eog(LlamaToken(token)))
    }

    fn is_control(&mut self, token: i32) -> bool {
        self.valid_token(token)
            && self.model.as_deref().is_some_and(|m| m.vocab().is_control(LlamaToken(token)))
    }

    fn decode(&mut self, seq: u32, tokens: Vec<i32>) -> Result<(), InferenceError> {
        let cancel = self.cancel.clone();
        self.worker.call(move |st| st.loaded()?.decode(seq, &tokens, &cancel)).and_then(|r| r).map_err(to_wit)
    }

    fn kv_len(&mut self, seq: u32) -> u32 {
        self.worker.call(move |st| st.loaded().map(|l| l.seq_len(seq)).unwrap_or(0)).unwrap_or(0)
    }

    fn kv_clear(&mut self, seq: u32) {
        let _ = self.worker.call(move |st| st.loaded().and_then(|l| l.kv_clear(seq)));
    }

    fn kv_remove(&mut self, seq: u32, p0: u32, p1: Option<u32>) -> bool {
        self.worker
            .call(move |st| st.loaded().and_then(|l| l.kv_remove(seq, p0, p1)))
            .and_then(|r| r)
            .unwrap_or(false)
    }

    fn kv_shift(&mut self, seq: u32, p0: u32, p1: Option<u32>, delta: i32) {
        let _ = self.worker.call(move |st| st.loaded().and_then(|l| l.kv_shift(seq, p0, p1, delta)));
    }

    fn state_save(
        &mut self,
        seq: u32,
        file: FileRef,
        tokens: Vec<i32>,
    ) -> Result<wit::SavedState, InferenceError> {
        let path = self.folders.resolve(&file).map_err(|e| InferenceError::Io(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let target = tmp.clone();
        let bytes = self
            .worker
            .call(move |st| st.loaded()?.state_save(seq, &target, &tokens))
            .and_then(|r| r)
            .map_err(to_wit)?;
        // Durable and whole, or not there at all.
        let sha256 =
            crate::hashing::hash_file(&tmp, |_, _| true).map_err(|e| InferenceError::Io(e.to_string()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| InferenceError::Io(format!("{}: {e}", path.display())))?;
        Ok(wit::SavedState { bytes, sha256 })
    }

    fn state_load(
        &mut self,
        seq: u32,
        file: FileRef,
        sha256: Option<String>,
    ) -> Result<Vec<i32>, InferenceError> {
        let path = self.folders.resolve(&file).map_err(|e| InferenceError::Io(e.to_string()))?;
        if let Some(expected) = sha256 {
            let actual = crate::hashing::hash_file(&path, |_, _| true)
                .map_err(|e| InferenceError::Io(e.to_string()))?;
            if actual != expected {
                self.kv_clear(seq);
                return Err(InferenceError::Io(format!("{} is damaged (checksum mismatch)", path.display())));
            }
        }
        self.worker.call(move |st| st.loaded()?.state_load(seq, &path)).and_then(|r| r).map_err(to_wit)
    }
}

fn gone(e: wasmtime::component::ResourceTableError) -> InferenceError {
    InferenceError::InvalidArgument(format!("resource: {e}"))
}

impl wit::HostSampler for InferenceCtx {
    fn new(&mut self, c: SamplerConfig) -> wasmtime::Result<Resource<SamplerHandle>> {
        let spec = SamplerSpec {
            temperature: c.temperature,
            top_k: c.top_k,
            top_p: c.top_p,
            min_p: c.min_p,
            repeat_penalty: c.repeat_penalty,
            repeat_last_n: c.repeat_last_n,
            seed: c.seed,
            logit_bias: c.logit_bias,
        };
        // A bad configuration is reported by `sample`, when the vocabulary is known.
        let id = self.worker.call(move |st| st.samplers.add(spec))??;
        Ok(self.table.push(SamplerHandle { id })?)
    }

    fn sample(&mut self, this: Resource<SamplerHandle>) -> Result<i32, InferenceError> {
        let id = self.table.get(&this).map_err(gone)?.id;
        self.worker
            .call(move |st| {
                let loaded = st.loaded.as_deref_mut().ok_or(LlamaError::NoModel)?;
                st.samplers.sample(id, loaded)
            })
            .and_then(|r| r)
            .map_err(to_wit)
    }

    fn accept(&mut self, this: Resource<SamplerHandle>, tokens: Vec<i32>) {
        let Ok(id) = self.table.get(&this).map(|h| h.id) else {
            return;
        };
        let _ = self.worker.call(move |st| {
            let n_vocab = st.loaded.as_deref().map(|l| l.n_vocab());
            st.samplers.accept(id, &tokens, n_vocab)
        });
    }

    fn reset(&mut self, this: Resource<SamplerHandle>) {
        let Ok(id) = self.table.get(&this).map(|h| h.id) else {
            return;
        };
        let _ = self.worker.call(move |st| st.samplers.reset(id));
    }

    fn drop(&mut self, rep: Resource<SamplerHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(rep)?;
        let _ = self.worker.call(move |st| st.samplers.remove(handle.id));
        Ok(())
    }
}

impl wit::HostKvSnapshot for InferenceCtx {
    fn take(&mut self, seq: u32) -> Result<Resource<SnapshotHandle>, InferenceError> {
        let (id, bytes) = self
            .worker
            .call(move |st| {
                let state = st.loaded()?.snapshot(seq)?;
                let bytes = state.byte_len() as u64;
                Ok::<_, LlamaError>((st.samplers.add_snapshot(state)?, bytes))
            })
            .and_then(|r| r)
            .map_err(to_wit)?;
        self.table.push(SnapshotHandle { id, bytes }).map_err(gone)
    }

    fn restore(&mut self, this: Resource<SnapshotHandle>, seq: u32) -> Result<(), InferenceError> {
        let id = self.table.get(&this).map_err(gone)?.id;
        self.worker
            .call(move |st| {
                let loaded = st.loaded.as_deref_mut().ok_or(LlamaError::NoModel)?;
                let state = st.samplers.snapshot(id)?;
                loaded.restore(seq, state)
            })
            .and_then(|r| r)
            .map_err(to_wit)
    }

    fn size(&mut self, this: Resource<SnapshotHandle>) -> u64 {
        self.table.get(&this).map(|h| h.bytes).unwrap_or(0)
    }

    fn drop(&mut self, rep: Resource<SnapshotHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(rep)?;
        let _ = self.worker.call(move |st| st.samplers.remove_snapshot(handle.id));
        Ok(())
    }
}
