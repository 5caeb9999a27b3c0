//! Getting the model onto the device, driven from the host: the guest's
//! model-setup state machine stepped to its end, every state reported.
//! The CLI (`download`, `verify`, the default model of `chat`) and the
//! [`Service`](crate::Service) both drive it through here.

use crate::bindings::app::{ModelReady, SetupState};
use crate::bindings::types::ModelSource;
use crate::errors::RuntimeError;
use crate::runtime::Runtime;

/// What a setup may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupMode {
    /// Download the model when it is not on the device.
    pub allow_download: bool,
    /// Hash the file even when its verified record matches.
    pub force_verify: bool,
}

impl Runtime {
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
        self.close_setup(setup)?;
        Ok(last)
    }

    /// Get the spec's model ready (verified, downloaded when allowed).
    pub fn ensure_model(
        &mut self,
        spec_json: Option<&str>,
        mode: SetupMode,
        on_state: impl FnMut(&SetupState),
    ) -> Result<ModelReady, RuntimeError> {
        match self.run_setup(spec_json, mode.allow_download, mode.force_verify, on_state)? {
            SetupState::Ready(r) => Ok(r),
            SetupState::Failed(e) => Err(RuntimeError::ModelSetup(e)),
            other => Err(RuntimeError::Trap(format!("model setup ended in {other:?}"))),
        }
    }

    /// Which model to load: the file the host was started with, else the
    /// spec's model, made ready first.
    pub fn acquire_model(
        &mut self,
        provided: bool,
        spec_json: Option<&str>,
        mode: SetupMode,
        on_state: impl FnMut(&SetupState),
    ) -> Result<ModelSource, RuntimeError> {
        if provided {
            return Ok(ModelSource::Provided);
        }
        self.ensure_model(spec_json, mode, on_state).map(|r| ModelSource::Managed(r.file_name))
    }
}
