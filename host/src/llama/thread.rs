//! The inference thread: it owns the model's context and the guest's
//! objects (sampler chains, KV snapshots) and runs the closures the imports
//! send it, one at a time. A panic in a closure becomes an error.

use std::any::Any;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::{HostObjects, LlamaError, ModelContext};
use crate::limits::Limits;

/// What a closure on the inference thread sees.
pub struct EngineState {
    /// The loaded model's context, if any.
    pub ctx: Option<ModelContext>,
    /// The guest's sampler chains and snapshots.
    pub objects: HostObjects,
}

impl EngineState {
    /// The loaded context or `NoModel`.
    pub fn loaded(&mut self) -> Result<&mut ModelContext, LlamaError> {
        self.ctx.as_mut().ok_or(LlamaError::NoModel)
    }
}

type Job = Box<dyn FnOnce(&mut EngineState) -> Box<dyn Any + Send> + Send>;

/// Handle to the inference thread.
pub struct InferenceThread {
    tx: Option<Sender<Job>>,
    rx: Receiver<Result<Box<dyn Any + Send>, String>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for InferenceThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceThread").finish_non_exhaustive()
    }
}

impl InferenceThread {
    /// Start the thread (and llama.cpp's backend, once per process).
    pub fn start(limits: &Limits) -> Result<InferenceThread, LlamaError> {
        super::backend();
        let (tx, job_rx) = channel::<Job>();
        let (reply_tx, rx) = channel();
        let objects = HostObjects::new(limits.clone());
        let thread = std::thread::Builder::new()
            .name("bittybot-inference".into())
            .spawn(move || run(job_rx, reply_tx, objects))
            .map_err(|e| LlamaError::Worker(format!("cannot start the inference thread: {e}")))?;
        Ok(InferenceThread { tx: Some(tx), rx, thread: Some(thread) })
    }

    /// Run `f` on the inference thread and return its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut EngineState) -> R + Send + 'static,
    ) -> Result<R, LlamaError> {
        let gone = || LlamaError::Worker("the inference thread has stopped".into());
        let job: Job = Box::new(move |st| Box::new(f(st)) as Box<dyn Any + Send>);
        self.tx.as_ref().ok_or_else(gone)?.send(job).map_err(|_| gone())?;
        let reply = self.rx.recv().map_err(|_| gone())?;
        let reply = reply.map_err(|p| LlamaError::Worker(format!("a llama.cpp call panicked: {p}")))?;
        reply.downcast::<R>().map(|r| *r).map_err(|_| LlamaError::Worker("unexpected reply type".into()))
    }
}

impl Drop for InferenceThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(jobs: Receiver<Job>, reply: Sender<Result<Box<dyn Any + Send>, String>>, objects: HostObjects) {
    let mut state = EngineState { ctx: None, objects };
    for job in jobs {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut state)))
            .map_err(|p| crate::panic_message(p.as_ref()));
        if result.is_err() {
            // The context may be in any state after a panic: drop it.
            state.ctx = None;
            state.objects.clear();
        }
        if reply.send(result).is_err() {
            return;
        }
    }
}
