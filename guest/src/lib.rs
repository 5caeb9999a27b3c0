//! BittyBot's guest component: every decision the app makes, compiled to a
//! sandboxed `wasm32-wasip2` component the native host runs.
//!
//! Build (the host's and the tests' build scripts do this for you):
//! `cargo build -p bittybot-guest --target wasm32-wasip2 --release`
//!
//! This file is the only one that touches the generated bindings: each export
//! converts types and calls a pure module (`session`, `template`, `device`, …),
//! which are plain Rust and unit-tested natively with `cargo test -p bittybot-guest`.

pub mod context;
pub mod device;
pub mod engine;
pub mod filter;
pub mod memfit;
pub mod prompts;
pub mod session;
pub mod settings;
pub mod setup;
pub mod spec;
pub mod template;
pub mod utf8;

wit_bindgen::generate!({
    path: "../wit",
    world: "bittybot",
});

use std::cell::RefCell;
use std::rc::Rc;

use bittybot::core::{download as dl, files, inference as inf, platform, types};
use engine::{Engine, EngineError, SamplerConfig, Token};
use exports::bittybot::core::app as api;
use session::{ModelFacts, ModelProfile, Session, SessionError, SessionKind, StopReason};
use template::Role;

/// Sessions per model: one chat and one translation conversation.
const SEQUENCES: u32 = 2;
/// Default logical batch.
const DEFAULT_N_BATCH: u32 = 512;

/// The engine as the host provides it.
struct HostEngine;

struct HostSampler(inf::Sampler);

impl engine::Sampler for HostSampler {
    fn sample(&mut self) -> Result<Token, EngineError> {
        self.0.sample().map_err(engine_error)
    }
}

fn engine_error(e: inf::InferenceError) -> EngineError {
    match e {
        inf::InferenceError::NoModel => EngineError::NoModel,
        inf::InferenceError::Cancelled => EngineError::Cancelled,
        inf::InferenceError::ContextFull(c) => {
            EngineError::ContextFull { used: c.used, requested: c.requested, capacity: c.capacity }
        }
        inf::InferenceError::LoadFailed(s)
        | inf::InferenceError::InvalidArgument(s)
        | inf::InferenceError::DecodeFailed(s)
        | inf::InferenceError::Io(s) => EngineError::Failed(s),
    }
}

impl Engine for HostEngine {
    type Sampler = HostSampler;

    fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<Token>, EngineError> {
        inf::tokenize(text, false, parse_special).map_err(engine_error)
    }
    fn token_bytes(&self, token: Token) -> Vec<u8> {
        inf::token_bytes(token, false)
    }
    fn token_id(&self, text: &str) -> Option<Token> {
        inf::token_id(text)
    }
    fn is_eog(&self, token: Token) -> bool {
        inf::is_eog(token)
    }
    fn decode(&self, seq: u32, tokens: &[Token]) -> Result<(), EngineError> {
        inf::decode(seq, tokens).map_err(engine_error)
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
    fn sampler(&self, c: &SamplerConfig) -> HostSampler {
        HostSampler(inf::Sampler::new(&inf::SamplerConfig {
            temperature: c.temperature,
            top_k: c.top_k,
            top_p: c.top_p,
            min_p: c.min_p,
            repeat_penalty: c.repeat_penalty,
            repeat_last_n: c.repeat_last_n,
            seed: c.seed,
            logit_bias: c.logit_bias.clone(),
        }))
    }
    fn cancel_requested(&self) -> bool {
        platform::cancel_requested()
    }
    fn prefix_restore(&self, seq: u32, key: &str, tokens: &[Token]) -> bool {
        // From memory: a snapshot taken when the prefix was first evaluated.
        let from_memory = STATE.with(|s| {
            let s = s.borrow();
            s.prefixes
                .iter()
                .find(|p| p.key == key && p.tokens == tokens)
                .map(|p| p.snapshot.restore(seq).is_ok())
        });
        if let Some(ok) = from_memory {
            if ok {
                return true;
            }
            inf::kv_clear(seq);
        }
        // From disk: checked against the SHA-256 recorded when it was saved.
        let name = prefix_file_name(key);
        let state_dir = std::path::Path::new(STATE_DIR);
        let Some(sha) = settings::Settings::load(state_dir)
            .prefix_files
            .into_iter()
            .find(|f| f.name == name)
            .map(|f| f.sha256)
        else {
            return false;
        };
        let file = types::FileRef { root: types::Root::State, name: name.clone() };
        match inf::state_load(seq, &file, Some(&sha)) {
            Ok(saved) if saved == tokens => {
                remember_prefix(seq, key, tokens);
                true
            }
            _ => {
                // Stale, damaged or foreign: drop it; it is rebuilt on this turn.
                inf::kv_clear(seq);
                let _ = std::fs::remove_file(state_dir.join(&name));
                let _ = settings::update(state_dir, |s| s.prefix_files.retain(|f| f.name != name));
                false
            }
        }
    }
    fn prefix_store(&self, seq: u32, key: &str, tokens: &[Token]) {
        remember_prefix(seq, key, tokens);
        let name = prefix_file_name(key);
        let file = types::FileRef { root: types::Root::State, name: name.clone() };
        let Ok(saved) = inf::state_save(seq, &file, tokens) else { return };
        let state_dir = std::path::Path::new(STATE_DIR);
        let mut stale = Vec::new();
        let _ = settings::update(state_dir, |s| {
            s.prefix_files.retain(|f| f.name != name);
            s.prefix_files.push(settings::PrefixFile { name: name.clone(), sha256: saved.sha256.clone() });
            while s.prefix_files.len() > MAX_PREFIX_FILES {
                stale.push(s.prefix_files.remove(0).name);
            }
        });
        for old in stale {
            let _ = std::fs::remove_file(state_dir.join(old));
        }
    }
    fn residency(&self) -> Option<f32> {
        let source = STATE.with(|s| s.borrow().loaded.as_ref().map(|l| l.source.clone()))?;
        files::residency(&source).ok()
    }
    fn warm_up_background(&self) {
        if !warmup_running() {
            let job = start_warmup();
            STATE.with(|s| s.borrow_mut().warmup = job);
        }
    }
}

/// The model's identity for cached states: its verified SHA-256 when the
/// settings have one for this file, else name, size and modification time.
fn prefix_model_id(info: &inf::ModelInfo, source: &types::ModelSource) -> String {
    let types::ModelSource::Managed(name) = source else { return info.model_id.clone() };
    let verified = settings::Settings::load(std::path::Path::new(STATE_DIR)).verified.remove(name);
    match verified {
        Some(rec) if rec.size == info.file_size => format!("sha256:{}", rec.sha256),
        _ => info.model_id.clone(),
    }
}

/// Saved prompt prefixes kept on disk (one file each, oldest removed first).
const MAX_PREFIX_FILES: usize = 4;
/// Prompt prefixes kept in memory.
const MAX_PREFIX_SNAPSHOTS: usize = 2;

fn prefix_file_name(key: &str) -> String {
    format!("prefix-{key}.kv")
}

/// A prompt prefix's KV state kept in host memory.
struct PrefixSnapshot {
    key: String,
    tokens: Vec<Token>,
    snapshot: inf::KvSnapshot,
}

/// Keep a copy of `seq` (holding `tokens`) in memory under `key`.
fn remember_prefix(seq: u32, key: &str, tokens: &[Token]) {
    let Ok(snapshot) = inf::KvSnapshot::take(seq) else { return };
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.prefixes.retain(|p| p.key != key);
        s.prefixes.push(PrefixSnapshot { key: key.to_owned(), tokens: tokens.to_vec(), snapshot });
        while s.prefixes.len() > MAX_PREFIX_SNAPSHOTS {
            s.prefixes.remove(0);
        }
    });
}

/// Start a background warmup of the loaded model.
fn start_warmup() -> Option<files::Warmup> {
    let source = STATE.with(|s| s.borrow().loaded.as_ref().map(|l| l.source.clone()))?;
    Some(files::Warmup::new(&source))
}

/// Whether a background warmup is still running.
fn warmup_running() -> bool {
    STATE.with(|s| {
        s.borrow().warmup.as_ref().is_some_and(|w| matches!(w.wait(0), Ok(files::WarmupState::Running(_))))
    })
}

