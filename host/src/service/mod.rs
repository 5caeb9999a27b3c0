//! A [`Runtime`] on its own thread, for apps: start-up that never blocks the
//! caller, turns queued over a channel and streamed to listeners, and a
//! cancel that works from any thread.
//!
//! [`Service::start`] returns at once. The service thread starts the
//! runtime (guest compile or cache hit, instantiate), gets the model
//! ([`Runtime::acquire_model`]) and loads it, reporting each step to a
//! [`StateListener`]. [`Service::send`] queues a turn; its text streams to a
//! [`ReplyListener`] from the service thread, which then gets exactly one of
//! `on_done` or `on_error`. Commands run in the order they were given, so
//! `set_languages` followed by `send` applies the pair to that turn.
//!
//! Errors carry an [`ErrorKind`] whose [`ErrorKind::as_str`] is a stable
//! string (`not-ready`, `load-failed`, …) an app can branch on, and a
//! sentence for people. The Android JNI library is a thin layer over this.

mod errors;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{JoinHandle, ThreadId};

pub use errors::{ErrorKind, ServiceError};

use crate::bindings::app::{GenerationStats, LoadOptions, LoadReport, SessionKind, SessionOptions};
use crate::runtime::RuntimeOptions;
use worker::{Command, Reply, TurnControl, Worker};

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
    /// Load settings; `source` is replaced by what [`Runtime::acquire_model`](crate::Runtime::acquire_model) finds.
    pub load: LoadOptions,
    /// A guest `.wasm` file to run instead of `runtime.guest`, read on the
    /// service thread (a missing or bad file is a `guest` error state).
    pub guest_file: Option<PathBuf>,
    /// A model spec (JSON) overriding the guest's built-in one, used when no
    /// model file is given.
    pub spec_json: Option<String>,
    /// Session settings to apply, in order, when each session opens.
    pub sessions: Vec<(SessionKind, SessionOptions)>,
    /// The translation session's language pair, when known before start.
    pub languages: Option<(Option<String>, String)>,
}

impl ServiceOptions {
    /// The runtime's defaults under `data_dir`, every load setting left to the guest.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServiceOptions {
            runtime: RuntimeOptions::new(data_dir),
            load: LoadOptions::provided(),
            guest_file: None,
            spec_json: None,
            sessions: Vec::new(),
            languages: None,
        }
    }
}

/// A runtime on its own thread; see the module docs. `Send + Sync`: every
/// method may be called from any thread. Dropping it closes it.
pub struct Service {
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    shared: Arc<TurnControl>,
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
        let shared = Arc::new(TurnControl::default());
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
