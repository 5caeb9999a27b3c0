//! llama.cpp, owned by one inference thread.
//!
//! The context borrows the model and llama.cpp objects do not belong in the
//! wasmtime store, so a dedicated thread owns the model's context, the
//! sampler chains and KV snapshots. Imports send it closures and wait (a few
//! microseconds per call against milliseconds per token). The vocabulary is
//! immutable and thread-safe, so tokenization runs on the caller's thread
//! through an `Arc<LlamaModel>` without a round trip.
//!
//! Every input from the guest is checked here before it reaches llama.cpp:
//! token ids, sequence ids, positions, sampler parameters. A bad value is an
//! error, never an abort of the app.

mod loaded;
pub mod log;
mod sampler;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;

pub use loaded::{Loaded, ModelFacts};
pub use sampler::{SamplerSpec, Samplers};

/// The llama.cpp version this host is built with (the llama-cpp-sys-2 crate
/// pins one llama.cpp commit).
pub const LLAMA_CPP_VERSION: &str = env!("BITTYBOT_LLAMA_CPP_VERSION");

/// Errors of the inference engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlamaError {
    /// No model is loaded.
    #[error("no model is loaded")]
    NoModel,
    /// The model could not be loaded.
    #[error("cannot load model {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A sequence has no room.
    #[error("sequence is full: {used} tokens used + {requested} requested > {capacity}")]
    ContextFull {
        /// Tokens in the sequence.
        used: u32,
        /// Tokens asked for.
        requested: u32,
        /// Capacity.
        capacity: u32,
    },
    /// llama.cpp failed to evaluate a batch.
    #[error("decode failed: {0}")]
    Decode(String),
    /// The app cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
    /// The inference thread is gone or a call on it panicked.
    #[error("inference thread failure: {0}")]
    Worker(String),
}

/// The process-wide llama.cpp backend (llama.cpp allows one initialisation).
pub fn backend() -> Result<&'static LlamaBackend, LlamaError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            log::install();
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlamaError::Worker(format!("llama.cpp backend: {e}")))
}

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// The GGUF file.
    pub path: PathBuf,
    /// Context per sequence.
    pub n_ctx: u32,
    /// Logical batch.
    pub n_batch: u32,
    /// Sequences.
    pub n_seq: u32,
    /// Generation threads.
    pub threads: u32,
    /// Prompt threads.
    pub threads_batch: u32,
    /// mmap the file.
    pub use_mmap: bool,
}

/// The state a job sees on the inference thread.
pub struct WorkerState<'a, 'm> {
    /// The loaded model's context, if any.
    pub loaded: Option<&'a mut Loaded<'m>>,
    /// Sampler chains and snapshots, by id.
    pub samplers: &'a mut Samplers,
}

impl<'m> WorkerState<'_, 'm> {
    /// The loaded model or `NoModel`.
    pub fn loaded(&mut self) -> Result<&mut Loaded<'m>, LlamaError> {
        self.loaded.as_deref_mut().ok_or(LlamaError::NoModel)
    }
}

type Job = Box<dyn for<'a, 'm> FnOnce(&mut WorkerState<'a, 'm>) -> Box<dyn Any + Send> + Send>;
type Loaded0 = Result<(Arc<LlamaModel>, ModelFacts), LlamaError>;

enum Msg {
    Load(LoadRequest),
    Unload,
    Job(Job),
}

/// A panic inside a job, carried back to the caller.
struct Panicked(String);

/// Handle to the inference thread.
pub struct Worker {
    tx: Sender<Msg>,
    rx: Receiver<Box<dyn Any + Send>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Start the inference thread.
    pub fn start() -> Result<Worker, LlamaError> {
        backend()?;
        let (tx, job_rx) = channel::<Msg>();
        let (reply_tx, rx) = channel::<Box<dyn Any + Send>>();
        let thread = std::thread::Builder::new()
            .name("bittybot-inference".into())
            .spawn(move || run(job_rx, reply_tx))
            .map_err(|e| LlamaError::Worker(format!("cannot start the inference thread: {e}")))?;
        Ok(Worker { tx, rx, thread: Some(thread) })
    }

    fn round_trip(&self, msg: Msg) -> Result<Box<dyn Any + Send>, LlamaError> {
        self.tx.send(msg).map_err(|_| LlamaError::Worker("the inference thread has stopped".into()))?;
        let reply =
            self.rx.recv().map_err(|_| LlamaError::Worker("the inference thread has stopped".into()))?;
        match reply.downcast::<Panicked>() {
            Ok(p) => Err(LlamaError::Worker(format!("llama.cpp call panicked: {}", p.0))),
            Err(reply) => Ok(reply),
        }
    }

