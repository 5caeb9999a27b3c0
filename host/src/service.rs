//! A [`Runtime`] on its own thread, for apps: start-up that never blocks the
//! caller, turns queued over a channel and streamed to listeners, and a
//! cancel that works from any thread.
//!
//! [`Service::start`] returns at once. The service thread starts the
//! runtime (guest compile or cache hit, inference thread), gets the model
//! ([`acquire_model`]) and loads it, reporting each step to a
//! [`StateListener`]. [`Service::send`] queues a turn; its text streams to a
//! [`ReplyListener`] from the service thread, which then gets exactly one of
//! `on_done` or `on_error`. Commands run in the order they were given, so
//! `set_languages` followed by `send` applies the pair to that turn.
//!
//! Errors carry an [`ErrorKind`] whose [`ErrorKind::as_str`] is a stable
//! string (`not-ready`, `load-failed`, …) an app can branch on, and a
//! sentence for people. The Android JNI library is a thin layer over this.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::{JoinHandle, ThreadId};
use std::time::Instant;

use crate::bindings::app::{
    AppError, GenerationStats, LoadOptions, LoadReport, SessionKind, SessionOptions, SetupError, SetupState,
};
use crate::bindings::types::ModelSource;
use crate::guest::GuestSource;
use crate::runtime::{CancelHandle, Runtime, RuntimeError, RuntimeOptions, Session};

/// What went wrong, as a stable string an app can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No model is loaded (it is still loading, or loading failed).
    NotReady,
    /// The model file could not be loaded.
    LoadFailed,
    /// No model was given and none is on the device.
    NoModel,
    /// The model has no chat template and no built-in format applies.
    NoChatTemplate,
    /// The message does not fit in the context.
    InputTooLong,
    /// A reply is still being generated.
    Busy,
    /// An argument is invalid (null, unknown session kind, unknown language…).
    InvalidArgument,
    /// The inference engine failed.
    Inference,
    /// A file operation failed.
    Io,
    /// The guest could not be loaded, is incompatible, or trapped.
    Guest,
    /// The turn was cancelled before it started.
    Cancelled,
    /// The service (or the handle) is closed.
    Closed,
    /// No network (model download).
    NoNetwork,
    /// The server does not have the model file (404/410).
    NotFound,
    /// The server answered with another error status (model download).
    Http,
    /// Not enough free space (model download).
    InsufficientStorage,
    /// The model file's size or SHA-256 is wrong.
    VerificationFailed,
    /// A listener failed (e.g. a Java callback threw); the turn was cancelled.
    Listener,
    /// A bug: native code panicked.
    Panic,
}

impl ErrorKind {
    /// The stable name (kebab case), e.g. `load-failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotReady => "not-ready",
            ErrorKind::LoadFailed => "load-failed",
            ErrorKind::NoModel => "no-model",
            ErrorKind::NoChatTemplate => "no-chat-template",
            ErrorKind::InputTooLong => "input-too-long",
            ErrorKind::Busy => "busy",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::Inference => "inference",
            ErrorKind::Io => "io",
            ErrorKind::Guest => "guest",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Closed => "closed",
            ErrorKind::NoNetwork => "no-network",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Http => "http",
            ErrorKind::InsufficientStorage => "insufficient-storage",
            ErrorKind::VerificationFailed => "verification-failed",
            ErrorKind::Listener => "listener",
            ErrorKind::Panic => "panic",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the service: a kind to branch on and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ServiceError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Why, for people and logs.
    pub message: String,
}

impl ServiceError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError { kind, message: message.into() }
    }

    fn closed() -> Self {
        ServiceError::new(ErrorKind::Closed, "the service is closed")
    }
}

