//! The engine: the model's context and the guest's objects (sampler chains,
//! KV snapshots), run on the thread that calls the guest. Each call runs
//! under `catch_unwind`; a panic in one becomes an error and drops the
//! context, which may be in any state after it.
//!
//! Earlier they lived on a dedicated inference thread that each import
//! sent a closure to and waited on: two thread round trips per generated
//! token (decode, then sample) and a boxed, downcast reply, for nothing a
//! lock does not give. Removing them did not change the decode rate
//! measurably (README, "decode guest ÷ raw"); the code is simpler for it.
//! llama.cpp allows a context to be used from any thread, one at a time,
//! which the mutex guarantees.

use std::sync::{Mutex, PoisonError};

use super::{HostObjects, LlamaError, ModelContext};
use crate::limits::Limits;

/// What a call on the engine sees.
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

/// The loaded model's context and the guest's objects, one call at a time.
pub struct Engine {
    state: Mutex<EngineState>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with no model (and llama.cpp's backend, once per process).
    pub fn start(limits: &Limits) -> Engine {
        super::backend();
        Engine { state: Mutex::new(EngineState { ctx: None, objects: HostObjects::new(limits.clone()) }) }
    }

    /// Run `f` on the engine's state and return its result; a panic in `f`
    /// is an error (and the context and objects are dropped).
    pub fn call<R>(&self, f: impl FnOnce(&mut EngineState) -> R) -> Result<R, LlamaError> {
        // A panic is caught below, so the lock is never left poisoned by a
        // half-done call that someone could observe: the state is reset.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut state)));
        result.map_err(|p| {
            state.ctx = None;
            state.objects.clear();
            LlamaError::Panicked(format!("a llama.cpp call panicked: {}", crate::panic_message(p.as_ref())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_call_is_an_error_and_the_engine_serves_the_next_call() {
        let engine = Engine::start(&Limits::default());
        let err = engine.call(|_| -> u32 { panic!("boom in a call") }).unwrap_err().to_string();
        assert!(err.contains("panicked") && err.contains("boom in a call"), "{err}");
        assert_eq!(engine.call(|st| (st.ctx.is_none(), st.objects.held())).unwrap(), (true, 0));
    }
}