    /// Run `f` on the inference thread and return its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl for<'a, 'm> FnOnce(&mut WorkerState<'a, 'm>) -> R + Send + 'static,
    ) -> Result<R, LlamaError> {
        let job: Job = Box::new(move |st| Box::new(f(st)) as Box<dyn Any + Send>);
        let reply = self.round_trip(Msg::Job(job))?;
        reply.downcast::<R>().map(|r| *r).map_err(|_| LlamaError::Worker("unexpected reply type".into()))
    }

    /// Load a model (replacing the current one) and create its context.
    pub fn load(&self, req: LoadRequest) -> Result<(Arc<LlamaModel>, ModelFacts), LlamaError> {
        let reply = self.round_trip(Msg::Load(req))?;
        match reply.downcast::<Loaded0>() {
            Ok(r) => *r,
            Err(_) => Err(LlamaError::Worker("unexpected reply type".into())),
        }
    }

    /// Free the model and its context.
    pub fn unload(&self) -> Result<(), LlamaError> {
        self.round_trip(Msg::Unload).map(|_| ())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        let (dead_tx, _) = channel();
        drop(std::mem::replace(&mut self.tx, dead_tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn catch<R: Send + 'static>(f: impl FnOnce() -> R) -> Box<dyn Any + Send> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Box::new(r),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Box::new(Panicked(msg))
        }
    }
}

fn run(rx: Receiver<Msg>, reply: Sender<Box<dyn Any + Send>>) {
    let mut samplers = Samplers::default();
    let mut pending: Option<Msg> = None;
    loop {
        let Some(msg) = pending.take().or_else(|| rx.recv().ok()) else {
            return;
        };
        match msg {
            Msg::Load(req) => {
                let model = match catch(|| open_model(&req)).downcast::<Result<LlamaModel, LlamaError>>() {
                    Ok(r) => *r,
                    Err(p) => {
                        if reply.send(p).is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let model = match model {
                    Ok(m) => Arc::new(m),
                    Err(e) => {
                        let _ = reply.send(Box::new(Err::<(Arc<LlamaModel>, ModelFacts), _>(e)));
                        continue;
                    }
                };
                match Loaded::new(&model, &req) {
                    Ok((loaded, facts)) => {
                        let ok: Loaded0 = Ok((model.clone(), facts));
                        if reply.send(Box::new(ok)).is_err() {
                            return;
                        }
                        pending = serve(loaded, &mut samplers, &rx, &reply);
                        if pending.is_none() {
                            return;
                        }
                    }
                    Err(e) => {
                        let err: Loaded0 = Err(e);
                        let _ = reply.send(Box::new(err));
                    }
                }
            }
            Msg::Unload => {
                if reply.send(Box::new(())).is_err() {
                    return;
                }
            }
            Msg::Job(job) => {
                let mut st = WorkerState { loaded: None, samplers: &mut samplers };
                if reply.send(catch_job(job, &mut st)).is_err() {
                    return;
                }
            }
        }
    }
}

fn catch_job(job: Job, st: &mut WorkerState<'_, '_>) -> Box<dyn Any + Send> {
    let boxed = catch(move || job(st));
    match boxed.downcast::<Box<dyn Any + Send>>() {
        Ok(inner) => *inner,
        Err(panicked) => panicked,
    }
}

/// Serve jobs while a model is loaded; return the message that ends it
/// (a load or unload), or `None` when the channel closed.
fn serve(
    mut loaded: Loaded<'_>,
    samplers: &mut Samplers,
    rx: &Receiver<Msg>,
    reply: &Sender<Box<dyn Any + Send>>,
) -> Option<Msg> {
    loop {
        match rx.recv().ok()? {
            Msg::Job(job) => {
                let mut st = WorkerState { loaded: Some(&mut loaded), samplers };
                reply.send(catch_job(job, &mut st)).ok()?;
            }
            other => return Some(other),
        }
    }
}

/// Check the file, then let llama.cpp load it.
fn open_model(req: &LoadRequest) -> Result<LlamaModel, LlamaError> {
    let fail = |reason: String| LlamaError::Load { path: req.path.clone(), reason };
    check_gguf_header(&req.path).map_err(fail)?;
    let params = llama_cpp_2::model::params::LlamaModelParams::default().with_use_mmap(req.use_mmap);
    log::clear();
    LlamaModel::load_from_file(backend()?, &req.path, &params).map_err(|e| {
        fail(log::reason().unwrap_or_else(|| {
            format!("llama.cpp refused the file ({e}): corrupt, truncated or unsupported architecture")
        }))
    })
}

/// A cheap check before llama.cpp sees the file: it exists, is a regular
/// file and starts with the GGUF magic.
pub fn check_gguf_header(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => e.to_string(),
    })?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "file too short to be GGUF".to_owned(),
        _ => e.to_string(),
    })?;
    if &magic != b"GGUF" {
        return Err(format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")"));
    }
    Ok(())
}

/// Shared flag the app sets to cancel; the decode loop checks it between batches.
pub type CancelFlag = Arc<AtomicBool>;
