//! The runtime: one guest instance in a wasmtime store, with its imports,
//! and the app-facing calls into it.
//!
//! The guest gets only what WASI p2 gives by default minus the ambient
//! parts: no network, no environment, no arguments, its stdout and stderr
//! go to the host's stderr, and (once the distribution code needs them) the
//! `models/` and `state/` folders. A memory cap and a per-call budget of
//! guest CPU time keep a faulty guest from taking the app down.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, ResourceAny, ResourceTable};
use wasmtime::{CallHook, Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::Bittybot;
use crate::bindings::app::{
    AppError, GenerationStats, LoadOptions, LoadReport, Message, ModelSpec, RenderedPrompt, SessionKind,
    SessionOptions, SetupError, SetupState,
};
use crate::folders::Folders;
use crate::guest::{ComponentCache, ComponentReport, GuestError, GuestPolicy, GuestSource, check_compatible};
use crate::imports::TypesCtx;
use crate::imports::download::DownloadCtx;
use crate::imports::files::FilesCtx;
use crate::imports::inference::InferenceCtx;
use crate::imports::platform::PlatformCtx;
use crate::llama::{CancelFlag, LlamaError, Worker};

/// How often the epoch advances; the granularity of the call budget.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The app's data directory (`models/`, `state/`, `cache/` under it).
    pub data_dir: PathBuf,
    /// The guest to run.
    pub guest: GuestSource,
    /// A model file the guest may load as `provided`.
    pub model: Option<PathBuf>,
    /// Where compiled guests are cached (default `data_dir/cache`).
    pub cache_dir: Option<PathBuf>,
    /// Most linear memory the guest may grow to, in bytes.
    pub memory_limit: usize,
    /// Most guest CPU time per call into the guest (host work excluded).
    pub call_budget: Duration,
    /// Read the CPU topology from here instead of sysfs (tests).
    pub sysfs_cpu: Option<PathBuf>,
    /// What a guest must satisfy before it is compiled (pinned hash, signature).
    pub policy: GuestPolicy,
}

impl RuntimeOptions {
    /// Defaults: the built-in guest, 64 MiB, 5 s of guest time per call.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        RuntimeOptions {
            data_dir: data_dir.into(),
            guest: GuestSource::builtin(),
            model: None,
            cache_dir: None,
            memory_limit: 64 << 20,
            call_budget: Duration::from_secs(5),
            sysfs_cpu: None,
            policy: GuestPolicy::default(),
        }
    }
}

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The guest could not be loaded.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The guest answered with an error.
    #[error("{}", describe(.0))]
    App(AppError),
    /// The guest trapped (a bug, the memory cap, or the time budget); the
    /// instance is unusable and must be restarted.
    #[error("the guest failed: {0}")]
    Trap(String),
    /// The inference engine could not start.
    #[error(transparent)]
    Engine(#[from] LlamaError),
    /// A folder could not be prepared.
    #[error("{0}")]
    Setup(String),
    /// Getting the model failed.
    #[error("{}", describe_setup(.0))]
    ModelSetup(SetupError),
}

impl RuntimeError {
    /// The guest's error, if that is what this is.
    pub fn app(&self) -> Option<&AppError> {
        match self {
            RuntimeError::App(e) => Some(e),
            _ => None,
        }
    }
}

/// A human sentence for an app error.
pub fn describe(e: &AppError) -> String {
    match e {
        AppError::NotReady => "no model is loaded".into(),
        AppError::LoadFailed(m) => format!("model load failed: {m}"),
        AppError::NoChatTemplate(m) => format!("no chat template: {m}"),
        AppError::InputTooLong(t) => format!(
            "the message is too long: it needs {} prompt tokens, the context takes at most {}",
            t.tokens, t.limit
        ),
        AppError::Busy => "busy: a reply is still being generated".into(),
        AppError::InvalidArgument(m) => format!("invalid argument: {m}"),
        AppError::Inference(m) => format!("inference failed: {m}"),
        AppError::Io(m) => format!("i/o error: {m}"),
    }
}

