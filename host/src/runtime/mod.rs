//! The runtime: one guest instance in a wasmtime store, with its imports,
//! and the app-facing calls into it. A guest is untrusted: it runs under
//! the limits of [`Limits`], downloads under the [`NetworkPolicy`], and a
//! guest that traps is stopped and must be restarted; the host goes on.

pub mod clock;
mod store;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{ResourceAny, ResourceTable};
use wasmtime::{Store, UpdateDeadline};

pub use store::engine;
pub use stream::Reply;

use self::clock::CallClock;
use self::store::StoreData;
use crate::bindings::Bittybot;
use crate::bindings::app::{
    AppError, GenerationStats, LoadOptions, LoadReport, Message, ModelSpec, RenderedPrompt, SessionKind,
    SessionOptions, SetupError, SetupState,
};
use crate::errors::RuntimeError;
use crate::fs::Folders;
use crate::guest::{ComponentCache, ComponentReport, GuestError, GuestPolicy, GuestSource, check_compatible};
use crate::imports::TypesCtx;
use crate::imports::download::DownloadCtx;
use crate::imports::files::FilesCtx;
use crate::imports::inference::InferenceCtx;
use crate::imports::platform::PlatformCtx;
use crate::imports::storage::StorageCtx;
use crate::limits::Limits;
use crate::llama::Engine as LlamaEngine;
use crate::llama::ffi::AbortFlag;
use crate::net::NetworkPolicy;

/// Settings of a runtime.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// The app's data directory (`models/`, `state/`, `cache/` under it).
    pub data_dir: PathBuf,
    /// The guest to run.
    pub guest: GuestSource,
    /// A model file the guest may load as `provided`.
    pub model: Option<PathBuf>,
    /// Where compiled guests are cached (default `data_dir/cache`).
    pub cache_dir: Option<PathBuf>,
    /// What the guest may make the host do.
    pub limits: Limits,
    /// What the guest may download from.
    pub network: NetworkPolicy,
    /// Read the CPU topology from here instead of sysfs (tests).
    pub sysfs_cpu: Option<PathBuf>,
    /// What a guest must satisfy before it is compiled (pinned hash, signature).
    pub policy: GuestPolicy,
}

impl RuntimeOptions {
    /// Defaults: the built-in guest, the default limits and network policy.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        RuntimeOptions {
            data_dir: data_dir.into(),
            guest: GuestSource::builtin(),
            model: None,
            cache_dir: None,
            limits: Limits::default(),
            network: NetworkPolicy::default(),
            sysfs_cpu: None,
            policy: GuestPolicy::default(),
        }
    }
}

/// Set by the app (any thread) to cancel what the guest is doing.
#[derive(Debug, Clone)]
pub struct CancelHandle(AbortFlag);

impl CancelHandle {
    /// Ask the guest to stop; it notices within one token (a prompt being
    /// evaluated stops inside llama.cpp).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a cancellation is pending.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Figures of a runtime start.
#[derive(Debug, Clone)]
pub struct StartReport {
    /// The component load (cache hit or compile).
    pub component: ComponentReport,
    /// Linking and instantiation, ms.
    pub instantiate_ms: f64,
    /// The whole start, ms.
    pub total_ms: f64,
}

/// A chat or translation session inside the guest.
#[derive(Debug)]
pub struct Session(ResourceAny);

/// A reply being generated.
#[derive(Debug)]
pub struct Generation(ResourceAny);

/// A model setup in progress.
#[derive(Debug)]
pub struct ModelSetup(ResourceAny);

/// A running guest with its inference engine.
pub struct Runtime {
    store: Store<StoreData>,
    bindings: Bittybot,
    cancel: AbortFlag,
    report: StartReport,
    options: RuntimeOptions,
    /// The last successful model load, repeated after a guest swap.
    last_load: Option<LoadOptions>,
    /// Set when the guest trapped: the instance must not be entered again.
    poisoned: Option<String>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("guest", &self.options.guest).finish_non_exhaustive()
    }
}

/// A sentence for a guest trap: what the limit was, or what the guest did.
fn describe_trap(e: &wasmtime::Error, memory_limit: usize) -> String {
    let chain = format!("{e:#}");
    if chain.contains("memory growth failure") || chain.contains("growing memory") {
        format!("the guest exceeded its memory limit of {} MiB ({chain})", memory_limit >> 20)
    } else if chain.contains("in one call (budget") {
        format!("the guest was stopped: {chain}")
    } else if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::UnreachableCodeReached) {
        format!("the guest panicked or reached unreachable code ({chain})")
    } else {
        chain
    }
}

impl Runtime {
    /// Start a runtime: load (or compile) the guest, instantiate it, start
    /// the engine (no model loaded yet).
    pub fn start(options: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        Self::start_with(options, Arc::new(AtomicBool::new(false)))
    }