impl From<RuntimeError> for ServiceError {
    fn from(e: RuntimeError) -> Self {
        let kind = match &e {
            RuntimeError::Guest(_) | RuntimeError::Trap(_) => ErrorKind::Guest,
            RuntimeError::App(app) => match app {
                AppError::NotReady => ErrorKind::NotReady,
                AppError::LoadFailed(_) => ErrorKind::LoadFailed,
                AppError::NoChatTemplate(_) => ErrorKind::NoChatTemplate,
                AppError::InputTooLong(_) => ErrorKind::InputTooLong,
                AppError::Busy => ErrorKind::Busy,
                AppError::InvalidArgument(_) => ErrorKind::InvalidArgument,
                AppError::Inference(_) => ErrorKind::Inference,
                AppError::Io(_) => ErrorKind::Io,
            },
            RuntimeError::Engine(_) => ErrorKind::Inference,
            RuntimeError::Setup(_) => ErrorKind::Io,
            RuntimeError::ModelSetup(setup) => match setup {
                SetupError::NoNetwork(_) => ErrorKind::NoNetwork,
                SetupError::NotFound(_) => ErrorKind::NotFound,
                SetupError::HttpError(_) => ErrorKind::Http,
                SetupError::InsufficientStorage(_) => ErrorKind::InsufficientStorage,
                SetupError::VerificationFailed(_) => ErrorKind::VerificationFailed,
                SetupError::Cancelled => ErrorKind::Cancelled,
                SetupError::Io(_) => ErrorKind::Io,
                SetupError::InvalidSpec(_) => ErrorKind::InvalidArgument,
                SetupError::NotDownloaded => ErrorKind::NoModel,
            },
        };
        ServiceError::new(kind, e.to_string())
    }
}

/// The model is loaded: what and how long it took.
#[derive(Debug, Clone)]
pub struct ReadyInfo {
    /// The model and the settings the guest chose.
    pub report: LoadReport,
    /// Starting the runtime (guest cache or compile, instantiation), ms.
    pub runtime_ms: f64,
    /// Loading the model, ms.
    pub load_ms: f64,
}

impl ReadyInfo {
    /// One line for people: file, context, threads, timings.
    pub fn summary(&self) -> String {
        let info = &self.report.info;
        format!(
            "{} · ctx {} · threads {}/{} · runtime {:.0} ms · load {:.0} ms",
            info.file_name,
            info.settings.n_ctx,
            info.settings.threads,
            info.settings.threads_batch,
            self.runtime_ms,
            self.load_ms
        )
    }
}

/// The states of start-up, in order. `Ready` and `Error` are final.
#[derive(Debug, Clone)]
pub enum ServiceState {
    /// Starting the runtime and looking for the model.
    Checking,
    /// Downloading the model (when no model file was given).
    Downloading {
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
        /// Recent speed.
        bytes_per_s: f64,
        /// Seconds left, once a speed is known.
        eta_s: Option<f64>,
    },
    /// Hashing the model file (or comparing the hash of a finished download).
    Verifying {
        /// Bytes hashed.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Loading the model into llama.cpp.
    Loading,
    /// Ready for turns.
    Ready(Box<ReadyInfo>),
    /// Start-up failed; every turn gets a `not-ready` error.
    Error(ServiceError),
}

/// Receives the start-up states, on the service thread.
pub trait StateListener: Send + 'static {
    /// The service entered `state`.
    fn on_state(&self, state: &ServiceState);
}

impl<F: Fn(&ServiceState) + Send + 'static> StateListener for F {
    fn on_state(&self, state: &ServiceState) {
        self(state)
    }
}

/// Receives one reply, on the service thread: any number of `on_chunk`,
/// then exactly one of `on_done` or `on_error`.
pub trait ReplyListener: Send + 'static {
    /// The next piece of visible text. An `Err` (e.g. the app's callback
    /// failed) cancels the reply; the turn then ends with a `listener` error.
    fn on_chunk(&mut self, text: &str) -> Result<(), String>;
    /// The reply ended; `stats.stop` says why (`cancelled` after [`Service::cancel`]).
    fn on_done(&mut self, stats: &GenerationStats);
    /// The turn failed (or was cancelled or dropped before it started).
    fn on_error(&mut self, error: &ServiceError);
}