/// A human sentence for a setup error.
pub fn describe_setup(e: &SetupError) -> String {
    match e {
        SetupError::NoNetwork(m) => format!("no network: {m}"),
        SetupError::NotFound(s) => format!("the model was not found on the server (HTTP {s})"),
        SetupError::HttpError(s) => format!("the server answered HTTP {s}"),
        SetupError::InsufficientStorage(s) => {
            format!("not enough free space: {} bytes needed, {} available", s.needed, s.available)
        }
        SetupError::VerificationFailed(m) => format!("verification failed: {m}"),
        SetupError::Cancelled => "cancelled (a partial download is kept and resumes next time)".into(),
        SetupError::Io(m) => format!("i/o error: {m}"),
        SetupError::InvalidSpec(m) => format!("invalid model spec: {m}"),
        SetupError::NotDownloaded => "the model is not on this device yet: run `bittybot download`".into(),
    }
}

/// Time accounting of the current call into the guest.
#[derive(Debug)]
struct CallClock {
    call_start: Instant,
    host_since: Option<Instant>,
    host_time: Duration,
    budget: Duration,
}

impl CallClock {
    fn guest_time(&self) -> Duration {
        self.call_start.elapsed().saturating_sub(self.host_time)
    }
}

/// The store's data: small contexts, one per imported interface.
pub(crate) struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    inference: InferenceCtx,
    platform: PlatformCtx,
    files: FilesCtx,
    download: DownloadCtx,
    types: TypesCtx,
    limits: StoreLimits,
    clock: CallClock,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

struct InferenceData;
impl HasData for InferenceData {
    type Data<'a> = &'a mut InferenceCtx;
}
struct PlatformData;
impl HasData for PlatformData {
    type Data<'a> = &'a mut PlatformCtx;
}
struct FilesData;
impl HasData for FilesData {
    type Data<'a> = &'a mut FilesCtx;
}
struct DownloadData;
impl HasData for DownloadData {
    type Data<'a> = &'a mut DownloadCtx;
}
struct TypesData;
impl HasData for TypesData {
    type Data<'a> = &'a mut TypesCtx;
}

/// The process-wide engine, with epoch interruption driven by a ticker thread.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = match Engine::new(&config) {
            Ok(e) => e,
            // The configuration is fixed; failing here is a host build bug.
            Err(e) => panic!("wasmtime engine configuration rejected: {e:#}"),
        };
        let ticker = engine.weak();
        let _ = std::thread::Builder::new().name("bittybot-epoch".into()).spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
        engine
    })
}

/// Set by the app (any thread) to cancel what the guest is doing.
#[derive(Debug, Clone)]
pub struct CancelHandle(CancelFlag);

impl CancelHandle {
    /// Ask the guest to stop; it notices within one token.
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
    cancel: CancelFlag,
    report: StartReport,
    guest: GuestSource,
    options: RuntimeOptions,
    memory_limit: usize,
    /// The last successful model load, repeated after a guest swap.
    last_load: Option<LoadOptions>,
    /// Set when the guest trapped: the instance must not be entered again.
    poisoned: Option<String>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("guest", &self.guest).finish_non_exhaustive()
    }
}

/// A sentence for a guest trap: what the limit was, or what the guest did.
fn describe_trap(e: &wasmtime::Error, memory_limit: usize) -> String {
    let chain = format!("{e:#}");
    if chain.contains("memory growth failure") || chain.contains("growing memory") {
        format!("the guest exceeded its memory limit of {} MiB ({chain})", memory_limit >> 20)
    } else if chain.contains("CPU time in one call") {
        format!("the guest was stopped: {chain}")
    } else if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::UnreachableCodeReached) {
        format!("the guest panicked or reached unreachable code ({chain})")
    } else {
        chain
    }
}

impl Runtime {
    /// Start a runtime: load (or compile) the guest, instantiate it, start
    /// the inference thread. No model is loaded yet.
    pub fn start(options: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        Self::start_with(options, Arc::new(AtomicBool::new(false)))
    }

