//! `bittybot:core/inference`: the guest's token-level access to llama.cpp.
//!
//! The model file is opened by the host beneath the guest's folder (never
//! through a link), checked by the host's own GGUF reader against the
//! architectures the host was tested with, and handed to llama.cpp as the
//! already-open file; while it is loaded its inode is marked in use, so
//! nothing the guest can do truncates or replaces the mapping.

use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::inference::{self as wit, InferenceError, LoadSettings, ModelInfo, SamplerConfig};
use crate::bindings::types::{FileRef, ModelSource, Root};
use crate::fs::{Folders, InUseGuard, ModelFile, fd_path, modified_ns};
use crate::gguf::Gguf;
use crate::limits::Limits;
use crate::llama::ffi::{AbortFlag, Chain, Model};
use crate::llama::tokenize::Specials;
use crate::llama::{Engine, LLAMA_CPP_VERSION, LlamaError, ModelContext, StateFile, chain_links};
use crate::runtime::clock::CallClock;

/// The host data behind a guest `sampler`.
#[derive(Debug)]
pub struct SamplerHandle {
    id: u32,
}

/// The host data behind a guest `kv-snapshot`.
#[derive(Debug)]
pub struct SnapshotHandle {
    id: u32,
}

/// The loaded model's vocabulary and facts (read without the engine's lock).
struct Loaded {
    model: Arc<Model>,
    specials: Specials,
    info: ModelInfo,
    host_path: std::path::PathBuf,
    _in_use: InUseGuard,
}

/// What the inference interface needs: the engine, the loaded
/// model's vocabulary, the guest's folders, the limits and the call clock.
pub struct InferenceCtx {
    engine: Engine,
    loaded: Option<Loaded>,
    folders: Folders,
    limits: Limits,
    cancel: AbortFlag,
    clock: CallClock,
    table: ResourceTable,
}

fn load_failed(name: &str, reason: impl std::fmt::Display) -> InferenceError {
    InferenceError::LoadFailed(format!("{name}: {reason}"))
}

impl InferenceCtx {
    /// A context with no model loaded.
    pub fn new(
        engine: Engine,
        folders: Folders,
        limits: Limits,
        cancel: AbortFlag,
        clock: CallClock,
    ) -> Self {
        InferenceCtx { engine, loaded: None, folders, limits, cancel, clock, table: ResourceTable::new() }
    }

    /// The loaded model's facts.
    pub fn info(&self) -> Option<&ModelInfo> {
        self.loaded.as_ref().map(|l| &l.info)
    }

    /// Where the loaded model's file is on the host.
    pub fn model_path(&self) -> Option<&std::path::Path> {
        self.loaded.as_ref().map(|l| l.host_path.as_path())
    }

    /// Host bytes the guest's objects hold.
    pub fn objects_held(&self) -> u64 {
        self.engine.call(|st| st.objects.held()).unwrap_or(0)
    }

    fn loaded(&self) -> Result<&Loaded, InferenceError> {
        self.loaded.as_ref().ok_or(InferenceError::NoModel)
    }

    fn valid_token(&self, t: i32) -> bool {
        self.loaded.as_ref().is_some_and(|l| t >= 0 && (t as u32) < l.info.n_vocab)
    }

    /// The id of the token spelled exactly `text`.
    pub fn token_id_of(&self, text: &str) -> Option<i32> {
        let l = self.loaded.as_ref()?;
        if text.is_empty() || text.len() > 1024 {
            return None;
        }
        let vocab = l.model.vocab();
        match l.specials.tokenize(&vocab, text, true).ok()?.as_slice() {
            [t] if vocab.piece(*t, true).ok()?.as_slice() == text.as_bytes() => Some(*t),
            _ => None,
        }
    }

    /// Whether a token is a control token.
    pub fn is_control_token(&self, token: i32) -> bool {
        let control = llama_cpp_sys_2::LLAMA_TOKEN_ATTR_CONTROL as u32;
        self.loaded.as_ref().is_some_and(|l| l.model.vocab().attr(token) & control != 0)
    }

    /// Open and check a model file: the header and metadata fully read by
    /// our own reader, against the architectures this host runs.
    fn open_checked(&self, source: &ModelSource) -> Result<(ModelFile, Gguf), InferenceError> {
        let mut m = self.folders.open_model(source)?;
        let gguf = self.check(&mut m)?;
        Ok((m, gguf))
    }