/// The loaded model, as the guest sees it.
struct Loaded {
    profile: Rc<ModelProfile>,
    source: types::ModelSource,
    /// Key of tuned settings for this model.
    key: String,
}

#[derive(Default)]
struct State {
    loaded: Option<Loaded>,
    loads: u64,
    seq_in_use: Vec<bool>,
    /// The background warmup started after load or by `prepare`.
    warmup: Option<files::Warmup>,
    /// Prompt-prefix states in memory (most recent last).
    prefixes: Vec<PrefixSnapshot>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn app_error(e: SessionError) -> api::AppError {
    match e {
        SessionError::NotReady => api::AppError::NotReady,
        SessionError::Busy => api::AppError::Busy,
        SessionError::InputTooLong { tokens, limit } => {
            api::AppError::InputTooLong(api::InputTooLong { tokens, limit })
        }
        SessionError::Template(template::TemplateError::Missing(s)) => api::AppError::NoChatTemplate(s),
        SessionError::Template(template::TemplateError::Render(s)) => api::AppError::InvalidArgument(s),
        SessionError::InvalidArgument(s) => api::AppError::InvalidArgument(s),
        SessionError::Engine(EngineError::NoModel) => api::AppError::NotReady,
        SessionError::Engine(e) => api::AppError::Inference(e.to_string()),
    }
}

fn current_profile() -> Result<Rc<ModelProfile>, api::AppError> {
    STATE.with(|s| s.borrow().loaded.as_ref().map(|l| l.profile.clone())).ok_or(api::AppError::NotReady)
}

/// Pick load settings: explicit options win, then tuned values from
/// settings.json, then the device policy (CPU topology, memory fit).
fn load_settings(
    o: &api::LoadOptions,
    shape: &inf::ModelShape,
) -> Result<(inf::LoadSettings, device::Threads, Vec<String>), api::AppError> {
    let topo = platform::read_cpu_topology();
    let cores: Vec<device::Core> = topo
        .cores
        .iter()
        .map(|c| device::Core {
            id: c.id,
            online: c.online,
            max_freq_khz: c.max_freq_khz,
            capacity: c.capacity,
            cluster: c.cluster,
        })
        .collect();
    let key = settings::model_key(&shape.file_name, shape.file_size);
    let tuned = settings::Settings::load(std::path::Path::new(STATE_DIR))
        .tuned_threads
        .get(&key)
        .map(|t| (t.decode, t.batch));
    let threads = device::choose_threads(&cores, topo.online, tuned, o.threads, o.threads_batch);
    let n_batch = o.n_batch.unwrap_or(DEFAULT_N_BATCH);
    let mut notes = Vec::new();
    let n_ctx = match o.n_ctx {
        Some(n) => n,
        None => {
            let mem = platform::read_memory();
            let fit_shape = memfit::Shape {
                file_size: shape.file_size,
                n_layer: shape.n_layer,
                n_head_kv: shape.n_head_kv,
                head_dim: shape.head_dim,
                n_embd: shape.n_embd,
                n_vocab: shape.n_vocab,
            };
            match memfit::choose(
                &fit_shape,
                mem.available,
                mem.total,
                SEQUENCES,
                n_batch.min(512),
                shape.n_ctx_train,
            ) {
                memfit::Fit::Fits { n_ctx, need, available } => {
                    notes.push(format!(
                        "context {n_ctx} per session: {} MiB needed, {} MiB available",
                        memfit::mib(need),
                        memfit::mib(available)
                    ));
                    n_ctx
                }
                memfit::Fit::Tight { n_ctx, need, available } => {
                    notes.push(format!(
                        "low memory: {} MiB needed with context {n_ctx}, {} MiB available; expect slow replies",
                        memfit::mib(need),
                        memfit::mib(available)
                    ));
                    n_ctx
                }
                memfit::Fit::TooBig { need, total } => {
                    return Err(api::AppError::LoadFailed(format!(
                        "{} needs {} MiB of memory; this device has {} MiB",
                        shape.file_name,
                        memfit::mib(need),
                        memfit::mib(total)
                    )));
                }
            }
        }
    };
    let settings = inf::LoadSettings {
        n_ctx,
        n_batch,
        n_seq_max: SEQUENCES,
        threads: threads.decode,
        threads_batch: threads.batch,
        use_mmap: o.use_mmap.unwrap_or(true),
    };
    Ok((settings, threads, notes))
}

/// The guest's folders, as preopened by the host.
const MODELS_DIR: &str = "/models";
const STATE_DIR: &str = "/state";

/// Model setup through the host's jobs and the preopened folders.
struct HostSetupIo;

struct HostTransfer(dl::Transfer);
struct HostHasher(files::Hasher);

impl setup::Transfer for HostTransfer {
    fn wait(&self, ms: u32) -> Result<setup::TransferPoll, setup::DownloadError> {
        use setup::DownloadError as E;
        match self.0.wait(ms) {
            Ok(dl::TransferState::Running(p)) => {
                Ok(setup::TransferPoll::Running { done: p.done, total: p.total })
            }
            Ok(dl::TransferState::Finished(f)) => {
                Ok(setup::TransferPoll::Finished { bytes: f.bytes, sha256: f.sha256 })
            }
            Err(e) => Err(match e {
                dl::DownloadError::NoNetwork(m) => E::NoNetwork(m),
                dl::DownloadError::NotFound(s) => E::NotFound(s),
                dl::DownloadError::HttpError(s) => E::Http(s),
                dl::DownloadError::Interrupted(m) => E::Interrupted(m),
                dl::DownloadError::SizeMismatch(m) => {
                    E::SizeMismatch { server: m.server, expected: m.expected }
                }
                dl::DownloadError::DiskFull => E::DiskFull,
                dl::DownloadError::Io(m) => E::Io(m),
                dl::DownloadError::Cancelled => E::Cancelled,
            }),
        }
    }
    fn cancel(&self) {
        self.0.cancel()
    }
}

impl setup::Hasher for HostHasher {
    fn wait(&self, ms: u32) -> Result<setup::HashPoll, String> {
        match self.0.wait(ms) {
            Ok(files::HashState::Running(p)) => Ok(setup::HashPoll::Running(p.done, p.total)),
            Ok(files::HashState::Done(h)) => Ok(setup::HashPoll::Done(h)),
            Err(files::FileError::Cancelled) => Err("cancelled".into()),
            Err(files::FileError::NotFound(m) | files::FileError::Io(m)) => Err(m),
        }
    }
    fn cancel(&self) {
        self.0.cancel()
    }
}

impl setup::SetupIo for HostSetupIo {
    type Transfer = HostTransfer;
    type Hasher = HostHasher;
    fn models_dir(&self) -> std::path::PathBuf {
        MODELS_DIR.into()
    }
    fn state_dir(&self) -> std::path::PathBuf {
        STATE_DIR.into()
    }
    fn free_space(&self) -> Result<u64, String> {
        platform::free_space(types::Root::Models)
    }
    fn transfer(&self, url: &str, part_name: &str, expected_size: u64) -> HostTransfer {
        HostTransfer(dl::Transfer::new(&dl::Request {
            url: url.to_owned(),
            dest: types::FileRef { root: types::Root::Models, name: part_name.to_owned() },
            expected_size: Some(expected_size),
        }))
    }
    fn hasher(&self, file_name: &str) -> HostHasher {
        HostHasher(files::Hasher::new(&types::ModelSource::Managed(file_name.to_owned())))
    }
    fn cancel_requested(&self) -> bool {
        platform::cancel_requested()
    }
}

fn setup_error(e: setup::SetupError) -> api::SetupError {
    use setup::SetupError as E;
    match e {
        E::NoNetwork(m) => api::SetupError::NoNetwork(m),
        E::NotFound(s) => api::SetupError::NotFound(s),
        E::Http(s) => api::SetupError::HttpError(s),
        E::InsufficientStorage { needed, available } => {
            api::SetupError::InsufficientStorage(api::Storage { needed, available })
        }
        E::VerificationFailed(m) => api::SetupError::VerificationFailed(m),
        E::Cancelled => api::SetupError::Cancelled,
        E::Io(m) => api::SetupError::Io(m),
        E::InvalidSpec(m) => api::SetupError::InvalidSpec(m),
        E::NotDownloaded => api::SetupError::NotDownloaded,
    }
}

fn setup_progress(p: setup::Progress) -> api::SetupProgress {
    api::SetupProgress {
        done: p.done,
        total: p.total,
        bytes_per_s: p.bytes_per_s,
        eta_s: p.eta_s,
        attempt: p.attempt,
    }
}

/// The exported `model-setup` resource.
pub struct ModelSetupResource {
    setup: RefCell<setup::Setup<HostSetupIo>>,
}

impl api::GuestModelSetup for ModelSetupResource {
    fn new(spec_json: Option<String>, allow_download: bool, force_verify: bool) -> Self {
        let spec = spec::ModelSpec::resolve(spec_json.as_deref());
        ModelSetupResource {
            setup: RefCell::new(setup::Setup::new(HostSetupIo, spec, allow_download, force_verify)),
        }
    }

