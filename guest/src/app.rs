//! The guest's state between calls — the loaded model, the leases on its KV
//! sequences, its pages, the prefix cache — and the calls that change it:
//! load a model, open and close sessions, prepare, store tuned threads.

use std::rc::Rc;

use crate::errors;
use crate::host::{Host, InferenceError, ModelInfo, ModelSource};
use crate::leases::Leases;
use crate::load;
use crate::pages::Pages;
use crate::prefix::PrefixCache;
use crate::profile::ModelProfile;
use crate::session::{Env, Session};
use crate::settings::{self, Settings, TunedThreads};
use crate::wit::app::{AppError, LoadOptions, LoadReport, MemoryOutlook, SessionKind};

/// The loaded model.
struct Loaded {
    profile: Rc<ModelProfile>,
    /// The key of its tuned thread counts in settings.json.
    tuned_key: String,
}

/// Everything the guest keeps between calls.
pub struct App<H: Host> {
    loaded: Option<Loaded>,
    loads: u64,
    leases: Leases,
    pages: Pages<H>,
    prefixes: PrefixCache<H::Snapshot>,
}

impl<H: Host> Default for App<H> {
    fn default() -> Self {
        App {
            loaded: None,
            loads: 0,
            leases: Leases::default(),
            pages: Pages::default(),
            prefixes: PrefixCache::default(),
        }
    }
}

fn load_failed(e: InferenceError) -> AppError {
    AppError::LoadFailed(errors::inference(&e))
}

/// The model's identity for cached states: its verified SHA-256 when the
/// settings have one for this file, else name, size and modification time.
fn model_id(settings: &Settings, info: &ModelInfo, source: &ModelSource) -> String {
    let ModelSource::Managed(name) = source else { return info.model_id.clone() };
    match settings.verified.get(name) {
        Some(rec) if rec.size == info.file_size => format!("sha256:{}", rec.sha256),
        _ => info.model_id.clone(),
    }
}

impl<H: Host> App<H> {
    /// Load a model with the settings the load plan picks; the sessions of
    /// the previous model end. The pages are warmed in the background.
    pub fn load_model(&mut self, host: &H, o: &LoadOptions) -> Result<LoadReport, AppError> {
        self.loaded = None;
        self.pages.set_model(None, MemoryOutlook::Resident);
        self.prefixes.clear();
        self.leases = Leases::new(load::SEQUENCES);
        let shape = host.inspect(&o.source).map_err(load_failed)?;
        let settings = Settings::load(host);
        let tuned_key = settings::model_key(&shape.file_name, shape.file_size);
        let tuned = settings.tuned_threads.get(&tuned_key).copied();
        let plan = load::plan(o, &shape, &host.cpu_topology(), &host.memory(), tuned)?;
        let info = host.load(&o.source, plan.settings.clone()).map_err(load_failed)?;
        self.loads += 1;
        // A model without a usable chat format is refused (and unloaded).
        let profile = ModelProfile::new(host, &info, &model_id(&settings, &info, &o.source), self.loads);
        let profile = match profile {
            Ok(p) => p,
            Err(e) => {
                host.unload();
                return Err(e.into());
            }
        };
        self.loaded = Some(Loaded { profile: Rc::new(profile), tuned_key });
        // The app is ready now; the pages come in behind it.
        // Without a mapping the weights live in the process's own memory:
        // the file's pages say nothing of them, so no pass warms them and no
        // reply judges them.
        let mapped = plan.settings.use_mmap.then(|| o.source.clone());
        self.pages.set_model(mapped, plan.outlook);
        self.pages.warm_in_background(host);
        Ok(LoadReport {
            info,
            threads_source: plan.threads_source.as_str().to_owned(),
            outlook: plan.outlook,
            notes: plan.notes,
        })
    }

    /// The loaded model's profile.
    pub fn profile(&self) -> Result<Rc<ModelProfile>, AppError> {
        self.loaded.as_ref().map(|l| l.profile.clone()).ok_or(AppError::NotReady)
    }

    /// Open a session on a free KV sequence.
    pub fn open_session(&mut self, host: &H, kind: SessionKind) -> Result<Session, AppError> {
        let profile = self.profile()?;
        let seq = self.leases.acquire().ok_or(AppError::Busy)?;
        host.kv_clear(seq);
        Ok(Session::new(kind, seq, profile))
    }

    /// A session ended: empty and free its sequence, unless its model is gone.
    pub fn close_session(&mut self, host: &H, seq: u32, load_id: u64) {
        if self.loaded.as_ref().is_some_and(|l| l.profile.load_id == load_id) {
            host.kv_clear(seq);
            self.leases.release(seq);
        }
    }

    /// The app's hint that a send is coming; true if a warmup started.
    pub fn prepare(&mut self, host: &H) -> bool {
        self.pages.prepare(host)
    }

    /// Remember thread counts for the loaded model.
    pub fn save_tuned_threads(&self, host: &H, decode: u32, batch: u32) -> Result<(), AppError> {
        if decode == 0 || batch == 0 {
            return Err(AppError::InvalidArgument("thread counts must be at least 1".into()));
        }
        let key = self.loaded.as_ref().map(|l| l.tuned_key.clone()).ok_or(AppError::NotReady)?;
        settings::update(host, |s| {
            s.tuned_threads.insert(key, TunedThreads { decode, batch });
        })
        .map_err(AppError::from)
    }

    /// What a turn needs.
    pub fn env<'a>(&'a mut self, host: &'a H) -> Env<'a, H> {
        let current_load = self.loaded.as_ref().map(|l| l.profile.load_id);
        Env { host, prefixes: &mut self.prefixes, pages: &mut self.pages, current_load }
    }
}