/// Settings of a service.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The runtime (data dir, guest, limits). Its `model` is set from
    /// [`Service::start`]'s `model`.
    pub runtime: RuntimeOptions,
    /// Load settings; `source` is replaced by what [`acquire_model`] finds.
    pub load: LoadOptions,
    /// A guest `.wasm` file to run instead of `runtime.guest`, read on the
    /// service thread (a missing or bad file is a `guest` error state).
    pub guest_file: Option<PathBuf>,
    /// A model spec (JSON) overriding the guest's built-in one, used when no
    /// model file is given.
    pub spec_json: Option<String>,
}

impl ServiceOptions {
    /// The runtime's defaults under `data_dir`, every load setting left to the guest.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServiceOptions {
            runtime: RuntimeOptions::new(data_dir),
            load: LoadOptions::provided(),
            guest_file: None,
            spec_json: None,
        }
    }
}

enum Command {
    Send { turn: u64, kind: SessionKind, text: String, reply: Reply },
    Configure { kind: SessionKind, options: SessionOptions },
    SetLanguages { source: Option<String>, target: String },
    Reset { kind: SessionKind },
    Close,
}

/// State shared by the handle and the thread.
struct Shared {
    /// The runtime's cancel flag, once the runtime has started.
    cancel: OnceLock<CancelHandle>,
    /// Id of the last turn handed to `send` (ids start at 1).
    last_turn: AtomicU64,
    /// Turns with an id up to this one are cancelled.
    cancel_upto: AtomicU64,
    /// `close` was called: queued turns end with `closed`.
    closing: AtomicBool,
}

impl Shared {
    fn is_cancelled(&self, turn: u64) -> bool {
        turn <= self.cancel_upto.load(Ordering::SeqCst)
    }
}

/// A runtime on its own thread; see the module docs. `Send + Sync`: every
/// method may be called from any thread. Dropping it closes it.
pub struct Service {
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: Option<ThreadId>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("thread", &self.thread_id).finish_non_exhaustive()
    }
}

