//! BittyBot's guest component: every decision the app makes, compiled to a
//! sandboxed `wasm32-wasip2` component the native host runs.
//!
//! Build (the host's and the tests' build scripts do this for you):
//! `cargo rustc -p bittybot-guest --target wasm32-wasip2 --profile guest --crate-type cdylib`
//!
//! This file holds the exports: each converts the bindings' arguments and
//! calls a pure module. `imports.rs` puts the imports behind the traits of
//! `host.rs`. Everything else is plain Rust over those traits and the WIT's
//! generated records (`wit`), unit-tested natively with fakes of the host
//! (`testing.rs`): `cargo test -p bittybot-guest`.

pub mod app;
pub mod context;
pub mod device;
pub mod errors;
pub mod filter;
pub mod host;
mod imports;
pub mod leases;
pub mod load;
pub mod memfit;
pub mod options;
pub mod pages;
pub mod prefix;
pub mod profile;
pub mod prompts;
pub mod session;
pub mod settings;
pub mod setup;
pub mod spec;
pub mod template;
#[cfg(test)]
mod testing;
pub mod utf8;
pub mod variant;

wit_bindgen::generate!({
    path: "../wit",
    world: "bittybot",
    additional_derives: [PartialEq],
});

/// The WIT's generated types, by interface: the one definition of each
/// record on the guest side.
pub mod wit {
    pub use crate::bittybot::core::{download, files, inference, platform, storage, types};
    pub use crate::exports::bittybot::core::app;
}

use std::cell::RefCell;
use std::rc::Rc;

use exports::bittybot::core::app as api;
use imports::Imports;
use template::Role;

thread_local! {
    static APP: RefCell<app::App<Imports>> = RefCell::new(app::App::default());
}

fn with_app<T>(f: impl FnOnce(&mut app::App<Imports>) -> T) -> T {
    APP.with(|a| f(&mut a.borrow_mut()))
}

struct Component;

impl api::Guest for Component {
    type Session = SessionResource;
    type Generation = GenerationResource;
    type ModelSetup = ModelSetupResource;

    fn resolve_spec(spec_json: Option<String>) -> Result<api::ModelSpec, api::SetupError> {
        spec::ModelSpec::resolve(spec_json.as_deref())
            .map(|s| s.to_wit())
            .map_err(api::SetupError::InvalidSpec)
    }

    fn verify_digest(
        spec_json: Option<String>,
        size: u64,
        sha256: String,
    ) -> Result<api::ModelSpec, api::SetupError> {
        let s = spec::ModelSpec::resolve(spec_json.as_deref()).map_err(api::SetupError::InvalidSpec)?;
        setup::check_digest(&s, size, &sha256).map_err(api::SetupError::VerificationFailed)?;
        Ok(s.to_wit())
    }

    fn load_model(options: api::LoadOptions) -> Result<api::LoadReport, api::AppError> {
        with_app(|a| a.load_model(&Imports, &options))
    }

    fn save_tuned_threads(decode: u32, batch: u32) -> Result<(), api::AppError> {
        with_app(|a| a.save_tuned_threads(&Imports, decode, batch))
    }

    fn render_prompt(
        messages: Vec<api::Message>,
        add_generation_prompt: bool,
    ) -> Result<api::RenderedPrompt, api::AppError> {
        let profile = with_app(|a| a.profile())?;
        let msgs = messages
            .iter()
            .map(|m| {
                let role = Role::parse(&m.role).ok_or_else(|| {
                    api::AppError::InvalidArgument(format!(
                        "unknown role `{}` (system, user, assistant)",
                        m.role
                    ))
                })?;
                Ok((role, m.content.as_str()))
            })
            .collect::<Result<Vec<_>, api::AppError>>()?;
        let (text, tokens) = session::render_prompt(&Imports, &profile, &msgs, add_generation_prompt)?;
        Ok(api::RenderedPrompt { text, tokens })
    }
}