    fn start_with(options: RuntimeOptions, cancel: CancelFlag) -> Result<Runtime, RuntimeError> {
        let start = Instant::now();
        let engine = engine();
        // Integrity first: a tampered guest is refused before it is compiled.
        options.policy.check(&options.guest)?;
        let folders = Folders::under(&options.data_dir, options.model.clone());
        folders
            .create()
            .map_err(|e| RuntimeError::Setup(format!("cannot create {}: {e}", options.data_dir.display())))?;
        let cache =
            ComponentCache::new(options.cache_dir.clone().unwrap_or_else(|| options.data_dir.join("cache")));
        let (component, component_report) = cache.load(engine, &options.guest)?;
        check_compatible(engine, &component, options.guest.label())?;

        let t_inst = Instant::now();
        let worker = Worker::start()?;
        let mut linker = Linker::<StoreData>::new(engine);
        let link = |e: wasmtime::Error| GuestError::Instantiate {
            label: options.guest.label().to_owned(),
            reason: format!("{e:#}"),
        };
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link)?;
        crate::bindings::inference::add_to_linker::<_, InferenceData>(&mut linker, |s| &mut s.inference)
            .map_err(link)?;
        crate::bindings::platform::add_to_linker::<_, PlatformData>(&mut linker, |s| &mut s.platform)
            .map_err(link)?;
        crate::bindings::files::add_to_linker::<_, FilesData>(&mut linker, |s| &mut s.files).map_err(link)?;
        crate::bindings::download::add_to_linker::<_, DownloadData>(&mut linker, |s| &mut s.download)
            .map_err(link)?;
        crate::bindings::types::add_to_linker::<_, TypesData>(&mut linker, |s| &mut s.types).map_err(link)?;