    /// Open a model to map it: marked mapped first (refused while a
    /// download writes it, and no download can start on it while marked),
    /// then checked, so what llama.cpp maps is what was checked.
    fn open_for_mapping(
        &self,
        source: &ModelSource,
    ) -> Result<(ModelFile, Gguf, InUseGuard), InferenceError> {
        let mut m = self.folders.open_model(source)?;
        let mapped = self.folders.in_use.mark(&m.file).map_err(|e| load_failed(&m.name, e))?;
        let gguf = self.check(&mut m)?;
        Ok((m, gguf, mapped))
    }

    fn check(&self, m: &mut ModelFile) -> Result<Gguf, InferenceError> {
        let size = m.file.metadata().map_err(|e| load_failed(&m.name, e.kind()))?.len();
        let gguf = Gguf::read(&mut std::io::BufReader::new(&mut m.file), size)
            .map_err(|e| load_failed(&m.name, e))?;
        let archs: Vec<&str> = self.limits.architectures.iter().map(String::as_str).collect();
        gguf.validate_model(&archs).map_err(|e| load_failed(&m.name, e))?;
        Ok(gguf)
    }

    /// What the guest learns about a model loaded with `settings` (those in effect).
    fn model_info(m: &ModelFile, model: &Model, gguf: &Gguf, settings: LoadSettings) -> ModelInfo {
        let vocab = model.vocab();
        let (n_ctx_train, n_layer, n_embd, n_head, n_head_kv) = model.dims();
        let meta = m.file.metadata().ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let mtime = meta.as_ref().map_or(0, modified_ns);
        ModelInfo {
            architecture: gguf.architecture().unwrap_or_default().to_owned(),
            description: model.description(),
            n_params: model.n_params(),
            n_ctx_train,
            n_vocab: vocab.n_tokens().max(0) as u32,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim: gguf.shape().map_or(n_embd / n_head.max(1), |s| s.head_dim),
            bos: vocab.bos(),
            eos: vocab.eos(),
            add_bos: vocab.add_bos(),
            chat_template: model.chat_template(),
            file_size: size,
            file_name: m.file_name.clone(),
            settings,
            llama_version: LLAMA_CPP_VERSION.to_owned(),
            model_id: format!("{}:{size}:{mtime}", m.file_name),
        }
    }

    fn free(&mut self) {
        self.loaded = None;
        let _ = self.engine.call(|st| {
            st.ctx = None;
            st.objects.clear();
        });
    }
}