    fn start_with(options: RuntimeOptions, cancel: AbortFlag) -> Result<Runtime, RuntimeError> {
        let start = Instant::now();
        let engine = engine();
        let label = options.guest.label().to_owned();
        // Integrity first: a tampered guest is refused before it is compiled.
        options.policy.check(&options.guest)?;
        let mut limits = options.limits.clone();
        if limits.threads == 0 {
            let sysfs = options.sysfs_cpu.clone().unwrap_or_else(|| crate::device::SYSFS_CPU.into());
            let parallel = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            limits.threads = crate::device::cpu_topology_at(&sysfs).online.max(parallel);
        }
        let limits = &limits;
        let folders =
            Folders::open(&options.data_dir, options.model.clone(), limits.models_quota, limits.state_quota)
                .map_err(|e| {
                    RuntimeError::Setup(format!("cannot create {}: {e}", options.data_dir.display()))
                })?;
        let cache =
            ComponentCache::new(options.cache_dir.clone().unwrap_or_else(|| options.data_dir.join("cache")));
        let (component, component_report) = cache.load(engine, &options.guest)?;
        check_compatible(engine, &component, &label)?;

        let t_inst = Instant::now();
        let llama = LlamaEngine::start(limits);
        let linker = store::linker(engine)
            .map_err(|e| GuestError::Instantiate { label: label.clone(), reason: format!("{e:#}") })?;
        let clock = CallClock::new(limits.call_time, limits.call_wall_time);
        let data = StoreData {
            wasi: store::wasi(),
            table: ResourceTable::new(),
            inference: InferenceCtx::new(
                llama,
                folders.clone(),
                limits.clone(),
                cancel.clone(),
                clock.clone(),
            ),
            platform: PlatformCtx::new(cancel.clone(), options.sysfs_cpu.clone(), folders.clone()),
            storage: StorageCtx::new(folders.clone(), limits.clone(), clock.clone()),
            files: FilesCtx::new(folders.clone(), limits.clone(), cancel.clone(), clock.clone()),
            download: DownloadCtx::new(
                folders,
                limits.clone(),
                options.network.clone(),
                cancel.clone(),
                clock.clone(),
            ),
            types: TypesCtx,
            limits: store::store_limits(limits.guest_memory),
            clock,
        };
        let mut store = Store::new(engine, data);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| match ctx.data().clock.over_budget() {
            Some(why) => Err(wasmtime::Error::msg(why)),
            None => Ok(UpdateDeadline::Continue(1)),
        });
        store.set_epoch_deadline(1);
        let bindings = Bittybot::instantiate(&mut store, &component, &linker).map_err(|e| {
            let reason = format!("{e:#}");
            if reason.contains("import") || reason.contains("export") {
                GuestError::Incompatible { label: label.clone(), reason }
            } else {
                GuestError::Instantiate { label: label.clone(), reason }
            }
        })?;
        let instantiate_ms = t_inst.elapsed().as_secs_f64() * 1000.0;
        Ok(Runtime {
            store,
            bindings,
            cancel,
            report: StartReport {
                component: component_report,
                instantiate_ms,
                total_ms: start.elapsed().as_secs_f64() * 1000.0,
            },
            options,
            last_load: None,
            poisoned: None,
        })
    }

    /// Run another guest in place of this one, without restarting the app:
    /// the new guest is checked (policy, WIT version), compiled or taken from
    /// the cache, instantiated, and given the model this runtime had loaded.
    /// Only then does it replace the old one; on any failure the old guest
    /// keeps running. Sessions and generations of the old guest end (open new
    /// ones); `state/` (settings, verified records) carries over; cancel
    /// handles stay valid.
    pub fn swap_guest(&mut self, guest: GuestSource) -> Result<StartReport, RuntimeError> {
        let mut options = self.options.clone();
        options.guest = guest;
        let mut fresh = Runtime::start_with(options, self.cancel.clone())?;
        if let Some(load) = self.last_load.clone() {
            fresh.load_model(&load)?;
        }
        let report = fresh.report.clone();
        *self = fresh;
        Ok(report)
    }

    /// Start the same guest afresh (after it failed).
    pub fn restart(&mut self) -> Result<StartReport, RuntimeError> {
        self.swap_guest(self.options.guest.clone())
    }

    /// Change the guest time one call may take (also for guests swapped in later).
    pub fn set_call_time(&mut self, limit: Duration) {
        self.options.limits.call_time = limit;
        self.store.data().clock.set_budget(limit);
    }

    /// The limits in effect.
    pub fn limits(&self) -> &Limits {
        &self.options.limits
    }

    /// The network policy in effect (it applies to transfers started from now on
    /// after [`Runtime::swap_guest`] or a restart; set it in [`RuntimeOptions`]).
    pub fn network_policy(&self) -> &NetworkPolicy {
        &self.options.network
    }

    /// How the start went.
    pub fn start_report(&self) -> &StartReport {
        &self.report
    }

    /// The guest this runtime runs.
    pub fn guest(&self) -> &GuestSource {
        &self.options.guest
    }

    /// A handle the app can use from any thread to cancel.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(self.cancel.clone())
    }

    /// One call into the guest: refuse when it failed before, restart the
    /// call's clock, and turn a trap into a poisoned runtime with a clear error.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&Bittybot, &mut Store<StoreData>) -> wasmtime::Result<T>,
    ) -> Result<T, RuntimeError> {
        if let Some(why) = &self.poisoned {
            return Err(RuntimeError::Trap(format!("the guest failed earlier and must be restarted: {why}")));
        }
        self.store.data().clock.start_call();
        self.store.set_epoch_deadline(1);
        f(&self.bindings, &mut self.store).map_err(|e| {
            let why = describe_trap(&e, self.options.limits.guest_memory);
            self.poisoned = Some(why.clone());
            RuntimeError::Trap(why)
        })
    }

    fn call_app<T>(
        &mut self,
        f: impl FnOnce(&Bittybot, &mut Store<StoreData>) -> wasmtime::Result<Result<T, AppError>>,
    ) -> Result<T, RuntimeError> {
        self.call(f)?.map_err(RuntimeError::App)
    }

    /// Load a model; the guest fills in settings the options leave open.
    pub fn load_model(&mut self, options: &LoadOptions) -> Result<LoadReport, RuntimeError> {
        let report = self.call_app(|b, st| b.bittybot_core_app().call_load_model(st, options)).map_err(
            |e| match e {
                // The guest knows the provided model by its file name only; the
                // host's caller gave the path, so its error names the path.
                RuntimeError::App(AppError::LoadFailed(m)) => match &self.options.model {
                    Some(path) => {
                        let name =
                            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        let from = format!("the provided model {name}");
                        RuntimeError::App(AppError::LoadFailed(
                            m.replace(&from, &format!("the provided model {}", path.display())),
                        ))
                    }
                    None => RuntimeError::App(AppError::LoadFailed(m)),
                },
                e => e,
            },
        )?;
        self.last_load = Some(options.clone());
        Ok(report)
    }

    /// The model spec in effect (built in, or the override JSON).
    pub fn resolve_spec(&mut self, spec_json: Option<&str>) -> Result<ModelSpec, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().call_resolve_spec(st, spec_json))?
            .map_err(RuntimeError::ModelSetup)
    }

    /// Whether a file of `size` bytes hashing to `sha256` is the spec's model (the guest decides).
    pub fn verify_digest(
        &mut self,
        spec_json: Option<&str>,
        size: u64,
        sha256: &str,
    ) -> Result<ModelSpec, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().call_verify_digest(st, spec_json, size, sha256))?
            .map_err(RuntimeError::ModelSetup)
    }

    /// Start getting the model onto the device; drive it with [`Runtime::setup_step`].
    /// Clears any earlier cancellation request.
    pub fn begin_setup(
        &mut self,
        spec_json: Option<&str>,
        allow_download: bool,
        force_verify: bool,
    ) -> Result<ModelSetup, RuntimeError> {
        self.cancel.store(false, Ordering::Relaxed);
        self.call(|b, st| {
            b.bittybot_core_app().model_setup().call_constructor(st, spec_json, allow_download, force_verify)
        })
        .map(ModelSetup)
    }

    /// One step of a model setup (returns within about a quarter of a second).
    pub fn setup_step(&mut self, setup: &ModelSetup) -> Result<SetupState, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().model_setup().call_step(st, setup.0))
    }

    /// Release a model setup.
    pub fn close_setup(&mut self, setup: ModelSetup) -> Result<(), RuntimeError> {
        self.call(|_, st| setup.0.resource_drop(st))
    }

    /// Render messages with the loaded model's chat format.
    pub fn render_prompt(
        &mut self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<RenderedPrompt, RuntimeError> {
        self.call_app(|b, st| b.bittybot_core_app().call_render_prompt(st, messages, add_generation_prompt))
    }

    /// Open a session.
    pub fn open_session(&mut self, kind: SessionKind) -> Result<Session, RuntimeError> {
        self.call_app(|b, st| b.bittybot_core_app().session().call_open(st, kind)).map(Session)
    }

    /// Change a session's generation settings.
    pub fn configure(&mut self, session: &Session, options: &SessionOptions) -> Result<(), RuntimeError> {
        self.call_app(|b, st| b.bittybot_core_app().session().call_configure(st, session.0, options))
    }

    /// Set a translation session's language pair.
    pub fn set_languages(
        &mut self,
        session: &Session,
        source: Option<&str>,
        target: &str,
    ) -> Result<(), RuntimeError> {
        self.call_app(|b, st| {
            b.bittybot_core_app().session().call_set_languages(st, session.0, source, target)
        })
    }

    /// Send a message; pull the reply with [`Runtime::next`] (or use
    /// [`Runtime::reply`], which does the whole turn). Clears any earlier
    /// cancellation request.
    pub fn send(&mut self, session: &Session, text: &str) -> Result<Generation, RuntimeError> {
        self.cancel.store(false, Ordering::Relaxed);
        self.call_app(|b, st| b.bittybot_core_app().session().call_send(st, session.0, text)).map(Generation)
    }

    /// The next visible text of a reply; `None` at the end.
    pub fn next(&mut self, generation: &Generation) -> Result<Option<String>, RuntimeError> {
        self.call_app(|b, st| b.bittybot_core_app().generation().call_next(st, generation.0))
    }

    /// Figures of a finished reply.
    pub fn stats(&mut self, generation: &Generation) -> Result<Option<GenerationStats>, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().generation().call_stats(st, generation.0))
    }

    /// Release a generation (an unfinished reply is ended and kept in the history).
    pub fn close_generation(&mut self, generation: Generation) -> Result<(), RuntimeError> {
        self.call(|_, st| generation.0.resource_drop(st))
    }

    /// Forget a session's history and KV.
    pub fn reset(&mut self, session: &Session) -> Result<(), RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().session().call_reset(st, session.0))
    }

    /// The conversation as the app shows it.
    pub fn history(&mut self, session: &Session) -> Result<Vec<Message>, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().session().call_history(st, session.0))
    }

    /// The tokens in a session's KV sequence.
    pub fn kv_token_ids(&mut self, session: &Session) -> Result<Vec<i32>, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().session().call_kv_token_ids(st, session.0))
    }

    /// Tokens in a session's KV sequence.
    pub fn kv_tokens(&mut self, session: &Session) -> Result<u32, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().session().call_kv_tokens(st, session.0))
    }

    /// Hint that the user is about to send: re-warm evicted model pages in
    /// the background. True if a warmup started.
    pub fn prepare(&mut self, session: &Session) -> Result<bool, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().session().call_prepare(st, session.0))
    }

    /// Store thread counts measured best for the loaded model (used by its next load).
    pub fn save_tuned_threads(&mut self, decode: u32, batch: u32) -> Result<(), RuntimeError> {
        self.call_app(|b, st| b.bittybot_core_app().call_save_tuned_threads(st, decode, batch))
    }

    /// Release a session and its KV sequence.
    pub fn close_session(&mut self, session: Session) -> Result<(), RuntimeError> {
        self.call(|_, st| session.0.resource_drop(st))
    }

    /// The loaded model's file on the host.
    pub fn model_path(&self) -> Option<&Path> {
        self.store.data().inference.model_path()
    }

    /// Fraction of the loaded model's pages in memory.
    pub fn model_residency(&self) -> Option<f32> {
        let file = std::fs::File::open(self.model_path()?).ok()?;
        crate::warmup::residency(&file).ok()
    }

    /// Host bytes the guest's objects hold (sampler chains, snapshots).
    pub fn host_memory_held(&self) -> u64 {
        self.store.data().inference.objects_held()
    }
}