        let preopen = |b: &mut WasiCtxBuilder, dir: &std::path::Path, name: &str| {
            b.preopened_dir(dir, name, wasmtime_wasi::FsPerms::ReadWrite)
                .map(|_| ())
                .map_err(|e| RuntimeError::Setup(format!("cannot open {}: {e:#}", dir.display())))
        };
        let mut wasi = WasiCtxBuilder::new();
        preopen(&mut wasi, &folders.models, "/models")?;
        preopen(&mut wasi, &folders.state, "/state")?;
        let wasi = wasi
            .stdout(wasmtime_wasi::cli::stderr())
            .stderr(wasmtime_wasi::cli::stderr())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let data = StoreData {
            wasi,
            table: ResourceTable::new(),
            inference: InferenceCtx::new(worker, folders.clone(), cancel.clone()),
            platform: PlatformCtx::new(cancel.clone(), options.sysfs_cpu.clone(), folders.clone()),
            files: FilesCtx::new(folders.clone(), cancel.clone()),
            download: DownloadCtx::new(folders, cancel.clone()),
            types: TypesCtx,
            limits: StoreLimitsBuilder::new()
                .memory_size(options.memory_limit)
                .instances(4)
                .tables(16)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            clock: CallClock {
                call_start: Instant::now(),
                host_since: None,
                host_time: Duration::ZERO,
                budget: options.call_budget,
            },
        };
        let mut store = Store::new(engine, data);
        store.limiter(|s| &mut s.limits);
        store.call_hook(|mut ctx, hook| {
            let clock = &mut ctx.data_mut().clock;
            match hook {
                CallHook::CallingHost => clock.host_since = Some(Instant::now()),
                CallHook::ReturningFromHost => {
                    if let Some(t) = clock.host_since.take() {
                        clock.host_time += t.elapsed();
                    }
                }
                CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
            }
            Ok(())
        });
        store.epoch_deadline_callback(|ctx| {
            let clock = &ctx.data().clock;
            let used = clock.guest_time();
            if used > clock.budget {
                return Err(wasmtime::Error::msg(format!(
                    "the guest used {} ms of CPU time in one call (budget {} ms)",
                    used.as_millis(),
                    clock.budget.as_millis()
                )));
            }
            Ok(UpdateDeadline::Continue(1))
        });
        store.set_epoch_deadline(1);
        let bindings = Bittybot::instantiate(&mut store, &component, &linker).map_err(|e| {
            let reason = format!("{e:#}");
            if reason.contains("import") || reason.contains("export") {
                GuestError::Incompatible { label: options.guest.label().to_owned(), reason }
            } else {
                GuestError::Instantiate { label: options.guest.label().to_owned(), reason }
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
            memory_limit: options.memory_limit,
            guest: options.guest.clone(),
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
        self.swap_guest(self.guest.clone())
    }

    /// Change the budget of guest CPU time per call (also for guests swapped in later).
    pub fn set_call_budget(&mut self, budget: Duration) {
        self.options.call_budget = budget;
        self.store.data_mut().clock.budget = budget;
    }

    /// Why the guest is unusable, if it trapped.
    pub fn failure(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// How the start went.
    pub fn start_report(&self) -> &StartReport {
        &self.report
    }

    /// The guest this runtime runs.
    pub fn guest(&self) -> &GuestSource {
        &self.guest
    }

    /// A handle the app can use from any thread to cancel.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(self.cancel.clone())
    }

    /// One call into the guest: refuse when it failed before, reset the
    /// time budget, and turn a trap into a poisoned runtime with a clear error.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&Bittybot, &mut Store<StoreData>) -> wasmtime::Result<T>,
    ) -> Result<T, RuntimeError> {
        if let Some(why) = &self.poisoned {
            return Err(RuntimeError::Trap(format!("the guest failed earlier and must be restarted: {why}")));
        }
        let clock = &mut self.store.data_mut().clock;
        clock.call_start = Instant::now();
        clock.host_time = Duration::ZERO;
        clock.host_since = None;
        self.store.set_epoch_deadline(1);
        f(&self.bindings, &mut self.store).map_err(|e| {
            let why = describe_trap(&e, self.memory_limit);
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
        let report = self.call_app(|b, st| b.bittybot_core_app().call_load_model(st, options))?;
        self.last_load = Some(options.clone());
        Ok(report)
    }

    /// The model spec in effect (built in, or the override JSON).
    pub fn resolve_spec(&mut self, spec_json: Option<&str>) -> Result<ModelSpec, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().call_resolve_spec(st, spec_json))?
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

    /// Drive a setup to its end, reporting every state; returns the last one.
    pub fn run_setup(
        &mut self,
        spec_json: Option<&str>,
        allow_download: bool,
        force_verify: bool,
        mut on_state: impl FnMut(&SetupState),
    ) -> Result<SetupState, RuntimeError> {
        let setup = self.begin_setup(spec_json, allow_download, force_verify)?;
        let last = loop {
            let state = self.setup_step(&setup)?;
            on_state(&state);
            if matches!(state, SetupState::Ready(_) | SetupState::Failed(_)) {
                break state;
            }
        };
        self.call(|_, st| setup.0.resource_drop(st))?;
        Ok(last)
    }

    /// Hash jobs the guest has started in this runtime (the verified fast path starts none).
    pub fn hashes_started(&self) -> u64 {
        self.store.data().files.hashes_started
    }

    /// Make the guest see this much free space (tests of the storage preflight).
    pub fn set_free_space_override(&mut self, bytes: Option<u64>) {
        self.store.data_mut().platform.free_space_override = bytes;
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

    /// Send a message; pull the reply with [`Runtime::next`]. Clears any
    /// earlier cancellation request.
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

    /// The id of the token spelled exactly `text` in the loaded model (host-side lookup).
    pub fn token_id(&mut self, text: &str) -> Option<i32> {
        self.store.data_mut().inference.token_id_of(text)
    }

    /// Whether a token of the loaded model is a control token (host-side lookup).
    pub fn is_control_token(&mut self, token: i32) -> bool {
        self.store.data_mut().inference.is_control_token(token)
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

    /// The loaded model's file.
    pub fn model_path(&self) -> Option<PathBuf> {
        self.store.data().inference.facts().map(|f| f.path.clone())
    }

    /// Fraction of the loaded model's pages in memory.
    pub fn model_residency(&self) -> Option<f32> {
        crate::warmup::residency(&self.model_path()?).ok()
    }

    /// Push the loaded model's pages out of memory, as the phone's kernel does
    /// after idle (benchmarks). Returns the residency afterwards.
    pub fn evict_model(&self) -> Result<f32, RuntimeError> {
        let path = self.model_path().ok_or(RuntimeError::App(AppError::NotReady))?;
        crate::warmup::evict(&path).map_err(|e| RuntimeError::Setup(e.to_string()))
    }

    /// Tokens in a session's KV sequence.
    pub fn kv_tokens(&mut self, session: &Session) -> Result<u32, RuntimeError> {
        self.call(|b, st| b.bittybot_core_app().session().call_kv_tokens(st, session.0))
    }

    /// Release a session and its KV sequence.
    pub fn close_session(&mut self, session: Session) -> Result<(), RuntimeError> {
        self.call(|_, st| session.0.resource_drop(st))
    }

    /// Send a message and collect the whole reply: (chunks, stats).
    pub fn chat(
        &mut self,
        session: &Session,
        text: &str,
    ) -> Result<(Vec<String>, GenerationStats), RuntimeError> {
        let generation = self.send(session, text)?;
        let mut chunks = Vec::new();
        let result = loop {
            match self.next(&generation) {
                Ok(Some(chunk)) => chunks.push(chunk),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let stats = self.stats(&generation);
        self.close_generation(generation)?;
        result?;
        let stats = stats?.ok_or_else(|| RuntimeError::Trap("the guest reported no stats".into()))?;
        Ok((chunks, stats))
    }
}