    fn step(&self) -> api::SetupState {
        match self.setup.borrow_mut().step() {
            setup::State::Checking => api::SetupState::Checking,
            setup::State::Preflight => api::SetupState::Preflight,
            setup::State::Downloading(p) => api::SetupState::Downloading(setup_progress(p)),
            setup::State::Verifying(p) => api::SetupState::Verifying(setup_progress(p)),
            setup::State::Ready(r) => api::SetupState::Ready(api::ModelReady {
                file_name: r.file_name,
                size: r.size,
                verified_by: match r.verified_by {
                    setup::VerifiedBy::Record => api::VerifiedBy::SavedRecord,
                    setup::VerifiedBy::Hashing => api::VerifiedBy::Hashing,
                    setup::VerifiedBy::Download => api::VerifiedBy::Download,
                },
                downloaded: r.downloaded,
                removed: r.removed,
            }),
            setup::State::Failed(e) => api::SetupState::Failed(setup_error(e)),
        }
    }
}

struct Component;

impl api::Guest for Component {
    type Session = SessionResource;
    type Generation = GenerationResource;
    type ModelSetup = ModelSetupResource;

    fn resolve_spec(spec_json: Option<String>) -> Result<api::ModelSpec, api::SetupError> {
        let s = spec::ModelSpec::resolve(spec_json.as_deref()).map_err(api::SetupError::InvalidSpec)?;
        Ok(api::ModelSpec {
            display_size: s.display_size(),
            free_space_needed: s.free_space_needed(),
            min_total_ram: s.min_total_ram,
            url: s.url,
            file_name: s.file_name,
            size: s.size,
            sha256: s.sha256,
        })
    }