impl wit::Host for InferenceCtx {
    fn inspect(&mut self, source: ModelSource) -> Result<wit::ModelShape, InferenceError> {
        self.clock.clone().work(|| {
            let (m, gguf) = self.open_checked(&source)?;
            let s = gguf.shape().map_err(|e| load_failed(&m.name, e))?;
            Ok(wit::ModelShape {
                file_name: m.file_name,
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
        })
    }

    fn load(&mut self, source: ModelSource, s: LoadSettings) -> Result<ModelInfo, InferenceError> {
        let clock = self.clock.clone();
        clock.work(|| {
            self.free();
            let (m, gguf, in_use) = self.open_for_mapping(&source)?;
            let path = fd_path(&m.file);
            let (limits, cancel, name) = (self.limits.clone(), self.cancel.clone(), m.name.clone());
            let model = self
                .engine
                .call(move |st| -> Result<Arc<Model>, LlamaError> {
                    crate::llama::log::clear();
                    let fail = |reason: String| LlamaError::Load { name: name.clone(), reason };
                    let model = Model::load(&path, s.use_mmap).map_err(fail)?.ok_or_else(|| {
                        fail(
                            crate::llama::log::reason()
                                .unwrap_or_else(|| "llama.cpp refused the file".into()),
                        )
                    })?;
                    let model = Arc::new(model);
                    st.ctx = Some(ModelContext::new(model.clone(), &s, &limits, &cancel).map_err(fail)?);
                    Ok(model)
                })
                .and_then(|r| r)?;
            let shape = self.engine.call(|st| st.ctx.as_ref().map(|c| (c.n_ctx_seq(), c.n_batch())))?;
            let (n_ctx, n_batch) = shape.ok_or(InferenceError::NoModel)?;
            let info = Self::model_info(&m, &model, &gguf, LoadSettings { n_ctx, n_batch, ..s });
            let specials = Specials::of(&model.vocab());
            self.loaded =
                Some(Loaded { model, specials, info: info.clone(), host_path: m.host_path, _in_use: in_use });
            Ok(info)
        })
    }

    fn unload(&mut self) {
        self.free();
    }

    fn tokenize(&mut self, text: String, parse_special: bool) -> Result<Vec<i32>, InferenceError> {
        if text.len() > self.limits.tokenize_bytes {
            return Err(InferenceError::LimitExceeded(format!(
                "{} bytes to tokenize, more than the limit `tokenize_bytes` ({})",
                text.len(),
                self.limits.tokenize_bytes
            )));
        }
        let l = self.loaded()?;
        self.clock
            .work(|| l.specials.tokenize(&l.model.vocab(), &text, parse_special))
            .map_err(InferenceError::InvalidArgument)
    }

    fn token_bytes(&mut self, token: i32, special: bool) -> Vec<u8> {
        match &self.loaded {
            Some(l) => l.model.vocab().piece(token, special).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    fn token_id(&mut self, text: String) -> Option<i32> {
        self.token_id_of(&text)
    }

    fn is_eog(&mut self, token: i32) -> bool {
        self.valid_token(token) && self.loaded.as_ref().is_some_and(|l| l.model.vocab().is_eog(token))
    }

    fn decode(&mut self, seq: u32, tokens: Vec<i32>) -> Result<(), InferenceError> {
        self.clock
            .work(|| self.engine.call(move |st| st.loaded()?.decode(seq, &tokens)).and_then(|r| r))
            .map_err(Into::into)
    }

    fn kv_len(&mut self, seq: u32) -> u32 {
        self.engine.call(move |st| st.ctx.as_ref().map_or(0, |c| c.seq_len(seq))).unwrap_or(0)
    }

    fn kv_clear(&mut self, seq: u32) {
        let _ = self.engine.call(move |st| st.loaded().and_then(|c| c.kv_clear(seq)));
    }

    fn kv_remove(&mut self, seq: u32, p0: u32, p1: Option<u32>) -> bool {
        self.engine
            .call(move |st| st.loaded().and_then(|c| c.kv_remove(seq, p0, p1)))
            .and_then(|r| r)
            .unwrap_or(false)
    }

    fn kv_shift(&mut self, seq: u32, p0: u32, p1: Option<u32>, delta: i32) {
        let _ = self.engine.call(move |st| st.loaded().and_then(|c| c.kv_shift(seq, p0, p1, delta)));
    }

    fn state_save(
        &mut self,
        seq: u32,
        file: FileRef,
        tokens: Vec<i32>,
    ) -> Result<wit::SavedState, InferenceError> {
        if file.root != Root::State {
            return Err(InferenceError::InvalidArgument("states are saved in the state folder".into()));
        }
        let clock = self.clock.clone();
        clock.work(|| {
            let state = self
                .engine
                .call(move |st| {
                    let ctx = st.loaded()?;
                    ctx.check_tokens(&tokens)?;
                    if tokens.len() as u32 != ctx.seq_len(seq) {
                        return Err(LlamaError::InvalidArgument(format!(
                            "{} tokens given for a sequence of {}",
                            tokens.len(),
                            ctx.seq_len(seq)
                        )));
                    }
                    Ok(StateFile { state: ctx.state(seq)?, tokens })
                })
                .and_then(|r| r)?;
            let bytes = state.to_bytes();
            self.folders.state.write(&file.name, &bytes)?;
            Ok(wit::SavedState { bytes: bytes.len() as u64, sha256: crate::hashing::hash_bytes(&bytes) })
        })
    }

    fn state_load(
        &mut self,
        seq: u32,
        file: FileRef,
        sha256: Option<String>,
    ) -> Result<Vec<i32>, InferenceError> {
        if file.root != Root::State {
            return Err(InferenceError::InvalidArgument("states are loaded from the state folder".into()));
        }
        let clock = self.clock.clone();
        let result = clock.work(|| {
            let name = self.folders.state.guest_name(&file.name);
            let bytes = self.folders.state.read(&file.name, self.limits.state_quota)?;
            if sha256.is_some_and(|s| s != crate::hashing::hash_bytes(&bytes)) {
                return Err(InferenceError::File(crate::bindings::types::FileError::Io(format!(
                    "{name} is damaged (checksum mismatch)"
                ))));
            }
            let saved = StateFile::parse(&bytes).map_err(|e| {
                InferenceError::File(crate::bindings::types::FileError::Io(format!("{name}: {e}")))
            })?;
            self.engine
                .call(move |st| {
                    let ctx = st.loaded()?;
                    ctx.check_tokens(&saved.tokens)?;
                    if saved.tokens.len() as u32 > ctx.n_ctx_seq() {
                        return Err(LlamaError::State("the saved state is larger than the context".into()));
                    }
                    ctx.set_state(seq, &saved.state)?;
                    if ctx.seq_len(seq) as usize != saved.tokens.len() {
                        let _ = ctx.kv_clear(seq);
                        return Err(LlamaError::State("the saved state does not match its tokens".into()));
                    }
                    Ok(saved.tokens)
                })
                .and_then(|r| r)
                .map_err(InferenceError::from)
        });
        if result.is_err() {
            self.kv_clear(seq);
        }
        result
    }
}

fn gone(e: wasmtime::component::ResourceTableError) -> InferenceError {
    InferenceError::InvalidArgument(format!("resource: {e}"))
}

impl wit::HostSampler for InferenceCtx {
    fn open(&mut self, config: SamplerConfig) -> Result<Resource<SamplerHandle>, InferenceError> {
        let id = self
            .engine
            .call(move |st| {
                let ctx = st.loaded()?;
                let (links, bytes) = chain_links(&config, ctx.n_vocab(), ctx.n_ctx_seq())?;
                let chain = Chain::new(ctx.n_vocab(), &links).map_err(LlamaError::InvalidArgument)?;
                st.objects.add_chain(chain, bytes)
            })
            .and_then(|r| r)?;
        self.table.push(SamplerHandle { id }).map_err(gone)
    }

    fn sample(&mut self, this: Resource<SamplerHandle>) -> Result<i32, InferenceError> {
        let id = self.table.get(&this).map_err(gone)?.id;
        self.clock
            .work(|| {
                self.engine.call(move |st| {
                    let ctx = st.ctx.as_ref().ok_or(LlamaError::NoModel)?;
                    if !ctx.has_logits {
                        return Err(LlamaError::InvalidArgument(
                            "nothing to sample from: decode a token first".into(),
                        ));
                    }
                    st.objects.chain(id)?.sample(ctx.context(), -1).map_err(LlamaError::Decode)
                })
            })
            .and_then(|r| r)
            .map_err(Into::into)
    }

    fn drop(&mut self, rep: Resource<SamplerHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(rep)?;
        let _ = self.engine.call(move |st| st.objects.remove_chain(handle.id));
        Ok(())
    }
}

impl wit::HostKvSnapshot for InferenceCtx {
    fn take(&mut self, seq: u32) -> Result<Resource<SnapshotHandle>, InferenceError> {
        let id = self
            .clock
            .work(|| {
                self.engine.call(move |st| {
                    let state = st.loaded()?.state(seq)?;
                    st.objects.add_snapshot(state)
                })
            })
            .and_then(|r| r)?;
        self.table.push(SnapshotHandle { id }).map_err(gone)
    }

    fn restore(&mut self, this: Resource<SnapshotHandle>, seq: u32) -> Result<(), InferenceError> {
        let id = self.table.get(&this).map_err(gone)?.id;
        self.clock
            .work(|| {
                self.engine.call(move |st| {
                    let ctx = st.ctx.as_mut().ok_or(LlamaError::NoModel)?;
                    ctx.set_state(seq, st.objects.snapshot(id)?)
                })
            })
            .and_then(|r| r)
            .map_err(Into::into)
    }

    fn drop(&mut self, rep: Resource<SnapshotHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(rep)?;
        let _ = self.engine.call(move |st| st.objects.remove_snapshot(handle.id));
        Ok(())
    }
}