impl Service {
    /// Start the service thread and return at once; start-up (runtime,
    /// model, load) runs there and reports to `listener`. `model` is the
    /// model file to load (the stand-in until the download state machine is
    /// wired in; see [`acquire_model`]).
    pub fn start(
        options: ServiceOptions,
        model: Option<PathBuf>,
        listener: impl StateListener,
    ) -> Result<Service, ServiceError> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            cancel: OnceLock::new(),
            last_turn: AtomicU64::new(0),
            cancel_upto: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bittybot-service".into())
            .spawn(move || {
                let mut worker = Worker::new(thread_shared, Box::new(listener));
                worker.run(options, model, rx);
            })
            .map_err(|e| ServiceError::new(ErrorKind::Io, format!("cannot start the service thread: {e}")))?;
        let thread_id = Some(thread.thread().id());
        Ok(Service { commands: Mutex::new(Some(tx)), shared, thread: Mutex::new(Some(thread)), thread_id })
    }

    /// Hand a command to the thread; gives it back if the service is closed.
    fn post(&self, command: Command) -> Result<(), Box<Command>> {
        let guard = match self.commands.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match guard.as_ref() {
            Some(tx) => tx.send(command).map_err(|mpsc::SendError(c)| Box::new(c)),
            None => Err(Box::new(command)),
        }
    }

    /// Queue a turn on the chat or translation session (opened on first use).
    /// The reply streams to `listener` from the service thread. A closed
    /// service returns `closed` and never calls the listener (a turn that
    /// races with `close` gets `on_error` of kind `closed` instead).
    pub fn send(
        &self,
        kind: SessionKind,
        text: impl Into<String>,
        listener: impl ReplyListener,
    ) -> Result<(), ServiceError> {
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(ServiceError::closed());
        }
        let turn = self.shared.last_turn.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = Reply::new(Box::new(listener));
        match self.post(Command::Send { turn, kind, text: text.into(), reply }) {
            Ok(()) => Ok(()),
            Err(command) => {
                if let Command::Send { reply, .. } = *command {
                    reply.forget();
                }
                Err(ServiceError::closed())
            }
        }
    }

    /// Cancel the reply being generated and every turn queued before this
    /// call. From any thread, no round trip: the reply being generated ends
    /// within a token with `stop = cancelled`; queued turns end with a
    /// `cancelled` error.
    pub fn cancel(&self) {
        let last = self.shared.last_turn.load(Ordering::SeqCst);
        self.shared.cancel_upto.fetch_max(last, Ordering::SeqCst);
        if let Some(handle) = self.shared.cancel.get() {
            handle.cancel();
        }
    }

    /// Change a session's generation settings (applied in order with turns;
    /// an error is reported by that session's next turn).
    pub fn configure(&self, kind: SessionKind, options: SessionOptions) -> Result<(), ServiceError> {
        self.post(Command::Configure { kind, options }).map_err(|_| ServiceError::closed())
    }

    /// Set the translation session's language pair (`source` `None` = detect).
    /// Applied in order with turns; an unknown language is reported by the
    /// next translation turn (`invalid-argument`).
    pub fn set_languages(
        &self,
        source: Option<String>,
        target: impl Into<String>,
    ) -> Result<(), ServiceError> {
        self.post(Command::SetLanguages { source, target: target.into() }).map_err(|_| ServiceError::closed())
    }

    /// Forget a session's history and KV state (in order with turns).
    pub fn reset(&self, kind: SessionKind) -> Result<(), ServiceError> {
        self.post(Command::Reset { kind }).map_err(|_| ServiceError::closed())
    }

    /// Whether [`Service::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst)
    }

    /// Stop the service: cancel the reply in progress, end queued turns with
    /// `closed`, stop the thread and wait for it (unless called from a
    /// listener, i.e. on the service thread itself). Idempotent. During
    /// start-up it waits for the step in progress (a model load cannot be
    /// interrupted).
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.cancel_upto.store(u64::MAX, Ordering::SeqCst);
        if let Some(handle) = self.shared.cancel.get() {
            handle.cancel();
        }
        let _ = self.post(Command::Close);
        if let Ok(mut guard) = self.commands.lock() {
            guard.take();
        }
        if Some(std::thread::current().id()) == self.thread_id {
            return; // the thread ends by itself after this listener returns
        }
        let thread = match self.thread.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.close();
    }
}

/// Gets the model onto the device and says which file to load.
///
/// The file the embedder gave (loaded as `provided`), else the guest's
/// model setup: the verified record, or hashing, or a resumable download,
/// reported as `Downloading`/`Verifying`.
pub fn acquire_model(
    rt: &mut Runtime,
    model: Option<&Path>,
    spec_json: Option<&str>,
    report: &mut dyn FnMut(ServiceState),
) -> Result<ModelSource, ServiceError> {
    if model.is_some() {
        return Ok(ModelSource::Provided);
    }
    let last = rt.run_setup(spec_json, true, false, |state| match state {
        SetupState::Downloading(p) => report(ServiceState::Downloading {
            done: p.done,
            total: p.total,
            bytes_per_s: p.bytes_per_s,
            eta_s: p.eta_s,
        }),
        SetupState::Verifying(p) => report(ServiceState::Verifying { done: p.done, total: p.total }),
        _ => {}
    })?;
    match last {
        SetupState::Ready(r) => Ok(ModelSource::Managed(r.file_name)),
        SetupState::Failed(e) => Err(RuntimeError::ModelSetup(e).into()),
        other => Err(ServiceError::new(ErrorKind::Io, format!("model setup ended in {other:?}"))),
    }
}

/// A reply listener that gets exactly one final call: if the turn is
/// dropped without one, it gets `panic` (a panic on the service thread) or
/// `closed` (the turn raced with `close`).
struct Reply {
    listener: Option<Box<dyn ReplyListener>>,
}

