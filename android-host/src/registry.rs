//! Live instances, keyed by the `long` handle Java holds.
//!
//! The usual JNI pattern is a handle made with `Box::into_raw` and an
//! explicit destroy. A registry is used instead: a handle is an id that is never
//! reused, so a closed, doubly-closed or made-up handle (a stale field, a
//! number from another library) finds nothing and becomes a `closed`
//! exception, where a raw pointer would be a use-after-free. The cost is
//! one uncontended mutex and a map lookup per call.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bittybot_host::{ErrorKind, Service, ServiceOptions, SessionKind, SessionOptions};
use jni::sys::{jfloat, jint, jlong};

use crate::errors::Failure;
use crate::listeners::{JavaReplyListener, JavaStateListener};

static LIVE: Mutex<BTreeMap<jlong, Arc<Instance>>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicI64 = AtomicI64::new(1);

fn live() -> MutexGuard<'static, BTreeMap<jlong, Arc<Instance>>> {
    // A panic while holding the lock leaves a map that is still consistent.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn closed(handle: jlong) -> Failure {
    Failure::new(ErrorKind::Closed, format!("handle {handle} is closed or was never created"))
}

/// Register a new instance; returns its handle.
pub fn create(data_dir: PathBuf, guest: Option<PathBuf>) -> jlong {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut options = ServiceOptions::new(&data_dir);
    options.guest_file = guest;
    let instance = Instance {
        setup: Mutex::new(Setup { options, model: None, started: false }),
        service: OnceLock::new(),
    };
    live().insert(id, Arc::new(instance));
    id
}

/// The live instance of `handle`.
pub fn get(handle: jlong) -> Result<Arc<Instance>, Failure> {
    live().get(&handle).cloned().ok_or_else(|| closed(handle))
}

/// Unregister `handle` and stop its service (waits for the service thread,
/// unless called from one of its listeners).
pub fn close(handle: jlong) -> Result<(), Failure> {
    let instance = live().remove(&handle).ok_or_else(|| closed(handle))?;
    if let Some(service) = instance.service.get() {
        service.close();
    }
    Ok(())
}

/// Settings given before `start`: the service's options, and the model file.
struct Setup {
    options: ServiceOptions,
    model: Option<PathBuf>,
    started: bool,
}

/// One `BittyBot` object's native side.
pub struct Instance {
    setup: Mutex<Setup>,
    service: OnceLock<Service>,
}

impl Instance {
    fn setup(&self) -> MutexGuard<'_, Setup> {
        self.setup.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn service(&self) -> Result<&Service, Failure> {
        self.service.get().ok_or_else(|| Failure::new(ErrorKind::NotReady, "call start() first"))
    }

    /// A model spec (JSON) replacing the guest's built-in one for the download.
    pub fn set_model_spec(&self, json: String) -> Result<(), Failure> {
        let mut setup = self.setup();
        if setup.started {
            return Err(Failure::new(
                ErrorKind::InvalidArgument,
                "setModelSpec must be called before start()",
            ));
        }
        setup.options.spec_json = Some(json);
        Ok(())
    }

    /// Widen the network policy: downloads may also come from `prefix`.
    pub fn allow_downloads(&self, prefix: String, allow_private: bool) -> Result<(), Failure> {
        let mut setup = self.setup();
        if setup.started {
            return Err(Failure::new(
                ErrorKind::InvalidArgument,
                "allowDownloadsFrom must be called before start()",
            ));
        }
        let network = &mut setup.options.runtime.network;
        network.allow(&prefix);
        network.allow_http |= prefix.starts_with("http://");
        network.allow_private |= allow_private;
        Ok(())
    }

    /// A model file to load instead of the app's downloaded model (tests, side-loading).
    pub fn set_model_path(&self, path: PathBuf) -> Result<(), Failure> {
        let mut setup = self.setup();
        if setup.started {
            return Err(Failure::new(
                ErrorKind::InvalidArgument,
                "setModelPath must be called before start()",
            ));
        }
        setup.model = Some(path);
        Ok(())
    }

    /// Start the service thread; returns at once.
    pub fn start(&self, listener: JavaStateListener) -> Result<(), Failure> {
        let mut setup = self.setup();
        if setup.started {
            return Err(Failure::new(ErrorKind::InvalidArgument, "start() was already called"));
        }
        let service = Service::start(setup.options.clone(), setup.model.clone(), listener)?;
        setup.started = true;
        let _ = self.service.set(service);
        Ok(())
    }

    /// Generation settings of a session; a negative value leaves a setting unchanged.
    pub fn configure(&self, kind: SessionKind, max_tokens: jint, temperature: jfloat) -> Result<(), Failure> {
        let mut options = SessionOptions::unchanged();
        options.max_tokens = u32::try_from(max_tokens).ok();
        options.temperature = (temperature.is_finite() && temperature >= 0.0).then_some(temperature);
        match self.service.get() {
            Some(service) => Ok(service.configure(kind, options)?),
            None => {
                self.setup().options.sessions.push((kind, options));
                Ok(())
            }
        }
    }

    /// The translation session's language pair.
    pub fn set_translation_pair(&self, from: Option<String>, to: String) -> Result<(), Failure> {
        match self.service.get() {
            Some(service) => Ok(service.set_languages(from, to)?),
            None => {
                self.setup().options.languages = Some((from, to));
                Ok(())
            }
        }
    }

    /// Queue a turn.
    pub fn send(&self, kind: SessionKind, text: String, reply: JavaReplyListener) -> Result<(), Failure> {
        Ok(self.service()?.send(kind, text, reply)?)
    }

    /// Cancel the reply in progress and the turns queued before.
    pub fn cancel(&self) -> Result<(), Failure> {
        if let Some(service) = self.service.get() {
            service.cancel();
        }
        Ok(())
    }

    /// Forget a session's history.
    pub fn reset(&self, kind: SessionKind) -> Result<(), Failure> {
        match self.service.get() {
            Some(service) => Ok(service.reset(kind)?),
            None => Ok(()),
        }
    }
}
