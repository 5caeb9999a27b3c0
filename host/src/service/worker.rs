//! The service thread: start-up, then commands in order — settings, turns
//! (streamed through [`Runtime::reply`] to the reply listener), close.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Instant;

use super::{ErrorKind, ReadyInfo, ReplyListener, ServiceError, ServiceOptions, ServiceState, StateListener};
use crate::bindings::app::{GenerationStats, LoadOptions, SessionKind, SessionOptions, SetupState};
use crate::errors::RuntimeError;
use crate::guest::GuestSource;
use crate::runtime::{CancelHandle, Runtime};
use crate::sessions::Sessions;
use crate::setup::SetupMode;

/// What the handle asks the thread to do.
pub(super) enum Command {
    Send { turn: u64, kind: SessionKind, text: String, reply: Reply },
    Configure { kind: SessionKind, options: SessionOptions },
    SetLanguages { source: Option<String>, target: String },
    Reset { kind: SessionKind },
    Close,
}

/// State shared by the handle and the thread.
#[derive(Default)]
pub(super) struct TurnControl {
    /// The runtime's cancel flag, once the runtime has started.
    pub(super) cancel: OnceLock<CancelHandle>,
    /// Id of the last turn handed to `send` (ids start at 1).
    pub(super) last_turn: AtomicU64,
    /// Turns with an id up to this one are cancelled.
    pub(super) cancel_upto: AtomicU64,
    /// `close` was called: queued turns end with `closed`.
    pub(super) closing: AtomicBool,
}

impl TurnControl {
    fn is_cancelled(&self, turn: u64) -> bool {
        turn <= self.cancel_upto.load(Ordering::SeqCst)
    }
}

/// A reply listener that gets exactly one final call: if the turn is
/// dropped without one, it gets `panic` (a panic on the service thread) or
/// `closed` (the turn raced with `close`).
pub(super) struct Reply {
    listener: Option<Box<dyn ReplyListener>>,
}

impl Reply {
    pub(super) fn new(listener: Box<dyn ReplyListener>) -> Self {
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
    pub(super) fn forget(mut self) {
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

/// The service thread's state.
pub(super) struct Worker {
    shared: Arc<TurnControl>,
    listener: Box<dyn StateListener>,
    runtime: Option<Runtime>,
    /// Why turns cannot run (start-up failed, or the guest trapped).
    failed: Option<ServiceError>,
    sessions: Sessions,
    /// A settings error per session kind, reported with its next turn.
    pending: [Option<ServiceError>; 2],
}

fn kind_index(kind: SessionKind) -> usize {
    match kind {
        SessionKind::Chat => 0,
        SessionKind::Translation => 1,
    }
}

impl Worker {
    pub(super) fn new(shared: Arc<TurnControl>, listener: Box<dyn StateListener>) -> Self {
        Worker {
            shared,
            listener,
            runtime: None,
            failed: Some(ServiceError::new(ErrorKind::NotReady, "the model is not loaded yet")),
            sessions: Sessions::default(),
            pending: [None, None],
        }
    }

    fn notify(&self, state: &ServiceState) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.listener.on_state(state)));
    }

    pub(super) fn run(
        &mut self,
        options: ServiceOptions,
        model: Option<PathBuf>,
        rx: mpsc::Receiver<Command>,
    ) {
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
                self.sessions.forget();
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
            self.sessions.close(rt);
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
        for (kind, o) in options.sessions {
            self.sessions.configure(rt, kind, o)?;
        }
        if let Some((source, target)) = options.languages {
            self.sessions.set_languages(rt, source, target)?;
        }

        let (listener, shared, cancel) = (&self.listener, &self.shared, rt.cancel_handle());
        let mode = SetupMode { allow_download: true, force_verify: false };
        let source = rt.acquire_model(model.is_some(), options.spec_json.as_deref(), mode, |state| {
            // The setup clears earlier cancel requests when it starts; a close
            // during a long download must still stop it at the next step.
            if shared.closing.load(Ordering::SeqCst) {
                cancel.cancel();
            }
            let shown = match state {
                SetupState::Downloading(p) => ServiceState::Downloading {
                    done: p.done,
                    total: p.total,
                    bytes_per_s: p.bytes_per_s,
                    eta_s: p.eta_s,
                },
                SetupState::Verifying(p) => ServiceState::Verifying { done: p.done, total: p.total },
                _ => return,
            };
            let _ = catch_unwind(AssertUnwindSafe(|| listener.on_state(&shown)));
        })?;
        let _ = catch_unwind(AssertUnwindSafe(|| listener.on_state(&ServiceState::Loading)));
        let t = Instant::now();
        let report = rt.load_model(&LoadOptions { source, ..options.load })?;
        Ok(ReadyInfo { report, runtime_ms, load_ms: t.elapsed().as_secs_f64() * 1000.0 })
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

    fn handle(&mut self, command: Command) {
        let Some(rt) = self.runtime.as_mut() else {
            if let Command::Send { reply, .. } = command {
                reply.fail(
                    &self
                        .failed
                        .clone()
                        .unwrap_or_else(|| ServiceError::new(ErrorKind::NotReady, "no runtime")),
                );
            }
            return;
        };
        let (kind, result) = match command {
            Command::Send { turn, kind, text, reply } => return self.turn(turn, kind, &text, reply),
            Command::Configure { kind, options } => (kind, self.sessions.configure(rt, kind, options)),
            Command::SetLanguages { source, target } => {
                (SessionKind::Translation, self.sessions.set_languages(rt, source, target))
            }
            Command::Reset { kind } => (kind, self.sessions.reset(rt, kind)),
            Command::Close => return,
        };
        if let Err(e) = result {
            let e = self.runtime_error(e);
            self.pending[kind_index(kind)] = Some(e);
        }
    }

    fn turn(&mut self, turn: u64, kind: SessionKind, text: &str, mut reply: Reply) {
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
        if let Some(e) = self.pending[kind_index(kind)].take() {
            return reply.fail(&e);
        }
        let Some(rt) = self.runtime.as_mut() else {
            return reply.fail(&ServiceError::new(ErrorKind::NotReady, "no runtime"));
        };
        let shared = self.shared.clone();
        let result = (|| {
            let session = self.sessions.session(rt, kind)?;
            let mut listener_error = None;
            let mut armed = false;
            let r = rt.reply(session, text, |chunk| {
                // `send` cleared the cancel flag: a cancel that covered this
                // turn meanwhile (cancel() records the turn before it sets the
                // flag) stops it at its first chunk.
                if !armed && shared.is_cancelled(turn) {
                    armed = true;
                    return false;
                }
                match reply.chunk(chunk) {
                    Ok(()) => true,
                    Err(message) => {
                        listener_error = Some(message);
                        false
                    }
                }
            });
            Ok((r, listener_error))
        })();
        match result {
            Ok((_, Some(message))) => reply
                .fail(&ServiceError::new(ErrorKind::Listener, format!("the reply was cancelled: {message}"))),
            Ok((Ok(r), None)) => reply.done(&r.stats),
            Ok((Err(e), None)) | Err(e) => {
                let e = self.runtime_error(e);
                reply.fail(&e);
            }
        }
    }
}

fn panic_error(payload: &(dyn std::any::Any + Send)) -> ServiceError {
    ServiceError::new(ErrorKind::Panic, format!("native code panicked: {}", crate::panic_message(payload)))
}