    fn load_model(options: api::LoadOptions) -> Result<api::LoadReport, api::AppError> {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.loaded = None;
            s.warmup = None;
            s.prefixes.clear();
            s.seq_in_use = vec![false; SEQUENCES as usize];
        });
        let shape = inf::inspect(&options.source)
            .map_err(|e| api::AppError::LoadFailed(engine_error(e).to_string()))?;
        let (settings, threads, notes) = load_settings(&options, &shape)?;
        let info = inf::load(&options.source, settings).map_err(|e| match e {
            inf::InferenceError::LoadFailed(m) => api::AppError::LoadFailed(m),
            other => api::AppError::LoadFailed(engine_error(other).to_string()),
        })?;
        let special_text = |t: Option<Token>| {
            t.map(|t| String::from_utf8_lossy(&inf::token_bytes(t, true)).into_owned()).unwrap_or_default()
        };
        let facts = ModelFacts {
            architecture: info.architecture.clone(),
            chat_template: info.chat_template.clone(),
            bos: info.bos,
            eos: info.eos,
            add_bos: info.add_bos,
            bos_text: special_text(info.bos),
            eos_text: special_text(info.eos),
            n_ctx: info.settings.n_ctx,
            cache_id: format!("{}|{}", prefix_model_id(&info, &options.source), info.llama_version),
        };
        let load_id = STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.loads += 1;
            s.loads
        });
        // A model without a usable chat format still loads; sessions then
        // report the missing template when they are used.
        let profile =
            ModelProfile::new(&HostEngine, &facts, load_id).map_err(|e| app_error(SessionError::Template(e)));
        let profile = match profile {
            Ok(p) => p,
            Err(e) => {
                inf::unload();
                return Err(e);
            }
        };
        let key = settings::model_key(&shape.file_name, shape.file_size);
        STATE.with(|s| {
            s.borrow_mut().loaded =
                Some(Loaded { profile: Rc::new(profile), source: options.source.clone(), key })
        });
        // The app is ready now; the pages come in behind it.
        let warmup = start_warmup();
        STATE.with(|s| s.borrow_mut().warmup = warmup);
        Ok(api::LoadReport { info, threads_source: threads.source.as_str().to_owned(), notes })
    }

    fn save_tuned_threads(decode: u32, batch: u32) -> Result<(), api::AppError> {
        if decode == 0 || batch == 0 {
            return Err(api::AppError::InvalidArgument("thread counts must be at least 1".into()));
        }
        let key = STATE
            .with(|s| s.borrow().loaded.as_ref().map(|l| l.key.clone()))
            .ok_or(api::AppError::NotReady)?;
        settings::update(std::path::Path::new(STATE_DIR), |s| {
            s.tuned_threads.insert(key, settings::TunedThreads { decode, batch });
        })
        .map_err(|e| api::AppError::Io(format!("settings.json: {e}")))
    }

    fn render_prompt(
        messages: Vec<api::Message>,
        add_generation_prompt: bool,
    ) -> Result<api::RenderedPrompt, api::AppError> {
        let profile = current_profile()?;
        let mut msgs = Vec::with_capacity(messages.len());
        for m in &messages {
            let role = Role::parse(&m.role).ok_or_else(|| {
                api::AppError::InvalidArgument(format!("unknown role `{}` (system, user, assistant)", m.role))
            })?;
            msgs.push((role, m.content.as_str()));
        }
        let (text, tokens) =
            session::render_prompt(&HostEngine, &profile, &msgs, add_generation_prompt).map_err(app_error)?;
        Ok(api::RenderedPrompt { text, tokens })
    }
}