/// Hooks for the integration tests, behind the `test-hooks` feature (never
/// in a shipping build): they look past the guest.
#[cfg(feature = "test-hooks")]
impl Runtime {
    /// The id of the token spelled exactly `text` in the loaded model.
    pub fn token_id(&mut self, text: &str) -> Option<i32> {
        self.store.data().inference.token_id_of(text)
    }

    /// Whether a token of the loaded model is a control token.
    pub fn is_control_token(&mut self, token: i32) -> bool {
        self.store.data().inference.is_control_token(token)
    }

    /// Make the guest see this much free space (tests of the storage preflight).
    pub fn set_free_space_override(&mut self, bytes: Option<u64>) {
        self.store.data_mut().platform.free_space_override = bytes;
    }

    /// Push the loaded model's pages out of memory, as the phone's kernel
    /// does after idle. Returns the residency afterwards.
    pub fn evict_model(&self) -> Result<f32, RuntimeError> {
        let path = self.model_path().ok_or(RuntimeError::App(AppError::NotReady))?;
        crate::warmup::evict(path).map_err(|e| RuntimeError::Setup(e.to_string()))
    }

    /// Hash jobs the guest has started in this runtime (the verified fast path starts none).
    pub fn hashes_started(&self) -> u64 {
        self.store.data().files.hashes_started
    }
}

impl From<SetupError> for RuntimeError {
    fn from(e: SetupError) -> Self {
        RuntimeError::ModelSetup(e)
    }
}