impl Reply {
    fn new(listener: Box<dyn ReplyListener>) -> Self {
        Reply { listener: Some(listener) }
    }

    fn chunk(&mut self, text: &str) -> Result<(), String> {
        let Some(l) = self.listener.as_mut() else { return Ok(()) };
        match catch_unwind(AssertUnwindSafe(|| l.on_chunk(text))) {
            Ok(r) => r,
            Err(_) => Err("the listener panicked in on_chunk".into()),
        }
    }

    fn done(mut self, stats: &GenerationStats) {
        if let Some(mut l) = self.listener.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| l.on_done(stats)));
        }
    }

    fn fail(mut self, error: &ServiceError) {
        if let Some(mut l) = self.listener.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| l.on_error(error)));
        }
    }

    /// Drop without a final call (the turn was never accepted).
    fn forget(mut self) {
        self.listener.take();
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(mut l) = self.listener.take() {
            // Unwinding: the service thread panicked in this turn. Otherwise
            // the turn was still in the channel when the service thread ended.
            let e = if std::thread::panicking() {
                ServiceError::new(ErrorKind::Panic, "the service failed while running this turn")
            } else {
                ServiceError::closed()
            };
            let _ = catch_unwind(AssertUnwindSafe(|| l.on_error(&e)));
        }
    }
}

/// One session kind's session and the settings to apply when it opens.
#[derive(Default)]
struct Slot {
    session: Option<Session>,
    options: Vec<SessionOptions>,
    languages: Option<(Option<String>, String)>,
    /// A settings error to report with the next turn.
    pending: Option<ServiceError>,
}

/// The service thread's state.
struct Worker {
    shared: Arc<Shared>,
    listener: Box<dyn StateListener>,
    runtime: Option<Runtime>,
    /// Why turns cannot run (start-up failed, or the guest trapped).
    failed: Option<ServiceError>,
    chat: Slot,
    translation: Slot,
}

impl Worker {
    fn new(shared: Arc<Shared>, listener: Box<dyn StateListener>) -> Self {
        Worker {
            shared,
            listener,
            runtime: None,
            failed: Some(ServiceError::new(ErrorKind::NotReady, "the model is not loaded yet")),
            chat: Slot::default(),
            translation: Slot::default(),
        }
    }