/// A session and the KV sequence it leases; the lease ends when the last
/// holder (the session handle or a generation) is dropped.
struct Shared {
    session: RefCell<Session>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let s = self.session.get_mut();
        let seq = s.seq();
        let load_id = s.profile().load_id;
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            let current = state.loaded.as_ref().map(|l| l.profile.load_id);
            if current == Some(load_id) {
                HostEngine.kv_clear(seq);
                if let Some(slot) = state.seq_in_use.get_mut(seq as usize) {
                    *slot = false;
                }
            }
        });
    }
}

/// The exported `session` resource.
pub struct SessionResource {
    shared: Rc<Shared>,
}

impl api::GuestSession for SessionResource {
    fn open(kind: api::SessionKind) -> Result<api::Session, api::AppError> {
        let profile = current_profile()?;
        let seq = STATE.with(|s| {
            let mut s = s.borrow_mut();
            let free = s.seq_in_use.iter().position(|used| !used)?;
            s.seq_in_use[free] = true;
            Some(free as u32)
        });
        let seq = seq.ok_or(api::AppError::Busy)?;
        HostEngine.kv_clear(seq);
        let kind = match kind {
            api::SessionKind::Chat => SessionKind::Chat,
            api::SessionKind::Translation => SessionKind::Translation,
        };
        let session = Session::new(kind, seq, profile);
        Ok(api::Session::new(SessionResource { shared: Rc::new(Shared { session: RefCell::new(session) }) }))
    }

