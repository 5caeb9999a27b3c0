//! Loading the guest component: from the copy built into the host or from a
//! file chosen at run time, compiled once and cached on disk.
//!
//! The cache file is named by the SHA-256 of the `.wasm` and the engine's
//! compatibility hash, so a different guest or a different host build never
//! runs stale machine code. Each file carries a SHA-256 of its own payload:
//! `Component::deserialize` trusts its input, so a damaged file must be
//! caught before it gets there. A bad entry is deleted and rebuilt.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The guest built together with this host.
pub const BUILTIN_GUEST: &[u8] = include_bytes!(env!("BITTYBOT_GUEST_WASM"));
/// SHA-256 of [`BUILTIN_GUEST`], computed at build time.
pub const BUILTIN_GUEST_SHA256: &str = env!("BITTYBOT_GUEST_SHA256");
/// Where the build put the guest `.wasm` (tests use it as a file).
pub const BUILTIN_GUEST_PATH: &str = env!("BITTYBOT_GUEST_WASM");

const CACHE_MAGIC: &[u8; 8] = b"BBCWASM1";

/// Errors of loading a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The file could not be read.
    #[error("cannot read guest {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a valid component.
    #[error("guest {label} is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// Which guest.
        label: String,
        /// wasmtime's words.
        reason: String,
    },
    /// The component was built for another version of the WIT contract.
    #[error("guest {label} is incompatible: {reason}")]
    Incompatible {
        /// Which guest.
        label: String,
        /// What does not match.
        reason: String,
    },
    /// Instantiation failed.
    #[error("cannot start guest {label}: {reason}")]
    Instantiate {
        /// Which guest.
        label: String,
        /// wasmtime's words.
        reason: String,
    },
}

/// A guest component's bytes and identity.
#[derive(Clone)]
pub struct GuestSource {
    bytes: Arc<[u8]>,
    sha256: String,
    label: String,
}

impl std::fmt::Debug for GuestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSource").field("label", &self.label).field("sha256", &self.sha256).finish()
    }
}

impl GuestSource {
    /// The guest built into this host.
    pub fn builtin() -> Self {
        GuestSource {
            bytes: Arc::from(BUILTIN_GUEST),
            sha256: BUILTIN_GUEST_SHA256.to_owned(),
            label: "built-in".to_owned(),
        }
    }

    /// A guest `.wasm` file.
    pub fn from_file(path: &Path) -> Result<Self, GuestError> {
        let bytes = std::fs::read(path).map_err(|source| GuestError::Read { path: path.into(), source })?;
        Ok(Self::from_bytes(bytes, path.display().to_string()))
    }

    /// Guest bytes from anywhere.
    pub fn from_bytes(bytes: Vec<u8>, label: String) -> Self {
        let sha256 = hex(&Sha256::digest(&bytes));
        GuestSource { bytes: Arc::from(bytes), sha256, label }
    }

    /// SHA-256 of the `.wasm`, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where it came from, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// How the compiled component was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Read from the cache.
    Hit,
    /// Compiled and stored (no entry yet).
    Compiled,
    /// The entry was unusable (the text says why); compiled and replaced.
    Replaced(String),
    /// Compiled; the cache could not be written (the text says why).
    Uncached(String),
}

/// Figures of a component load.
#[derive(Debug, Clone)]
pub struct ComponentReport {
    /// Hit, compiled, replaced…
    pub outcome: CacheOutcome,
    /// Time to get a `Component` (deserialize or compile), ms.
    pub component_ms: f64,
    /// The cache file.
    pub cache_file: PathBuf,
}

/// The on-disk cache of compiled guests.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

fn engine_hash(engine: &Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

impl ComponentCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        ComponentCache { dir }
    }

    /// The cache file for a guest on an engine.
    pub fn file_for(&self, engine: &Engine, guest: &GuestSource) -> PathBuf {
        self.dir.join(format!("{}-{:016x}.cwasm", &guest.sha256()[..32], engine_hash(engine)))
    }

    /// Get the compiled component: from the cache when valid, else compile
    /// (and store). A bad entry is deleted and rebuilt, never fatal.
    pub fn load(
        &self,
        engine: &Engine,
        guest: &GuestSource,
    ) -> Result<(Component, ComponentReport), GuestError> {
        let start = Instant::now();
        let file = self.file_for(engine, guest);
        let mut replaced = None;
        match std::fs::read(&file) {
            Ok(bytes) => match deserialize_checked(engine, &bytes) {
                Ok(component) => {
                    return Ok((
                        component,
                        ComponentReport {
                            outcome: CacheOutcome::Hit,
                            component_ms: ms_since(start),
                            cache_file: file,
                        },
                    ));
                }
                Err(why) => {
                    let _ = std::fs::remove_file(&file);
                    replaced = Some(why);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => replaced = Some(format!("unreadable cache entry: {e}")),
        }
        let component = Component::new(engine, guest.bytes())
            .map_err(|e| GuestError::Invalid { label: guest.label().to_owned(), reason: format!("{e:#}") })?;
        let outcome = match self.store(&file, &component) {
            Ok(()) => match replaced {
                Some(why) => CacheOutcome::Replaced(why),
                None => CacheOutcome::Compiled,
            },
            Err(e) => CacheOutcome::Uncached(e.to_string()),
        };
        Ok((component, ComponentReport { outcome, component_ms: ms_since(start), cache_file: file }))
    }

    fn store(&self, file: &Path, component: &Component) -> std::io::Result<()> {
        let payload = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        // Unique per writer: several runtimes (threads or processes) may race here.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = file.with_extension(format!("tmp{}-{n}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(CACHE_MAGIC)?;
        f.write_all(&Sha256::digest(&payload))?;
        f.write_all(&payload)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, file)
    }
}

fn deserialize_checked(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    let header = CACHE_MAGIC.len() + 32;
    if bytes.len() < header || &bytes[..CACHE_MAGIC.len()] != CACHE_MAGIC {
        return Err("cache entry has no valid header".into());
    }
    let (sum, payload) = bytes[CACHE_MAGIC.len()..].split_at(32);
    if Sha256::digest(payload).as_slice() != sum {
        return Err("cache entry is damaged (checksum mismatch)".into());
    }
    // SAFETY: the payload is byte-for-byte what `Component::serialize` of this
    // engine configuration wrote (the checksum above proves it is undamaged,
    // the file name ties it to this engine's compatibility hash), in the
    // app's private cache folder.
    unsafe { Component::deserialize(engine, payload) }.map_err(|e| format!("cache entry rejected: {e}"))
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