    fn notify(&self, state: &ServiceState) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.listener.on_state(state)));
    }

    fn run(&mut self, options: ServiceOptions, model: Option<PathBuf>, rx: mpsc::Receiver<Command>) {
        match catch_unwind(AssertUnwindSafe(|| self.start_up(options, model))) {
            Ok(Ok(info)) => {
                self.failed = None;
                self.notify(&ServiceState::Ready(Box::new(info)));
            }
            Ok(Err(e)) => self.fail(e),
            Err(payload) => self.fail(panic_error(payload.as_ref())),
        }
        for command in rx.iter() {
            if matches!(command, Command::Close) {
                break;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.handle(command))) {
                // The store may be inconsistent after a panic: drop the runtime.
                self.runtime = None;
                self.chat = Slot::default();
                self.translation = Slot::default();
                self.fail(panic_error(payload.as_ref()));
            }
        }
        // Turns still queued (after `close`) end with `closed`.
        for command in rx.try_iter() {
            if let Command::Send { reply, .. } = command {
                reply.fail(&ServiceError::closed());
            }
        }
        if let Some(rt) = self.runtime.as_mut() {
            for slot in [&mut self.chat, &mut self.translation] {
                if let Some(s) = slot.session.take() {
                    let _ = rt.close_session(s);
                }
            }
        }
    }

    /// Start-up failed or the runtime broke: report it; turns get `not-ready`.
    fn fail(&mut self, e: ServiceError) {
        self.notify(&ServiceState::Error(e.clone()));
        self.failed = Some(e);
    }

    fn start_up(
        &mut self,
        options: ServiceOptions,
        model: Option<PathBuf>,
    ) -> Result<ReadyInfo, ServiceError> {
        self.notify(&ServiceState::Checking);
        let t = Instant::now();
        let mut runtime_options = options.runtime;
        runtime_options.model = model.clone();
        if let Some(path) = &options.guest_file {
            runtime_options.guest = GuestSource::from_file(path).map_err(RuntimeError::from)?;
        }
        let rt = Runtime::start(runtime_options)?;
        let runtime_ms = t.elapsed().as_secs_f64() * 1000.0;
        let _ = self.shared.cancel.set(rt.cancel_handle());
        if self.shared.closing.load(Ordering::SeqCst) {
            rt.cancel_handle().cancel();
        }
        let rt = self.runtime.insert(rt);

        let listener = &self.listener;
        let shared = &self.shared;
        let cancel = rt.cancel_handle();
        let source = acquire_model(rt, model.as_deref(), options.spec_json.as_deref(), &mut |state| {
            // The setup clears earlier cancel requests when it starts; a close
            // during a long download must still stop it at the next step.
            if shared.closing.load(Ordering::SeqCst) {
                cancel.cancel();
            }
            let _ = catch_unwind(AssertUnwindSafe(|| listener.on_state(&state)));
        })?;
        self.notify(&ServiceState::Loading);
        let t = Instant::now();
        let rt = self.runtime.as_mut().ok_or_else(|| ServiceError::new(ErrorKind::Guest, "no runtime"))?;
        let report = rt.load_model(&LoadOptions { source, ..options.load })?;
        Ok(ReadyInfo { report, runtime_ms, load_ms: t.elapsed().as_secs_f64() * 1000.0 })
    }

    fn slot(&mut self, kind: SessionKind) -> &mut Slot {
        match kind {
            SessionKind::Chat => &mut self.chat,
            SessionKind::Translation => &mut self.translation,
        }
    }

    /// A runtime error: a trap leaves the store unusable, so it fails the service.
    fn runtime_error(&mut self, e: RuntimeError) -> ServiceError {
        let trapped = matches!(e, RuntimeError::Trap(_));
        let e = ServiceError::from(e);
        if trapped {
            self.fail(ServiceError::new(ErrorKind::Guest, format!("the guest stopped: {}", e.message)));
        }
        e
    }

    /// The runtime and the slot of `kind`, borrowed apart.
    fn parts(&mut self, kind: SessionKind) -> (Option<&mut Runtime>, &mut Slot) {
        let slot = match kind {
            SessionKind::Chat => &mut self.chat,
            SessionKind::Translation => &mut self.translation,
        };
        (self.runtime.as_mut(), slot)
    }

    fn handle(&mut self, command: Command) {
        let (kind, result) = match command {
            Command::Send { turn, kind, text, reply } => return self.turn(turn, kind, &text, reply),
            Command::Configure { kind, options } => {
                let (rt, slot) = self.parts(kind);
                let result = match (rt, slot.session.as_ref()) {
                    (Some(rt), Some(session)) => rt.configure(session, &options),
                    _ => {
                        slot.options.push(options);
                        Ok(())
                    }
                };
                (kind, result)
            }
            Command::SetLanguages { source, target } => {
                let kind = SessionKind::Translation;
                let (rt, slot) = self.parts(kind);
                let result = match (rt, slot.session.as_ref()) {
                    (Some(rt), Some(session)) => rt.set_languages(session, source.as_deref(), &target),
                    _ => {
                        slot.languages = Some((source, target));
                        Ok(())
                    }
                };
                (kind, result)
            }
            Command::Reset { kind } => {
                let (rt, slot) = self.parts(kind);
                let result = match (rt, slot.session.as_ref()) {
                    (Some(rt), Some(session)) => rt.reset(session),
                    _ => Ok(()),
                };
                (kind, result)
            }
            Command::Close => return,
        };
        if let Err(e) = result {
            let e = self.runtime_error(e);
            self.slot(kind).pending = Some(e);
        }
    }

    /// Open the session of `kind` if needed, applying the settings given so far.
    fn ensure_session(&mut self, kind: SessionKind) -> Result<(), ServiceError> {
        let (rt, slot) = self.parts(kind);
        if slot.session.is_some() {
            return Ok(());
        }
        let Some(rt) = rt else {
            return Err(ServiceError::new(ErrorKind::NotReady, "no runtime"));
        };
        let opened = rt.open_session(kind).and_then(|session| {
            let mut result = Ok(());
            for options in slot.options.drain(..) {
                if result.is_ok() {
                    result = rt.configure(&session, &options);
                }
            }
            if let (Ok(()), Some((source, target))) = (&result, slot.languages.take()) {
                result = rt.set_languages(&session, source.as_deref(), &target);
            }
            slot.session = Some(session);
            result
        });
        opened.map_err(|e| self.runtime_error(e))
    }

    fn turn(&mut self, turn: u64, kind: SessionKind, text: &str, reply: Reply) {
        if self.shared.closing.load(Ordering::SeqCst) {
            return reply.fail(&ServiceError::closed());
        }
        if self.shared.is_cancelled(turn) {
            return reply.fail(&ServiceError::new(ErrorKind::Cancelled, "cancelled before it started"));
        }
        if let Some(e) = &self.failed {
            let e = match e.kind {
                ErrorKind::NotReady => e.clone(),
                _ => ServiceError::new(ErrorKind::NotReady, format!("no model is loaded: {}", e.message)),
            };
            return reply.fail(&e);
        }
        if let Err(e) = self.ensure_session(kind) {
            return reply.fail(&e);
        }
        if let Some(e) = self.slot(kind).pending.take() {
            return reply.fail(&e);
        }
        let shared = self.shared.clone();
        let (rt, slot) = self.parts(kind);
        let (Some(rt), Some(session)) = (rt, slot.session.as_ref()) else {
            return reply.fail(&ServiceError::new(ErrorKind::NotReady, "no session"));
        };
        let outcome = stream(rt, session, text, turn, &shared, reply);
        if let Err((e, reply)) = outcome {
            let e = self.runtime_error(e);
            reply.fail(&e);
        }
    }
}