    fn configure(&self, o: api::SessionOptions) -> Result<(), api::AppError> {
        let mut s = self.shared.session.borrow_mut();
        let mut opts = s.options().clone();
        if let Some(v) = o.max_tokens {
            opts.max_tokens = v;
        }
        if let Some(v) = o.temperature {
            opts.sampler.temperature = v;
        }
        if let Some(v) = o.top_k {
            opts.sampler.top_k = v;
        }
        if let Some(v) = o.top_p {
            opts.sampler.top_p = v;
        }
        if let Some(v) = o.min_p {
            opts.sampler.min_p = v;
        }
        if let Some(v) = o.repeat_penalty {
            opts.sampler.repeat_penalty = v;
        }
        if let Some(v) = o.seed {
            opts.sampler.seed = v;
        }
        if let Some(v) = o.stop_strings {
            opts.stop_strings = v;
        }
        if let Some(v) = o.system_prompt {
            opts.system_prompt = Some(v);
        }
        if let Some(v) = o.rewarm {
            opts.rewarm = v;
        }
        if let Some(v) = o.prefix_cache {
            opts.prefix_cache = v;
        }
        if let Some(biases) = o.logit_bias {
            opts.sampler.logit_bias = biases
                .iter()
                .map(|(text, bias)| {
                    HostEngine.token_id(text).map(|t| (t, *bias)).ok_or_else(|| {
                        api::AppError::InvalidArgument(format!(
                            "`{text}` is not a single token of this model"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        s.set_options(opts).map_err(app_error)
    }

    fn set_languages(&self, source: Option<String>, target: String) -> Result<(), api::AppError> {
        self.shared.session.borrow_mut().set_languages(source.as_deref(), &target).map_err(app_error)
    }

    fn send(&self, text: String) -> Result<api::Generation, api::AppError> {
        let generation = self.shared.session.borrow_mut().send(&HostEngine, &text).map_err(app_error)?;
        Ok(api::Generation::new(GenerationResource {
            shared: self.shared.clone(),
            generation: RefCell::new(generation),
        }))
    }

    fn reset(&self) {
        self.shared.session.borrow_mut().reset(&HostEngine);
    }

    fn history(&self) -> Vec<api::Message> {
        self.shared
            .session
            .borrow()
            .history()
            .into_iter()
            .map(|(role, content)| api::Message { role: role.as_str().to_owned(), content })
            .collect()
    }

    fn kv_tokens(&self) -> u32 {
        self.shared.session.borrow().kv_tokens() as u32
    }

    fn kv_token_ids(&self) -> Vec<Token> {
        self.shared.session.borrow().kv_token_ids().to_vec()
    }

    fn prepare(&self) -> bool {
        if warmup_running() {
            return false;
        }
        let low = HostEngine.residency().is_some_and(|r| r < session::REWARM_BELOW);
        if low {
            HostEngine.warm_up_background();
        }
        low
    }
}

/// The exported `generation` resource.
pub struct GenerationResource {
    shared: Rc<Shared>,
    generation: RefCell<session::Generation<HostSampler>>,
}

impl api::GuestGeneration for GenerationResource {
    fn next(&self) -> Result<Option<String>, api::AppError> {
        let mut session = self.shared.session.borrow_mut();
        self.generation.borrow_mut().next(&mut session, &HostEngine).map_err(app_error)
    }

    fn stats(&self) -> Option<api::GenerationStats> {
        let g = self.generation.borrow();
        let s = g.stats()?;
        Some(api::GenerationStats {
            stop: match s.stop {
                StopReason::EndOfGeneration => api::StopReason::EndOfGeneration,
                StopReason::MaxTokens => api::StopReason::MaxTokens,
                StopReason::StopString => api::StopReason::StopString,
                StopReason::Cancelled => api::StopReason::Cancelled,
            },
            prompt_tokens: s.prompt_tokens,
            generated_tokens: s.generated_tokens,
            kv_tokens: s.kv_tokens,
            dropped_turns: s.dropped_turns,
            ttft_ms: s.ttft_ms,
            prompt_ms: s.prompt_ms,
            decode_ms: s.decode_ms,
            prompt_tokens_per_s: s.prompt_tokens_per_s(),
            decode_tokens_per_s: s.decode_tokens_per_s(),
            residency: s.residency,
            warmup_ms: s.warmup_ms,
            prefix_cached: s.prefix_cached,
        })
    }
}

impl Drop for GenerationResource {
    fn drop(&mut self) {
        // A reply the app stopped pulling still ends up in the history.
        let mut session = self.shared.session.borrow_mut();
        self.generation.get_mut().finish(&mut session, StopReason::Cancelled);
    }
}

export!(Component);
