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
use crate::guest::{ComponentCache, ComponentReport, GuestError, GuestSource};
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
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("guest", &self.guest).finish_non_exhaustive()
    }
}

fn trap(e: wasmtime::Error) -> RuntimeError {
    RuntimeError::Trap(format!("{e:#}"))
}

impl Runtime {
    /// Start a runtime: load (or compile) the guest, instantiate it, start
    /// the inference thread. No model is loaded yet.
    pub fn start(options: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        let start = Instant::now();
        let engine = engine();
        let folders = Folders::under(&options.data_dir, options.model.clone());
        folders
            .create()
            .map_err(|e| RuntimeError::Setup(format!("cannot create {}: {e}", options.data_dir.display())))?;
        let cache =
            ComponentCache::new(options.cache_dir.clone().unwrap_or_else(|| options.data_dir.join("cache")));
        let (component, component_report) = cache.load(engine, &options.guest)?;

        let t_inst = Instant::now();
        let cancel: CancelFlag = Arc::new(AtomicBool::new(false));
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
            guest: options.guest,
        })
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

    /// Start a new call into the guest: reset its time budget.
    fn begin_call(&mut self) {
        let clock = &mut self.store.data_mut().clock;
        clock.call_start = Instant::now();
        clock.host_time = Duration::ZERO;
        clock.host_since = None;
        self.store.set_epoch_deadline(1);
    }

    fn app<T>(r: wasmtime::Result<Result<T, AppError>>) -> Result<T, RuntimeError> {
        r.map_err(trap)?.map_err(RuntimeError::App)
    }

    /// Load a model; the guest fills in settings the options leave open.
    pub fn load_model(&mut self, options: &LoadOptions) -> Result<LoadReport, RuntimeError> {
        self.begin_call();
        let r = self.bindings.bittybot_core_app().call_load_model(&mut self.store, options);
        Self::app(r)
    }

    /// The model spec in effect (built in, or the override JSON).
    pub fn resolve_spec(&mut self, spec_json: Option<&str>) -> Result<ModelSpec, RuntimeError> {
        self.begin_call();
        let r = self.bindings.bittybot_core_app().call_resolve_spec(&mut self.store, spec_json);
        r.map_err(trap)?.map_err(RuntimeError::ModelSetup)
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
        self.begin_call();
        let r = self.bindings.bittybot_core_app().model_setup().call_constructor(
            &mut self.store,
            spec_json,
            allow_download,
            force_verify,
        );
        r.map(ModelSetup).map_err(trap)
    }

    /// One step of a model setup (returns within about a quarter of a second).
    pub fn setup_step(&mut self, setup: &ModelSetup) -> Result<SetupState, RuntimeError> {
        self.begin_call();
        self.bindings.bittybot_core_app().model_setup().call_step(&mut self.store, setup.0).map_err(trap)
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
        self.begin_call();
        setup.0.resource_drop(&mut self.store).map_err(trap)?;
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
        self.begin_call();
        let r = self.bindings.bittybot_core_app().call_render_prompt(
            &mut self.store,
            messages,
            add_generation_prompt,
        );
        Self::app(r)
    }

    /// Open a session.
    pub fn open_session(&mut self, kind: SessionKind) -> Result<Session, RuntimeError> {
        self.begin_call();
        let r = self.bindings.bittybot_core_app().session().call_open(&mut self.store, kind);
        Self::app(r).map(Session)
    }

    /// Change a session's generation settings.
    pub fn configure(&mut self, session: &Session, options: &SessionOptions) -> Result<(), RuntimeError> {
        self.begin_call();
        let r =
            self.bindings.bittybot_core_app().session().call_configure(&mut self.store, session.0, options);
        Self::app(r)
    }

    /// Set a translation session's language pair.
    pub fn set_languages(
        &mut self,
        session: &Session,
        source: Option<&str>,
        target: &str,
    ) -> Result<(), RuntimeError> {
        self.begin_call();
        let r = self.bindings.bittybot_core_app().session().call_set_languages(
            &mut self.store,
            session.0,
            source,
            target,
        );
        Self::app(r)
    }

    /// Send a message; pull the reply with [`Runtime::next`]. Clears any
    /// earlier cancellation request.
    pub fn send(&mut self, session: &Session, text: &str) -> Result<Generation, RuntimeError> {
        self.cancel.store(false, Ordering::Relaxed);
        self.begin_call();
        let r = self.bindings.bittybot_core_app().session().call_send(&mut self.store, session.0, text);
        Self::app(r).map(Generation)
    }

    /// The next visible text of a reply; `None` at the end.
    pub fn next(&mut self, generation: &Generation) -> Result<Option<String>, RuntimeError> {
        self.begin_call();
        let r = self.bindings.bittybot_core_app().generation().call_next(&mut self.store, generation.0);
        Self::app(r)
    }

    /// Figures of a finished reply.
    pub fn stats(&mut self, generation: &Generation) -> Result<Option<GenerationStats>, RuntimeError> {
        self.begin_call();
        self.bindings.bittybot_core_app().generation().call_stats(&mut self.store, generation.0).map_err(trap)
    }

    /// Release a generation (an unfinished reply is ended and kept in the history).
    pub fn close_generation(&mut self, generation: Generation) -> Result<(), RuntimeError> {
        self.begin_call();
        generation.0.resource_drop(&mut self.store).map_err(trap)
    }

    /// Forget a session's history and KV.
    pub fn reset(&mut self, session: &Session) -> Result<(), RuntimeError> {
        self.begin_call();
        self.bindings.bittybot_core_app().session().call_reset(&mut self.store, session.0).map_err(trap)
    }

    /// The conversation as the app shows it.
    pub fn history(&mut self, session: &Session) -> Result<Vec<Message>, RuntimeError> {
        self.begin_call();
        self.bindings.bittybot_core_app().session().call_history(&mut self.store, session.0).map_err(trap)
    }

    /// The tokens in a session's KV sequence.
    pub fn kv_token_ids(&mut self, session: &Session) -> Result<Vec<i32>, RuntimeError> {
        self.begin_call();
        self.bindings
            .bittybot_core_app()
            .session()
            .call_kv_token_ids(&mut self.store, session.0)
            .map_err(trap)
    }

    /// The id of the token spelled exactly `text` in the loaded model (host-side lookup).
    pub fn token_id(&mut self, text: &str) -> Option<i32> {
        self.store.data_mut().inference.token_id_of(text)
    }

    /// Whether a token of the loaded model is a control token (host-side lookup).
    pub fn is_control_token(&mut self, token: i32) -> bool {
        self.store.data_mut().inference.is_control_token(token)
    }

    /// Tokens in a session's KV sequence.
    pub fn kv_tokens(&mut self, session: &Session) -> Result<u32, RuntimeError> {
        self.begin_call();
        self.bindings.bittybot_core_app().session().call_kv_tokens(&mut self.store, session.0).map_err(trap)
    }

    /// Release a session and its KV sequence.
    pub fn close_session(&mut self, session: Session) -> Result<(), RuntimeError> {
        self.begin_call();
        session.0.resource_drop(&mut self.store).map_err(trap)
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