/// Run one turn: send, stream chunks, report stats. Runtime errors are
/// handed back with the reply so the caller can classify them.
fn stream(
    rt: &mut Runtime,
    session: &Session,
    text: &str,
    turn: u64,
    shared: &Shared,
    mut reply: Reply,
) -> Result<(), (RuntimeError, Reply)> {
    let generation = match rt.send(session, text) {
        Ok(g) => g,
        Err(e) => return Err((e, reply)),
    };
    // `send` cleared the cancel flag: re-arm it if a cancel covered this
    // turn meanwhile (cancel() records the turn before setting the flag).
    if shared.is_cancelled(turn) {
        rt.cancel_handle().cancel();
    }
    let mut listener_error = None;
    let result = loop {
        match rt.next(&generation) {
            Ok(Some(chunk)) => {
                if let Err(message) = reply.chunk(&chunk) {
                    listener_error = Some(message);
                    rt.cancel_handle().cancel();
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let stats = rt.stats(&generation);
    let closed = rt.close_generation(generation);
    if let Some(message) = listener_error {
        reply.fail(&ServiceError::new(ErrorKind::Listener, format!("the reply was cancelled: {message}")));
        return Ok(());
    }
    if let Err(e) = result.and(closed) {
        return Err((e, reply));
    }
    match stats {
        Ok(Some(stats)) => reply.done(&stats),
        Ok(None) => reply.fail(&ServiceError::new(ErrorKind::Guest, "the guest reported no stats")),
        Err(e) => return Err((e, reply)),
    }
    Ok(())
}

fn panic_error(payload: &(dyn std::any::Any + Send)) -> ServiceError {
    ServiceError::new(ErrorKind::Panic, format!("native code panicked: {}", panic_message(payload)))
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