/// A session and the KV sequence it leases; the lease ends when the last
/// holder (the session handle or a generation) is dropped.
struct LeasedSession {
    session: RefCell<session::Session>,
}

impl Drop for LeasedSession {
    fn drop(&mut self) {
        let s = self.session.get_mut();
        let (seq, load_id) = (s.seq(), s.profile().load_id);
        with_app(|a| a.close_session(&Imports, seq, load_id));
    }
}

/// The exported `session` resource.
pub struct SessionResource {
    shared: Rc<LeasedSession>,
}

impl api::GuestSession for SessionResource {
    fn open(kind: api::SessionKind) -> Result<api::Session, api::AppError> {
        let session = with_app(|a| a.open_session(&Imports, kind))?;
        Ok(api::Session::new(SessionResource {
            shared: Rc::new(LeasedSession { session: RefCell::new(session) }),
        }))
    }

    fn configure(&self, patch: api::SessionOptions) -> Result<(), api::AppError> {
        let mut s = self.shared.session.borrow_mut();
        let options = s.options().merged(&patch, |t| host::Engine::token_id(&Imports, t))?;
        s.set_options(options)
    }

    fn set_languages(&self, source: Option<String>, target: String) -> Result<(), api::AppError> {
        self.shared.session.borrow_mut().set_languages(source.as_deref(), &target)
    }

    fn send(&self, text: String) -> Result<api::Generation, api::AppError> {
        let generation = with_app(|a| self.shared.session.borrow_mut().send(&mut a.env(&Imports), &text))?;
        Ok(api::Generation::new(GenerationResource {
            shared: self.shared.clone(),
            generation: RefCell::new(generation),
        }))
    }

    fn reset(&self) {
        self.shared.session.borrow_mut().reset(&Imports);
    }

    fn history(&self) -> Vec<api::Message> {
        let history = self.shared.session.borrow().history();
        history
            .into_iter()
            .map(|(role, content)| api::Message { role: role.as_str().to_owned(), content })
            .collect()
    }

    fn kv_tokens(&self) -> u32 {
        self.shared.session.borrow().kv_token_ids().len() as u32
    }

    fn kv_token_ids(&self) -> Vec<host::Token> {
        self.shared.session.borrow().kv_token_ids().to_vec()
    }

    fn prepare(&self) -> bool {
        with_app(|a| a.prepare(&Imports))
    }
}

/// The exported `generation` resource.
pub struct GenerationResource {
    shared: Rc<LeasedSession>,
    generation: RefCell<session::Generation<imports::HostSampler>>,
}

impl api::GuestGeneration for GenerationResource {
    fn next(&self) -> Result<Option<String>, api::AppError> {
        let mut session = self.shared.session.borrow_mut();
        with_app(|a| self.generation.borrow_mut().next(&mut session, &mut a.env(&Imports)))
    }

    fn stats(&self) -> Option<api::GenerationStats> {
        self.generation.borrow().stats().cloned()
    }
}

impl Drop for GenerationResource {
    fn drop(&mut self) {
        // A reply the app stopped pulling still ends up in the history.
        let mut session = self.shared.session.borrow_mut();
        self.generation.get_mut().finish(&mut session, api::StopReason::Cancelled);
    }
}

/// The exported `model-setup` resource.
pub struct ModelSetupResource {
    setup: RefCell<setup::Setup<Imports>>,
}

impl api::GuestModelSetup for ModelSetupResource {
    fn new(spec_json: Option<String>, allow_download: bool, force_verify: bool) -> Self {
        let spec = spec::ModelSpec::resolve(spec_json.as_deref());
        ModelSetupResource { setup: RefCell::new(setup::Setup::new(spec, allow_download, force_verify)) }
    }

    fn step(&self) -> api::SetupState {
        self.setup.borrow_mut().step(&Imports)
    }
}

export!(Component);
